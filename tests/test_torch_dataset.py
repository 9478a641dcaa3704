"""The torch dataset: exact resume through StatefulDataLoader, ranks x workers cover an epoch once,
mixing tags, bad samples skipped and counted."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

import vldata
from vldata.read.source import ShardError


def keys_of(batches) -> list[list[str]]:
    return [b["key"] for b in batches]


def make(src, **kw):
    return vldata.TorchDataset(src, batch_size=kw.pop("batch_size", 3), decode="cpu", image_size=16, seed=5, **kw)


@pytest.mark.parametrize("stop_after", [1, 4, 9])
def test_stateful_dataloader_resumes_exactly_across_an_epoch_boundary(scin_built, stop_after):
    src = vldata.open(scin_built / "webdataset")

    def run_epochs(loader, ds, epochs):
        out = []
        for e in epochs:
            ds.set_epoch(e)
            out += [(e, b) for b in loader]
        return out

    ds = make(src)
    full = run_epochs(StatefulDataLoader(ds, batch_size=None, num_workers=2), ds, [0, 1])
    per_epoch = len(ds)
    assert len(full) == 2 * per_epoch

    # interrupted: epoch 0 whole, then stop_after batches of epoch 1, then a brand-new loader resumes
    ds1 = make(src)
    loader1 = StatefulDataLoader(ds1, batch_size=None, num_workers=2)
    first = run_epochs(loader1, ds1, [0])
    ds1.set_epoch(1)
    it = iter(loader1)
    first += [(1, next(it)) for _ in range(stop_after)]
    state = loader1.state_dict()
    del it, loader1

    ds2 = make(src)
    ds2.set_epoch(1)
    loader2 = StatefulDataLoader(ds2, batch_size=None, num_workers=2)
    loader2.load_state_dict(state)
    rest = [(1, b) for b in loader2]
    got = first + rest
    assert [(e, b["key"]) for e, b in got] == [(e, b["key"]) for e, b in full]
    assert all(torch.equal(a["image"], b["image"]) for (_, a), (_, b) in zip(got, full))


def test_plain_state_dict_resume_in_process_reads_nothing_skipped(scin_built, monkeypatch):
    src = vldata.open(scin_built / "parquet")
    full = keys_of(list(make(src, batch_size=4)))
    k = random.Random(0).randint(1, len(full) - 1)
    ds = make(src, batch_size=4)
    it = iter(ds)
    head = [next(it)["key"] for _ in range(k)]
    state = ds.state_dict()
    assert set(state) >= {"epoch", "position", "start", "seed", "world_size"} and state["position"] == k
    ds2 = make(src, batch_size=4)
    ds2.load_state_dict(state)
    reads = []
    original = type(src)._read
    monkeypatch.setattr(type(src), "_read", lambda self, s, j: reads.append((s, j)) or original(self, s, j))
    tail = keys_of(list(ds2))
    assert head + tail == full
    assert len(reads) == sum(len(b) for b in tail)  # only what was yielded after the resume point


@pytest.mark.parametrize("batch_size", [2, 5])
def test_two_ranks_with_two_workers_cover_the_epoch(scin_built, batch_size):
    src = vldata.open(scin_built / "webdataset")
    n = len(src)
    per_rank = []
    for rank in (0, 1):
        ds = vldata.TorchDataset(src, batch_size=batch_size, rank=rank, world_size=2, seed=3)
        batches = list(DataLoader(ds, batch_size=None, num_workers=2))
        per_rank.append(batches)
        assert len(batches) == len(ds)
    assert len(per_rank[0]) == len(per_rank[1])  # equal batch counts: no DDP hang
    keys = [k for batches in per_rank for b in batches for k in b["key"]]
    plan = ds.plan()
    assert len(keys) == n + plan.padding
    assert set(keys) == {src[i]["key"] for i in range(n)}
    if plan.padding == 0:
        assert len(set(keys)) == len(keys)  # no key twice
    else:
        assert len(keys) - len(set(keys)) == plan.padding  # repeats are exactly the reported padding


def test_two_ranks_exact_fit_no_key_twice(scin_raw, tmp_path):
    vldata.build("scin", scin_raw, tmp_path / "out", limit=21)  # 21 cases, one without its image: 20 written
    src = vldata.open(tmp_path / "out" / "webdataset")
    n = len(src)
    assert n == 20
    size = 5
    keys = []
    for rank in (0, 1):
        ds = vldata.TorchDataset(src, batch_size=size, rank=rank, world_size=2, seed=9)
        keys += [k for b in DataLoader(ds, batch_size=None, num_workers=2) for k in b["key"]]
    assert sorted(keys) == sorted(src[i]["key"] for i in range(n))


def test_mixed_sources_carry_their_name_and_follow_the_weights(scin_built, scin_images_built):
    cases, images = vldata.open(scin_built / "parquet"), vldata.open(scin_images_built / "webdataset")
    mix = vldata.Mix({"cases": cases, "images": images}, weights={"cases": 0.25, "images": 0.75}, seed=1,
                     stop="all_exhausted")
    ds = vldata.TorchDataset(mix, batch_size=4, seed=1)
    batches = list(DataLoader(ds, batch_size=None, num_workers=2))
    sources = np.array([s for b in batches for s in b["source"]])
    n = np.arange(1, len(sources) + 1)
    assert np.all(np.abs(np.cumsum(sources == "cases") - 0.25 * n) <= 1)
    assert set(k for b in batches for k, s in zip(b["key"], b["source"]) if s == "images") == \
        {images[i]["key"] for i in range(len(images))}


def test_corrupt_image_is_skipped_and_counted(scin_built, tmp_path, caplog):
    out = tmp_path / "copy"
    shutil.copytree(scin_built, out)
    src = vldata.open(out / "webdataset")
    victim = src[2]["key"]
    index = src._index(0)
    _, members = index[2]
    _, offset, size = next(m for m in members if m[0] == "jpg")
    tar = out / "webdataset" / src.shards[0]["path"]
    data = bytearray(tar.read_bytes())
    data[offset:offset + size] = b"\0" * size  # same size, not an image any more
    tar.write_bytes(bytes(data))
    ds = vldata.TorchDataset(vldata.open(out / "webdataset"), batch_size=4, decode="cpu", image_size=8, shuffle=False)
    keys = [k for b in ds for k in b["key"]]
    assert victim not in keys and ds.skipped == 1
    assert victim in caplog.text and "does not decode" in caplog.text


def test_truncated_shard_stops_with_its_name(scin_built, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(scin_built, out)
    tar = sorted((out / "webdataset").glob("*.tar"))[0]
    tar.write_bytes(tar.read_bytes()[:1000])
    ds = vldata.TorchDataset(vldata.open(out / "webdataset"), batch_size=4, shuffle=False)
    with pytest.raises(ShardError, match=tar.name):
        list(ds)


def test_consecutive_failures_stop_the_run(scin_built, monkeypatch):
    from vldata.read.torch_dataset import TooManyErrors

    src = vldata.open(scin_built / "parquet")
    monkeypatch.setattr("vldata.read.torch_dataset.decode_image", lambda data, size: (_ for _ in ()).throw(OSError("bad")))
    ds = vldata.TorchDataset(src, batch_size=4, decode="cpu", image_size=8, max_consecutive_errors=5)
    with pytest.raises(TooManyErrors, match="5 consecutive"):
        list(ds)


def test_balanced_sampling_caps_every_value_per_epoch(scin_built):
    import collections
    import json

    src = vldata.open(scin_built / "parquet")
    values = src.values("related_category")
    manifest = json.loads((scin_built / "parquet" / "vldata.json").read_text())
    counts = {v: n for v, n in manifest["splits"]["train"]["values"]["counts"]["related_category"]}
    assert counts == dict(collections.Counter(values))  # saved at build time, no scan needed
    value_of = {src[i]["key"]: values[i] for i in range(len(src))}
    cap = 2
    ds = vldata.TorchDataset(src, batch_size=4, balance_by="related_category", cap=cap, seed=2, drop_last=False)
    chosen = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        keys = [k for b in ds for k in b["key"]]
        real = keys[: len(keys) - ds.plan().padding]
        assert len(real) == len(set(real)) == sum(min(n, cap) for n in counts.values())
        per_value = collections.Counter(value_of[k] for k in real)
        assert all(per_value[v] == min(n, cap) for v, n in counts.items())
        chosen.append(set(real))
    assert chosen[0] != chosen[1]  # a fresh choice each epoch
    with pytest.raises(KeyError, match="balance fields"):
        vldata.TorchDataset(src, balance_by="text", cap=1)


@pytest.mark.parametrize("workers,persistent", [(2, False), (2, True)])
def test_skips_in_workers_are_counted_where_the_loop_reads_them(scin_built, tmp_path, workers, persistent):
    """A corrupt image skipped inside a DataLoader worker shows in ``ds.skipped`` of the main process,
    once per epoch that reads it."""
    out = tmp_path / "copy"
    shutil.copytree(scin_built, out)
    src = vldata.open(out / "webdataset")
    _, members = src._index(0)[2]
    _, offset, size = next(m for m in members if m[0] == "jpg")
    tar = out / "webdataset" / src.shards[0]["path"]
    data = bytearray(tar.read_bytes())
    data[offset:offset + size] = b"\0" * size
    tar.write_bytes(bytes(data))
    ds = vldata.TorchDataset(vldata.open(out / "webdataset"), batch_size=4, decode="cpu", image_size=8, seed=1)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=persistent)
    for epoch in range(2):
        ds.set_epoch(epoch)
        list(loader)
        assert ds.skipped == epoch + 1
