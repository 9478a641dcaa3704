"""Ctrl-C and a full disk stop a build with one line, and --resume then gives the same shards as a
build that was never stopped."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import vldata.cli
from conftest import shard_hashes
from vldata.write import shards

SMALL = ["--parquet-shard-size", "40KB", "--tar-shard-size", "60KB", "--set", "rows_per_partition=7"]


def test_ctrl_c_stops_the_workers_with_one_line_and_resume_finishes(scin_raw, scin_built, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vldata.cli", "build", "scin", "--raw", str(scin_raw), "--out",
                             str(out), "--workers", "2", *SMALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            env={**os.environ, "VLDATA_TEST_PARTITION_SECONDS": "1.5"})
    deadline = time.monotonic() + 60
    while not list((out / "build" / "parts").glob("*.done.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole process group
    _, err = proc.communicate(timeout=60)  # a hang guard, not a speed goal
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vldata: interrupted: ") and lines[0].endswith(
        "partitions done; --resume finishes"), err
    done, total = map(int, lines[0].split()[2].split("/"))
    assert 0 < done < total  # queued partitions were cancelled, not run
    assert len(list((out / "build" / "parts").glob("*.done.json"))) == done
    assert not (out / "parquet" / "vldata.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "vldata.cli", "build", "scin", "--raw", str(scin_raw), "--out",
                              str(out), "--resume", *SMALL], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert shard_hashes(out) == shard_hashes(scin_built)


def test_a_full_disk_is_one_line_and_resume_finishes(scin_raw, scin_built, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    original = shards.TarShards.write
    calls = []

    def full(self, key, members):
        calls.append(key)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.staging / "train-000001.tar.tmp"))
        return original(self, key, members)

    monkeypatch.setattr(shards.TarShards, "write", full)
    args = ["build", "scin", "--raw", str(scin_raw), "--out", str(out), *SMALL]
    assert vldata.cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vldata: error: no space left on the device writing {out / 'build' / 'staging' / 'webdataset' / 'train-000001.tar.tmp'}"
                   "; free some, then --resume finishes the build"]
    monkeypatch.setattr(shards.TarShards, "write", original)
    assert vldata.cli.main([*args, "--resume"]) == 0
    assert shard_hashes(out) == shard_hashes(scin_built)
