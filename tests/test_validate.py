"""`vldata validate` re-reads everything and names what is wrong."""

from __future__ import annotations

import shutil

from conftest import run_cli


def copy_built(scin_built, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(scin_built, out)
    return out


def test_a_sound_build_validates(scin_built):
    proc = run_cli("validate", scin_built)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.strip().endswith("OK")


def test_truncated_tar_is_named(scin_built, tmp_path):
    out = copy_built(scin_built, tmp_path)
    tar = sorted((out / "webdataset").glob("*.tar"))[1]
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    proc = run_cli("validate", out)
    assert proc.returncode == 1
    assert tar.name in proc.stdout and "truncated" in proc.stdout


def test_altered_parquet_is_named(scin_built, tmp_path):
    out = copy_built(scin_built, tmp_path)
    shard = sorted((out / "parquet" / "data").glob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    proc = run_cli("validate", out)
    assert proc.returncode == 1
    assert f"{shard.name}: sha256 differs" in proc.stdout


def test_missing_shard_is_named(scin_built, tmp_path):
    out = copy_built(scin_built, tmp_path)
    victim = sorted((out / "webdataset").glob("*.tar"))[0]
    victim.unlink()
    proc = run_cli("validate", out)
    assert proc.returncode == 1 and f"{victim.name}: listed in the manifest but missing" in proc.stdout


def test_mlcroissant_cli_accepts_both_croissant_files(scin_built):
    import subprocess
    import sys
    from pathlib import Path

    cli = Path(sys.executable).with_name("mlcroissant")
    for fmt in ("parquet", "webdataset"):
        proc = subprocess.run([str(cli), "validate", "--jsonld", str(scin_built / fmt / "croissant.json")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "error" not in proc.stderr.lower()


def test_stale_member_index_is_named(scin_built, tmp_path):
    import json

    out = copy_built(scin_built, tmp_path)
    index = sorted((out / "webdataset").glob("*.idx.json"))[0]
    doc = json.loads(index.read_text())
    doc["samples"][0][1][0][1] += 512  # an offset that no longer points at the member
    index.write_text(json.dumps(doc))
    proc = run_cli("validate", out)
    assert proc.returncode == 1 and f"{index.name}: member index does not match" in proc.stdout
