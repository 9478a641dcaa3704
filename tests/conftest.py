"""Shared fixtures: SCIN sample inputs, a CLI runner, shard hashing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``vldata ARGS`` in a fresh interpreter (as a user would)."""
    proc = subprocess.run([sys.executable, "-m", "vldata.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"vldata {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def shard_hashes(out: Path) -> dict[str, str]:
    """sha256 of every shard under OUT (parquet and tar), by relative path."""
    out = Path(out)
    files = sorted(list(out.glob("parquet/data/*.parquet")) + list(out.glob("webdataset/*.tar")))
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="session")
def scin_raw(tmp_path_factory) -> Path:
    from builders.scin.sample import write_sample

    raw = tmp_path_factory.mktemp("scin_raw")
    write_sample(raw, n=40, seed=7)
    return raw


@pytest.fixture(scope="session")
def scin_built(scin_raw, tmp_path_factory) -> Path:
    """The sample built once in both formats with small shards (several per format)."""
    out = tmp_path_factory.mktemp("scin_built") / "out"
    run_cli("build", "scin", "--raw", scin_raw, "--out", out, "--parquet-shard-size", "40KB",
            "--tar-shard-size", "60KB", "--set", "rows_per_partition=7", check=True)
    return out


@pytest.fixture(scope="session")
def scin_images_built(scin_raw, tmp_path_factory) -> Path:
    """The same sample in the image-level view (another source, for mixing)."""
    out = tmp_path_factory.mktemp("scin_images") / "out"
    run_cli("build", "scin", "--raw", scin_raw, "--out", out, "--set", "view=image", "--tar-shard-size", "80KB",
            "--parquet-shard-size", "60KB", check=True)
    return out


def read_without_vldata(reader: str, out: Path) -> dict:
    """Run ``reader`` (a script that prints one JSON line with a ``modules`` entry listing what it
    imported from vldata/builders) in a fresh interpreter with OUT as argv[1]: the plain-library
    round trip. Asserts it succeeded without importing vldata and returns the parsed result."""
    import json

    proc = subprocess.run([sys.executable, "-c", reader, str(out)], capture_output=True, text=True,
                          cwd=Path(out).parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["modules"] == []
    return result
