"""Shuffled shards and failures that point back to their input.

Shuffle: the order is a pure function of (seed, split, position) (``vldata.write.shuffle``) and the
bucketed external shuffle writes exactly it, whatever the buckets, spills and batches; on an Arboretum
sample ordered by taxon, windows of 256 samples hold as many species as a uniform permutation gives,
``--shuffle none`` keeps the input order, and the shards are the same bytes across workers,
partitionings, bucket counts and a kill mid-reduce + ``--resume``; parquet, tars and the balance
values share one order. Failures: every failures.parquet row of LAION metadata, an img2dataset folder
and dedup names its input file and row, its URL where it had one, and a duplicate the key that kept
its place. Network: loopback servers only."""

from __future__ import annotations

import json
import math
import tarfile
from itertools import permutations
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vldata
import vldata.write.engine as engine
from builders.arboretum.sample import write_sample
from builders.laion.sample import LAION400M
from conftest import run_cli, shard_hashes
from fakes.http_server import ImageServer, encode
from test_engine import Pair, png
from test_laion import FETCH, laion_row, write, write_img2dataset_folder
from vldata import Builder, Failed, Filtered, Origin, Partition
from vldata.cli import parse_shuffle
from vldata.describe.card import card_file
from vldata.write.engine import run_build
from vldata.write.shuffle import Shuffle, bucket_of, shuffled_order, sort_keys

# --------------------------------------------------------------------------------------------
# The order: a pure function, and the external shuffle that writes it


def _keys(n: int) -> list[str]:
    return [f"row{i:05d}" for i in range(n)]


def test_the_order_is_a_permutation_fixed_by_seed_split_and_keys():
    order = shuffled_order(0, "train", _keys(1000))
    assert sorted(order.tolist()) == list(range(1000))
    assert np.array_equal(order, shuffled_order(0, "train", _keys(1000)))
    assert not np.array_equal(order, shuffled_order(1, "train", _keys(1000)))
    assert not np.array_equal(order, shuffled_order(0, "test", _keys(1000)))
    # a row added or removed anywhere does not reorder the others: each row's place is its key's
    keys = _keys(1000)
    longer = shuffled_order(0, "train", keys + ["extra"])
    assert np.array_equal(longer[longer < 1000], order)
    shorter = shuffled_order(0, "train", keys[1:])  # the first row gone
    assert np.array_equal(shorter + 1, order[order > 0])


def test_every_order_of_five_rows_is_about_equally_likely():
    seeds = 24_000
    counts = {p: 0 for p in permutations(range(5))}
    for seed in range(seeds):
        counts[tuple(shuffled_order(seed, "train", _keys(5)).tolist())] += 1
    expected = seeds / len(counts)
    assert max(abs(c - expected) for c in counts.values()) < 5 * math.sqrt(expected)


def test_buckets_hold_ranges_of_keys():
    keys = np.sort(sort_keys(3, "train", _keys(5000)))
    for n in (1, 2, 7, 1000):
        buckets = bucket_of(keys, n)
        assert buckets.min() >= 0 and buckets.max() < n and np.all(np.diff(buckets.astype(np.int64)) >= 0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 400), buckets=st.integers(1, 9), spill_rows=st.integers(1, 500),
       batch_sizes=st.lists(st.integers(1, 70), min_size=1, max_size=8), seed=st.integers(0, 2**32))
def test_the_bucketed_shuffle_writes_exactly_the_order(tmp_path_factory, n, buckets, spill_rows, batch_sizes, seed):
    folder = tmp_path_factory.mktemp("spill")
    payload = [bytes([i % 251]) * (i % 13) for i in range(n)]
    table = pa.table({"pos": pa.array(range(n), pa.int64()), "key": pa.array(_keys(n), pa.string()),
                      "blob": pa.array(payload, pa.binary())})
    shuffle = Shuffle(folder, seed, "train", buckets, spill_bytes=spill_rows * 20, batch_rows=17)
    at, i = 0, 0
    while at < n:  # batches of varied sizes, as partitions and dedup cut them
        size = batch_sizes[i % len(batch_sizes)]
        shuffle.add(table.slice(at, size).combine_chunks().to_batches()[0])
        at, i = at + size, i + 1
    out = pa.Table.from_batches(list(shuffle.batches()), schema=table.schema) if n else table
    assert out.column("pos").to_pylist() == shuffled_order(seed, "train", _keys(n)).tolist()
    assert out.column("blob").to_pylist() == [payload[p] for p in out.column("pos").to_pylist()]
    assert not list(folder.iterdir())  # bucket files are removed as they are read


def test_the_shuffle_option_parses():
    assert parse_shuffle("none") is None and parse_shuffle("None") is None and parse_shuffle("7") == 7
    for bad in ("-1", "abc", "1.5"):
        with pytest.raises(Exception):
            parse_shuffle(bad)


# --------------------------------------------------------------------------------------------
# Acceptance: an Arboretum sample ordered by taxon

SMALL = ["--parquet-shard-size", "40KB", "--tar-shard-size", "60KB", "--format", "both"]
SPECIES, PER_SPECIES = 200, 10


@pytest.fixture(scope="module")
def taxon_raw(tmp_path_factory) -> Path:
    """The Arboretum sample (2,000 photos, some 404 or not an image) rewritten in taxon order, as real
    chunks come: 200 species of 10 consecutive rows each."""
    raw = tmp_path_factory.mktemp("arboretum_by_taxon") / "raw"
    write_sample(raw, n=SPECIES * PER_SPECIES, seed=0)
    i = 0
    for chunk in sorted(raw.glob("chunk_*.parquet")):
        table = pq.read_table(chunk)
        rows = table.to_pylist()
        for row in rows:
            s = i // PER_SPECIES
            row.update(scientificName=f"Genus{s // 4:03d} epithet{s:03d}", genus=f"Genus{s // 4:03d}",
                       species=f"epithet{s:03d}", common_name=f"Common {s:03d}")
            i += 1
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), chunk)
    return raw


def _build(raw: Path, out: Path, *args: str, env: dict | None = None, check: bool = True):
    return run_cli("build", "arboretum", "--raw", raw, "--out", out, *SMALL, *args, env=env, check=check)


@pytest.fixture(scope="module")
def shuffled(taxon_raw) -> Path:
    out = taxon_raw.parent / "shuffled"
    _build(taxon_raw, out, "--set", "rows_per_partition=300")
    return out


@pytest.fixture(scope="module")
def in_order(taxon_raw) -> Path:
    out = taxon_raw.parent / "in_order"
    _build(taxon_raw, out, "--shuffle", "none", "--set", "rows_per_partition=300")
    return out


def _parquet_column(out: Path, name: str) -> list:
    return pq.read_table(sorted((out / "parquet" / "data").glob("*.parquet")), columns=[name]).column(name).to_pylist()


def _tar_keys(out: Path) -> list[str]:
    keys = []
    for tar in sorted((out / "webdataset").glob("*.tar")):
        with tarfile.open(tar) as t:
            keys += list(dict.fromkeys(m.name.split(".")[0] for m in t))
    return keys


def _species_per_window(species: list[str], window: int = 256, stride: int = 32) -> float:
    counts = [len(set(species[s:s + window])) for s in range(0, len(species) - window + 1, stride)]
    return sum(counts) / len(counts)


def test_windows_hold_as_many_species_as_a_uniform_permutation(shuffled, in_order):
    species = _parquet_column(shuffled, "scientific_name")
    assert len(species) > 1500
    rng = np.random.default_rng(12345)
    uniform = np.mean([_species_per_window([species[i] for i in rng.permutation(len(species))]) for _ in range(20)])
    got = _species_per_window(species)
    assert abs(got - uniform) <= 0.10 * uniform, (got, uniform)
    assert _species_per_window(_parquet_column(in_order, "scientific_name")) < 0.3 * uniform  # the input's clumps
    assert sorted(species) == sorted(_parquet_column(in_order, "scientific_name"))


def test_shuffle_none_keeps_the_input_order(taxon_raw, in_order):
    raw_ids = [str(r) for r in pq.read_table(sorted(taxon_raw.glob("chunk_*.parquet"))).column("photo_id").to_pylist()]
    keys = _parquet_column(in_order, "key")
    assert keys == [k for k in raw_ids if k in set(keys)]


def test_parquet_tars_and_values_share_one_order_and_the_seed_is_recorded(shuffled):
    keys = _parquet_column(shuffled, "key")
    assert _tar_keys(shuffled) == keys and len(set(keys)) == len(keys)
    assert len(list((shuffled / "parquet" / "data").glob("*.parquet"))) > 3
    values = pq.read_table(shuffled / "parquet" / "values" / "train.parquet").column("scientific_name").to_pylist()
    assert values == _parquet_column(shuffled, "scientific_name")
    for fmt in ("parquet", "webdataset"):
        assert json.loads((shuffled / fmt / "vldata.json").read_text())["shuffle_seed"] == 0
        assert "shuffle seed `0`" in (shuffled / fmt / "README.md").read_text()
    assert json.loads((shuffled / "build" / "stats.json").read_text())["shuffle_seed"] == 0


def test_another_seed_gives_another_order_of_the_same_rows(taxon_raw, shuffled, tmp_path):
    _build(taxon_raw, tmp_path / "seed1", "--shuffle", "1", "--set", "rows_per_partition=300")
    one, zero = _parquet_column(tmp_path / "seed1", "key"), _parquet_column(shuffled, "key")
    assert one != zero and sorted(one) == sorted(zero)


def test_workers_and_partitioning_do_not_change_the_shards(taxon_raw, shuffled, tmp_path):
    _build(taxon_raw, tmp_path / "w2", "--workers", "2", "--set", "rows_per_partition=97")
    assert shard_hashes(tmp_path / "w2") == shard_hashes(shuffled) and len(shard_hashes(shuffled)) > 6


def test_bucket_count_and_spills_do_not_change_the_shards(taxon_raw, shuffled, tmp_path, monkeypatch):
    """In this process, with the split spilled into 7 buckets in many small spills (the sample's
    written rows fit one bucket otherwise)."""
    monkeypatch.setattr(engine, "num_buckets", lambda total_bytes: 7)
    monkeypatch.setattr(engine, "bucket_bytes", lambda total_bytes: 200_000)  # rows held between spills
    vldata.build("arboretum", taxon_raw, tmp_path / "b7", shard_bytes={"parquet": 40 << 10, "webdataset": 60 << 10},
                 rows_per_partition=300)
    assert shard_hashes(tmp_path / "b7") == shard_hashes(shuffled)


def test_a_kill_mid_reduce_then_resume_gives_the_same_shards(taxon_raw, shuffled, tmp_path):
    out = tmp_path / "out"
    proc = _build(taxon_raw, out, "--set", "rows_per_partition=300", env={"VLDATA_CRASH_AT": "batch:5"}, check=False)
    assert proc.returncode == -9  # killed after 5 batches reached the shard writers
    assert not (out / "parquet" / "vldata.json").exists() and list((out / "build" / "staging").rglob("*.tmp"))
    _build(taxon_raw, out, "--resume", "--set", "rows_per_partition=300")
    assert shard_hashes(out) == shard_hashes(shuffled)


def test_resume_with_another_seed_is_refused(taxon_raw, tmp_path):
    out = tmp_path / "out"
    _build(taxon_raw, out, "--set", "rows_per_partition=300", env={"VLDATA_CRASH_AT": "partition:1"}, check=False)
    proc = _build(taxon_raw, out, "--resume", "--shuffle", "1", "--set", "rows_per_partition=300", check=False)
    assert proc.returncode == 2 and "--resume needs the same" in proc.stderr


def test_arboretum_failures_name_file_row_and_url(taxon_raw, shuffled):
    raw_rows = {(f.name, i): r for f in sorted(taxon_raw.glob("chunk_*.parquet"))
                for i, r in enumerate(pq.read_table(f).to_pylist())}
    failures = pq.read_table(shuffled / "build" / "failures.parquet").to_pylist()
    assert failures and {f["reason"] for f in failures} == {"http_404", "not_an_image"}
    for f in failures:
        source = raw_rows[(f["file"], f["row"])]
        assert str(source["photo_id"]) == f["key"] and f["url"] == source["photo_url"]
        assert f["ref"] == f"{f['file']}:{f['row']}" and f["kept_key"] is None


# --------------------------------------------------------------------------------------------
# failures.parquet: LAION metadata rows, an img2dataset folder, dedup


def _failures(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(out / "build" / "failures.parquet").to_pylist()}


def test_laion_failures_filtered_rows_and_duplicates_point_back_to_their_input(tmp_path):
    with ImageServer() as server:
        good = {n: server.add(f"/g{n}.png", encode("PNG", (30 + n, 30), (n * 20, 9, 9))) for n in range(4)}
        small = server.add("/small.png", encode("PNG", (8, 8), (1, 2, 3)))
        copy = server.add("/copy.png", server.images["b.png"])
        first = [laion_row(0, good[0]), laion_row(1, server.url("/missing.jpg")), laion_row(2, server.url("/img/b.png")),
                 laion_row(3, good[1], similarity=0.1), laion_row(4, None), laion_row(5, small, WIDTH=None, HEIGHT=None),
                 laion_row(6, server.url("/page.jpg"))]
        second = [laion_row(10, good[2]), laion_row(11, good[0]), laion_row(12, copy), laion_row(13, good[3]),
                  laion_row(14, server.url("/img/b.png"))]
        raw = tmp_path / "raw"
        write(raw / "a" / "first.parquet", first, LAION400M)
        write(raw / "b" / "second.parquet", second, LAION400M)
        out = tmp_path / "out"
        vldata.build("laion", raw, out, formats="parquet", fetch=FETCH, min_similarity=0.2, min_image_size=16,
                     rows_per_partition=3, workers=2)
    failures = _failures(out)
    expected = {  # key: (file, row, url, reason, kept_key)
        "00000_000000001": ("a/first.parquet", 1, server.url("/missing.jpg"), "http_404", None),
        "00000_000000003": ("a/first.parquet", 3, good[1], "min_similarity", None),
        "00000_000000004": ("a/first.parquet", 4, None, "url_missing", None),
        "00000_000000005": ("a/first.parquet", 5, small, "min_image_size", None),
        "00000_000000006": ("a/first.parquet", 6, server.url("/page.jpg"), "not_an_image", None),
        "00001_000000001": ("b/second.parquet", 1, good[0], "duplicate_url", "00000_000000000"),
        "00001_000000002": ("b/second.parquet", 2, copy, "duplicate_image", "00000_000000002"),
        "00001_000000004": ("b/second.parquet", 4, server.url("/img/b.png"), "duplicate_url", "00000_000000002"),
    }
    assert {k: (f["file"], f["row"], f["url"], f["reason"], f["kept_key"]) for k, f in failures.items()} == expected
    assert all(f["ref"] == f"{f['file']}:{f['row']}" for f in failures.values())


def test_img2dataset_failures_and_duplicates_name_shard_row_and_url(tmp_path):
    images = {"a.jpg": encode("JPEG", (64, 48), (200, 30, 30)), "b.png": encode("PNG", (40, 30), (30, 200, 30)),
              "c.webp": encode("WEBP", (50, 50), (30, 30, 200))}
    raw = tmp_path / "i2d"
    write_img2dataset_folder(raw, images)  # 000010000 holds the same image as 000000002
    out = tmp_path / "out"
    vldata.build("laion", raw, out, formats="parquet")
    failures = _failures(out)
    expected = {  # rows in each shard parquet are in completion order, not key order
        "000000003": ("00000.parquet", 3, "http_404", None),
        "000010001": ("00001.parquet", 0, "checksum_mismatch", None),
        "000010000": ("00001.parquet", 1, "duplicate_image", "000000002"),
        "000010002": ("00001.parquet", 2, "timeout", None),
    }
    assert {k: (f["file"], f["row"], f["reason"], f["kept_key"]) for k, f in failures.items()} == expected
    for key, f in failures.items():
        assert f["url"] == f"http://127.0.0.1:9/{key}.jpg" and f["ref"] == f"{f['file']}:{f['row']}"


class LocatedPairs(Builder):
    """Rows of ``rows-<split>.csv`` (no file is read): row i has image shade i % 3 and URL i % 4, so
    later rows repeat earlier images and URLs, across partitions and splits; row 5 is filtered, 6 fails."""

    name, version, Record = "located_pairs", "0.0.1", Pair

    def dedup_on(self) -> dict[str, str]:
        return {"image": "image_info.sha256", "url": "url"}

    def partitions(self, raw: Path) -> list[Partition]:
        return [Partition(i, split, (split, start), 4) for i, (split, start) in
                enumerate([("train", 0), ("train", 4), ("test", 0)])]

    def records(self, partition, ctx):
        split, start = partition.payload
        for i in range(start, start + partition.input_rows):
            origin = Origin(f"rows-{split}.csv", i, f"http://127.0.0.1:9/{i % 4}")
            if i == 5:
                yield Filtered(f"{split}_{i}", "too_small", "filtered on purpose", origin)
            elif i == 6:
                yield Failed(f"{split}_{i}", "broken", "failed on purpose", origin)
            else:
                yield ctx.located(Pair(key=f"{split}_{i}", text=f"row {i}", image=png(i % 3), url=origin.url), origin)

    def card_path(self) -> Path:
        return card_file("scin")


def test_duplicates_name_their_input_and_the_key_kept(tmp_path):
    report = run_build(LocatedPairs(), tmp_path, tmp_path / "out", formats=("parquet",), workers=2)
    assert report.splits["train"].written == 3  # train_0, train_1, train_2
    got = {k: (f["file"], f["row"], f["url"], f["reason"], f["kept_key"]) for k, f in _failures(tmp_path / "out").items()}
    assert got == {
        "train_3": ("rows-train.csv", 3, "http://127.0.0.1:9/3", "duplicate_image", "train_0"),
        "train_4": ("rows-train.csv", 4, "http://127.0.0.1:9/0", "duplicate_image", "train_1"),
        "train_5": ("rows-train.csv", 5, "http://127.0.0.1:9/1", "too_small", None),
        "train_6": ("rows-train.csv", 6, "http://127.0.0.1:9/2", "broken", None),
        "train_7": ("rows-train.csv", 7, "http://127.0.0.1:9/3", "duplicate_image", "train_1"),
        "test_0": ("rows-test.csv", 0, "http://127.0.0.1:9/0", "duplicate_image", "train_0"),
        "test_1": ("rows-test.csv", 1, "http://127.0.0.1:9/1", "duplicate_image", "train_1"),
        "test_2": ("rows-test.csv", 2, "http://127.0.0.1:9/2", "duplicate_image", "train_2"),
        "test_3": ("rows-test.csv", 3, "http://127.0.0.1:9/3", "duplicate_image", "train_0"),
    }


def test_a_builder_with_plain_string_refs_still_fills_ref(tmp_path):
    """A third-party builder that gives ``ref`` as a string and locates no record: ``ref`` holds the
    string (a duplicate: its partition) and the structured columns are null."""

    class Plain(LocatedPairs):
        name = "plain_pairs"

        def records(self, partition, ctx):
            for outcome in super().records(partition, ctx):
                ctx.origin_of(outcome)  # forget what the parent located
                if isinstance(outcome, (Failed, Filtered)):
                    outcome = type(outcome)(outcome.key, outcome.reason, outcome.message, f"row {outcome.ref.row}")
                yield outcome

    run_build(Plain(), tmp_path, tmp_path / "out", formats=("parquet",))
    failures = _failures(tmp_path / "out")
    assert failures["train_5"]["ref"] == "row 5" and failures["train_5"]["file"] is None
    assert failures["train_3"]["ref"] == "partition 0" and failures["train_3"]["row"] is None
    assert failures["train_3"]["kept_key"] == "train_0"
