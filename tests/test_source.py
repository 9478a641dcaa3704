"""Random access over built datasets: both formats agree, one manifest read opens, broken shards name themselves."""

from __future__ import annotations

import json
import shutil

import pytest

import vldata
from vldata.read.source import ShardError


def test_both_formats_give_the_same_samples(scin_built):
    pq_src = vldata.open(scin_built, format="parquet")
    wds_src = vldata.open(scin_built / "webdataset")
    written = json.loads((scin_built / "build" / "stats.json").read_text())["splits"]["train"]["written"]
    assert len(pq_src) == len(wds_src) == written
    assert len(wds_src.shard_sizes) > 1 and len(pq_src.shard_sizes) > 1
    for i in range(len(pq_src)):
        a, b = pq_src[i], wds_src[i]
        assert a["key"] == b["key"] and a["text"] == b["text"] and a["image"] == b["image"]
        assert a.get("image_2") == b.get("image_2") and a["derm_fst_labels"] == b["derm_fst_labels"]
        assert a["image_info"] == b["image_info"] and a["source"] == b["source"] == "scin"
    with pytest.raises(IndexError):
        pq_src[len(pq_src)]


def test_fsspec_urls_work(scin_built):
    src = vldata.open(f"file://{scin_built}/webdataset")
    assert src[len(src) - 1]["key"] == vldata.open(scin_built / "webdataset")[len(src) - 1]["key"]


def test_open_reads_only_the_manifest(scin_built, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(scin_built, out)
    for shard in list((out / "webdataset").glob("*.tar")) + list((out / "webdataset").glob("*.idx.json")):
        shard.unlink()
    src = vldata.open(out / "webdataset")  # no listing, no shard opened
    assert len(src) == json.loads((out / "webdataset" / "vldata.json").read_text())["splits"]["train"]["num_samples"]
    with pytest.raises(ShardError, match=r"train-000000\.idx\.json: member index missing"):
        src[0]


def test_truncated_tar_raises_naming_it(scin_built, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(scin_built, out)
    tar = sorted((out / "webdataset").glob("*.tar"))[1]
    tar.write_bytes(tar.read_bytes()[:2048])
    src = vldata.open(out / "webdataset")
    first_of_second = src.shard_sizes[0]
    src[0]  # other shards still read
    with pytest.raises(ShardError, match=tar.name):
        src[first_of_second]


def test_truncated_parquet_raises_naming_it(scin_built, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(scin_built, out)
    shard = sorted((out / "parquet" / "data").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ShardError, match=shard.name):
        vldata.open(out / "parquet")[0]
