"""Same input, same shards: whatever the number of workers, the formats asked for, or a crash + --resume."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from conftest import run_cli, shard_hashes

SMALL = ["--parquet-shard-size", "40KB", "--tar-shard-size", "60KB", "--set", "rows_per_partition=7"]


def test_workers_do_not_change_shards(scin_raw, scin_built, tmp_path):
    run_cli("build", "scin", "--raw", scin_raw, "--out", tmp_path / "w2", "--workers", "2", *SMALL, check=True)
    one, two = shard_hashes(scin_built), shard_hashes(tmp_path / "w2")
    assert len(one) > 3 and one == two
    assert (scin_built / "build" / "stats.json").read_text() == (tmp_path / "w2" / "build" / "stats.json").read_text()


def test_partition_size_does_not_change_shards(scin_raw, scin_built, tmp_path):
    args = [a if a != "rows_per_partition=7" else "rows_per_partition=100" for a in SMALL]
    run_cli("build", "scin", "--raw", scin_raw, "--out", tmp_path / "big", *args, check=True)
    assert shard_hashes(tmp_path / "big") == shard_hashes(scin_built)


def test_parquet_only_equals_parquet_of_both(scin_raw, scin_built, tmp_path):
    run_cli("build", "scin", "--raw", scin_raw, "--out", tmp_path / "pq", "--format", "parquet", *SMALL, check=True)
    only = shard_hashes(tmp_path / "pq")
    assert only and all(k.startswith("parquet/") for k in only)
    assert only == {k: v for k, v in shard_hashes(scin_built).items() if k.startswith("parquet/")}
    assert not (tmp_path / "pq" / "webdataset").exists()


@pytest.mark.parametrize("crash_at,workers", [("partition:2", "1"), ("partition:3", "2"), ("batch:1", "1")])
def test_sigkill_then_resume_gives_the_same_shards(scin_raw, scin_built, tmp_path, crash_at, workers):
    out = tmp_path / "out"
    proc = run_cli("build", "scin", "--raw", scin_raw, "--out", out, "--workers", workers, *SMALL,
                   env={"VLDATA_CRASH_AT": crash_at})
    assert proc.returncode == -9  # killed part-way
    assert not (out / "parquet" / "vldata.json").exists()
    done_before = len(list((out / "build" / "parts").glob("*.done.json")))
    assert 0 < done_before
    run_cli("build", "scin", "--raw", scin_raw, "--out", out, "--resume", *SMALL, check=True)
    assert shard_hashes(out) == shard_hashes(scin_built)
    keys = pq.read_table(out / "parquet" / "data").column("key").to_pylist()
    assert len(keys) == len(set(keys))
    stats = json.loads((out / "build" / "stats.json").read_text())
    assert stats == json.loads((scin_built / "build" / "stats.json").read_text())


def test_resume_with_another_config_is_refused(scin_raw, tmp_path):
    out = tmp_path / "out"
    run_cli("build", "scin", "--raw", scin_raw, "--out", out, *SMALL, env={"VLDATA_CRASH_AT": "partition:1"})
    proc = run_cli("build", "scin", "--raw", scin_raw, "--out", out, "--resume", "--set", "view=image")
    assert proc.returncode == 2 and "--resume needs the same" in proc.stderr


def test_resume_of_a_finished_build_changes_nothing(scin_raw, tmp_path):
    import vldata

    out = tmp_path / "out"
    first = vldata.build("scin", scin_raw, out, formats="parquet")
    assert not (out / "build" / "parts").exists()  # parts are removed once the build is complete
    before = shard_hashes(out)
    again = vldata.build("scin", scin_raw, out, formats="parquet", resume=True)
    assert shard_hashes(out) == before
    assert again.splits["train"].as_dict() == first.splits["train"].as_dict() and again.shards == first.shards
