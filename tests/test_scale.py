"""Scale-out: the Ray executor (identical shards, retried partitions), remote raw input and output
through fsspec, and reading a built dataset over HTTP by byte ranges."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
from conftest import run_cli, shard_hashes
from fakes.range_server import RangeServer

import vldata

PARTITIONED = ["--set", "rows_per_partition=7"]  # 40 rows -> 6 partitions


@pytest.fixture(scope="module")
def local_build(scin_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    run_cli("build", "scin", "--raw", scin_raw, "--out", out, *PARTITIONED, check=True)
    return out


def _stats(out: Path) -> dict:
    return json.loads((out / "build" / "stats.json").read_text())


@pytest.mark.parametrize("how", ["kill", "raise"])
def test_ray_executor_gives_the_local_shards_even_when_a_partition_fails_once(how, scin_raw, local_build, tmp_path):
    marker = tmp_path / "failed-once"
    out = tmp_path / "ray"
    proc = run_cli("build", "scin", "--raw", scin_raw, "--out", out, "--executor", "ray", "--workers", "2",
                   *PARTITIONED, env={"VLDATA_FAIL_ONCE": f"3:{how}:{marker}", "RAY_ADDRESS": ""}, check=True)
    assert marker.read_text().startswith(f"partition 3 failed once ({how})")  # the fault did happen
    assert shard_hashes(out) == shard_hashes(local_build)
    assert len(shard_hashes(out)) == 2
    assert _stats(out) == _stats(local_build)
    assert "input_rows=40 = written 39 + failed 1" in proc.stdout
    assert run_cli("validate", out).returncode == 0


def test_ray_is_refused_with_one_line_when_ray_is_missing(scin_raw, tmp_path):
    # a Python where "import ray" fails: a stub module that raises ImportError
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "ray.py").write_text("raise ImportError('no ray here')\n")
    import os

    proc = run_cli("build", "scin", "--raw", scin_raw, "--out", tmp_path / "out", "--executor", "ray",
                   env={"PYTHONPATH": f"{stub}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["vldata: error: --executor ray needs Ray: pip install 'vldata[ray]'"]


def _put_folder(fs, local: Path, remote: str) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.pipe_file(f"{remote}/{p.relative_to(local).as_posix()}", p.read_bytes())


def test_remote_raw_and_out_through_fsspec_give_the_local_shards(scin_raw, local_build, tmp_path, monkeypatch):
    monkeypatch.setenv("VLDATA_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    _put_folder(fs, scin_raw, "/raw-scin")
    try:
        report = vldata.build("scin", "memory://raw-scin", "memory://built/scin", rows_per_partition=7)
        assert report.totals.written == 39
        # every shard of the local build, byte for byte, under the same relative path
        for rel, digest in shard_hashes(local_build).items():
            import hashlib

            assert hashlib.sha256(fs.cat_file(f"/built/scin/{rel}")).hexdigest() == digest, rel
        for fmt in ("parquet", "webdataset"):
            assert fs.exists(f"/built/scin/{fmt}/vldata.json")
        assert fs.exists("/built/scin/build/stats.json")
        assert not (tmp_path / "cache" / "work").exists() or not any((tmp_path / "cache" / "work").iterdir())
        # the remote folder reads back through the same API
        src = vldata.open("memory://built/scin", format="parquet")
        assert len(src) == 39 and src[0]["image"][:4] == b"\x89PNG"
        # a second build into the same folder is refused before any work; --resume of it is a no-op
        with pytest.raises(vldata.StructuralError, match="not empty"):
            vldata.build("scin", "memory://raw-scin", "memory://built/scin", rows_per_partition=7)
        again = vldata.build("scin", "memory://raw-scin", "memory://built/scin", resume=True, rows_per_partition=7)
        assert again.totals.as_dict() == report.totals.as_dict()
    finally:
        fs.rm("/raw-scin", recursive=True)
        fs.rm("/built", recursive=True)


def test_file_urls_work_on_the_command_line(scin_raw, local_build, tmp_path):
    out = tmp_path / "out"
    run_cli("build", "scin", "--raw", f"file://{scin_raw}", "--out", f"file://{out}", *PARTITIONED, check=True)
    assert shard_hashes(out) == shard_hashes(local_build)


def test_open_over_http_fetches_only_the_needed_byte_ranges(scin_raw, tmp_path):
    out = tmp_path / "site" / "out"
    run_cli("build", "scin", "--raw", scin_raw, "--out", out, "--tar-shard-size", "60KB",
            "--parquet-shard-size", "40KB", check=True)
    local = vldata.open(out, format="webdataset")
    assert len(local.shards) >= 3
    with RangeServer(tmp_path / "site") as srv:
        src = vldata.open(srv.url("out/webdataset"))
        assert len(src) == len(local) == 39
        srv.reset()
        i = len(src) - 2  # in the last shard
        shard, j = src.locate(i)
        sample = src[i]
        assert sample == {**local[i]}
        key, members = json.loads((out / "webdataset" / src.shards[shard]["index"]).read_text())["samples"][j]
        span = max(o + n for _, o, n in members) - min(o for _, o, n in members)
        tar = f"out/webdataset/{src.shards[shard]['path']}"
        gets = [r for r in srv.requests if r[0] == "GET"]
        # the member index of that shard, then one range request of exactly the sample's members
        assert [(r[1], r[3]) for r in gets] == [(f"out/webdataset/{src.shards[shard]['index']}",
                                                 (out / "webdataset" / src.shards[shard]["index"]).stat().st_size),
                                                (tar, span)]
        assert gets[1][2] is not None and gets[1][2].startswith("bytes=")
        assert all(r[1] in (tar, gets[0][1]) for r in srv.requests)  # no other shard touched

        srv.reset()
        psrc = vldata.open(srv.url("out"), format="parquet")
        plocal = vldata.open(out, format="parquet")
        assert len(psrc.shards) >= 3
        shard, _ = psrc.locate(5)
        assert psrc[5] == plocal[5]
        path = f"out/parquet/{psrc.shards[shard]['path']}"
        shard_reads = [r for r in srv.requests if r[0] == "GET" and r[1].startswith("out/parquet/data/")]
        assert {r[1] for r in shard_reads} == {path}  # only the shard holding the sample
        assert all(r[2] is not None for r in shard_reads)  # every read is a range request


def test_an_interrupted_upload_leaves_no_manifest_and_resume_finishes_it(scin_raw, local_build, tmp_path, monkeypatch):
    from vldata.write import storage

    monkeypatch.setenv("VLDATA_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    real_put, uploaded = storage._put, []

    def put_then_fail(fs_, local, remote):
        if len(uploaded) == 3:
            raise ConnectionError("network gone")
        real_put(fs_, local, remote)
        uploaded.append(remote)

    monkeypatch.setattr(storage, "_put", put_then_fail)
    try:
        with pytest.raises(ConnectionError):
            vldata.build("scin", scin_raw, "memory://upload/scin", rows_per_partition=7)
        assert uploaded and not any(p.endswith("vldata.json") for p in uploaded)
        assert not fs.exists("/upload/scin/parquet/vldata.json")  # incomplete, and visibly so
        with pytest.raises(FileNotFoundError):
            vldata.open("memory://upload/scin")
        monkeypatch.setattr(storage, "_put", real_put)
        report = vldata.build("scin", scin_raw, "memory://upload/scin", resume=True, rows_per_partition=7)
        assert report.totals.written == 39
        src = vldata.open("memory://upload/scin", format="webdataset")
        assert [src[i]["key"] for i in range(len(src))] == [
            vldata.open(local_build, format="webdataset")[i]["key"] for i in range(39)]
    finally:
        if fs.exists("/upload"):
            fs.rm("/upload", recursive=True)


def test_validate_reads_a_build_over_http_and_names_an_altered_remote_shard(scin_built, tmp_path):
    import shutil

    from vldata.tools.validate import validate

    site = tmp_path / "site"
    shutil.copytree(scin_built, site / "out")
    with RangeServer(site) as srv:
        assert validate(srv.url("out")) == []
        assert validate(srv.url("out/webdataset")) == []
        tar = sorted((site / "out" / "webdataset").glob("*.tar"))[1]
        data = bytearray(tar.read_bytes())
        data[700] ^= 0xFF  # same size, other bytes
        tar.write_bytes(bytes(data))
        problems = validate(srv.url("out"))
        assert f"{srv.url('out/webdataset/' + tar.name)}: sha256 differs from the manifest (altered)" in problems
    assert run_cli("validate", f"file://{site / 'out'}").returncode == 1
