"""`make demo` runs vldata.tools.demo: every builder's sample is built, validated, mixed and loaded."""

from __future__ import annotations

import subprocess
import sys

import vldata


def test_demo_builds_validates_mixes_and_loads(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vldata.tools.demo", str(tmp_path / "demo")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    names = vldata.list_builders()
    assert out.count("validate: OK") == len(names) and "[exact]" in out and "MISMATCH" not in out
    assert f"== mix of {', '.join(names)}" in out and out.count("image (8, 3, 64, 64) torch.uint8") == 3
