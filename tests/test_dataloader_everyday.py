"""DataLoaders called the way training scripts call them: a peek at ``src[0]`` in the main process
before the workers fork, ``persistent_workers=True``, a second pass without ``set_epoch``, spawn.
Every epoch delivers every sample, and which epoch a pass reads never depends on the workers."""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter

import pytest
from torch.utils.data import DataLoader

import vldata
from fakes.range_server import RangeServer


def _keys(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


def _dataset(src, **kw):
    return vldata.TorchDataset(src, batch_size=4, seed=3, **kw)


def _in_process(src, epoch: int) -> Counter:
    """What epoch ``epoch`` holds, read in this process: every sample once, plus the plan's padding
    of the last step (samples from the epoch's start)."""
    ds = _dataset(src)
    ds.set_epoch(epoch)
    keys = Counter(_keys(ds))
    assert set(keys) == {src[i]["key"] for i in range(len(src))}
    assert sum(keys.values()) == len(src) + ds.plan().padding
    return keys


def _reader_offset_after_child_reads(src) -> tuple[int, int]:
    """The OS file offset of the parent's open shard before and after a forked child reads another
    sample of the same shard (equal when the child does not share the parent's open file)."""
    src[0]
    f = next(iter(src._files.values()))
    before = os.lseek(f.fileno(), 0, os.SEEK_CUR)
    last = src.shard_sizes[0] - 1
    child = multiprocessing.get_context("fork").Process(target=src.__getitem__, args=(last,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    return before, os.lseek(f.fileno(), 0, os.SEEK_CUR)


def test_a_forked_worker_does_not_move_the_parents_file_offset(scin_built):
    before, after = _reader_offset_after_child_reads(vldata.open(scin_built, format="webdataset"))
    assert before == after


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
@pytest.mark.parametrize("workers", [2, 4])
def test_every_epoch_delivers_every_sample_after_a_peek(scin_built, fmt, workers):
    src = vldata.open(scin_built, format=fmt)
    src[0], src[len(src) - 1]  # the parent opens shards before the workers fork
    ds = _dataset(src)
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    for epoch in range(20):
        ds.set_epoch(epoch)
        assert Counter(_keys(loader)) == _in_process(src, epoch), f"epoch {epoch}"
    assert ds.skipped == 0


@pytest.mark.parametrize("fmt,workers", [("webdataset", 4), ("parquet", 2)])
def test_every_epoch_delivers_every_sample_over_http(scin_built, fmt, workers):
    local = vldata.open(scin_built, format=fmt)  # the same build on disk: what each epoch must hold
    with RangeServer(scin_built.parent) as server:
        src = vldata.open(server.url(f"{scin_built.name}/{fmt}"))
        src[0], src[len(src) - 1]
        ds = _dataset(src)
        loader = DataLoader(ds, batch_size=None, num_workers=workers)
        for epoch in range(20):
            ds.set_epoch(epoch)
            assert Counter(_keys(loader)) == _in_process(local, epoch), f"epoch {epoch}"


def _fresh_epoch(src, epoch: int, workers: int = 2) -> list[str]:
    ds = _dataset(src)
    ds.set_epoch(epoch)
    return _keys(DataLoader(ds, batch_size=None, num_workers=workers))


def test_persistent_workers_read_the_epoch_set_in_the_main_process(scin_built):
    src = vldata.open(scin_built, format="webdataset")
    ds = _dataset(src)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert _keys(loader) == _fresh_epoch(src, epoch), f"epoch {epoch}"
    assert _fresh_epoch(src, 0) != _fresh_epoch(src, 1)  # epochs really differ


@pytest.mark.parametrize("workers,persistent", [(0, False), (2, False), (2, True), (3, False)])
def test_a_pass_without_set_epoch_reads_the_next_epoch(scin_built, workers, persistent):
    """The rule: a pass that follows a pass read to its end reads the next epoch; a pass broken off
    is read again from its start. The same for every num_workers."""
    src = vldata.open(scin_built, format="parquet")
    ds = _dataset(src)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=persistent)
    assert _keys(loader) == _fresh_epoch(src, 0, workers or 2)
    assert _keys(loader) == _fresh_epoch(src, 1, workers or 2)
    it = iter(loader)
    next(it)
    del it  # broken off: epoch 2 is not finished
    assert _keys(loader) == _fresh_epoch(src, 2, workers or 2)
    ds.set_epoch(7)
    assert _keys(loader) == _fresh_epoch(src, 7, workers or 2)


def test_spawned_workers_share_the_epoch_and_the_skip_count(scin_built, tmp_path):
    src = vldata.open(scin_built, format="parquet")
    ds = _dataset(src)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn", persistent_workers=True)
    ds.set_epoch(1)
    assert _keys(loader) == _fresh_epoch(src, 1)
    ds.set_epoch(2)
    assert _keys(loader) == _fresh_epoch(src, 2)
