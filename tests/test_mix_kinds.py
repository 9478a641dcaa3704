"""A Mix of the three kinds of dataset vldata reads: a vldata build, a parquet folder written by
`datasets`, and plain tars written by `webdataset.TarWriter`. Exact mixing, coverage, ranks x
workers and resume hold as they do for builds alone."""

from __future__ import annotations

import io
from collections import Counter
from fractions import Fraction

import datasets
import numpy as np
import pytest
import webdataset as wds
from PIL import Image as PILImage
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

import vldata


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (12 + i % 5, 10), (i % 256, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def three(scin_built, tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    hub = root / "hub"
    (hub / "data").mkdir(parents=True)
    for s in range(2):
        rows = range(s * 19, min(37, (s + 1) * 19))
        ds = datasets.Dataset.from_dict({"image": [_png(i) for i in rows], "caption": [f"hub {i}" for i in rows],
                                         "id": [f"h{i:03d}" for i in rows]})
        ds.cast_column("image", datasets.Image()).to_parquet(hub / "data" / f"train-{s:05d}-of-00002.parquet")
    tars = root / "tars"
    tars.mkdir()
    for s in range(2):
        with wds.TarWriter(str(tars / f"{s:05d}.tar")) as w:
            for i in range(s * 15, min(29, (s + 1) * 15)):
                w.write({"__key__": f"t{i:03d}", "png": _png(i), "txt": f"tar {i}", "cls": i % 4})
    srcs = {"built": vldata.open(scin_built / "webdataset"), "hub": vldata.open(hub, text="caption"),
            "tars": vldata.open(tars, index_dir=str(root / "index"))}
    return srcs


def test_each_kind_reads_its_own_samples(three):
    assert len(three["hub"]) == 37 and len(three["tars"]) == 29
    hub, tar = three["hub"][5], three["tars"][20]
    assert hub["text"] == "hub 5" and hub["image"] == _png(5) and hub["source"] == "hub"
    assert tar["key"] == "t020" and tar["text"] == "tar 20" and tar["image"] == _png(20) and tar["cls"] == 0


@pytest.mark.parametrize("stop", ["first_exhausted", "all_exhausted"])
def test_ranks_and_workers_cover_a_mix_of_kinds_exactly(three, stop):
    weights = {"built": 0.5, "hub": 0.3, "tars": 0.2}
    mix = vldata.Mix(three, weights=weights, seed=3, stop=stop)
    batch, world = 3, 2
    per_rank = []
    for rank in range(world):
        ds = vldata.TorchDataset(mix, batch_size=batch, rank=rank, world_size=world, seed=3)
        per_rank.append(list(DataLoader(ds, batch_size=None, num_workers=2)))
    assert len(per_rank[0]) == len(per_rank[1])
    plan = ds.plan()
    # the global stream, rebuilt from the ranks' batches, is the plan's, sample for sample
    stream = []
    for t in range(plan.batches_per_rank):
        for rank in range(world):
            b = per_rank[rank][t]
            stream += list(zip(b["source"], b["key"]))
    want_src, want_idx = plan.sources_at(np.arange(plan.epoch_length))
    expected = [(mix.names[k], mix.sample(k, i)["key"]) for k, i in zip(want_src.tolist(), want_idx.tolist())]
    assert stream[:plan.epoch_length] == expected
    assert len(stream) == plan.epoch_length + plan.padding
    # exact mixing: every prefix within one sample of weight x n
    total = sum(Fraction(w).limit_denominator(100) for w in weights.values())
    counts = Counter()
    for n, (source, _) in enumerate(stream[:plan.epoch_length], start=1):
        counts[source] += 1
        for name, w in weights.items():
            assert abs(counts[name] - n * Fraction(w).limit_denominator(100) / total) <= 1
    # coverage per stop rule: all_exhausted reads every sample of every source at least once
    seen = {name: {k for s, k in stream if s == name} for name in three}
    if stop == "all_exhausted":
        for name, src in three.items():
            assert len(seen[name]) == len(src)
    else:
        assert any(len(seen[name]) == len(src) for name, src in three.items())


def test_a_mix_of_kinds_resumes_exactly(three):
    mix = vldata.Mix(three, seed=1, stop="all_exhausted")

    def dataset():
        return vldata.TorchDataset(mix, batch_size=4, decode="cpu", image_size=8, crop="random", flip=True, seed=1)

    full = list(StatefulDataLoader(dataset(), batch_size=None, num_workers=2))
    loader = StatefulDataLoader(dataset(), batch_size=None, num_workers=2)
    it = iter(loader)
    head = [next(it) for _ in range(5)]
    state = loader.state_dict()
    del it, loader
    again = StatefulDataLoader(dataset(), batch_size=None, num_workers=2)
    again.load_state_dict(state)
    got = head + list(again)
    assert [b["key"] for b in got] == [b["key"] for b in full]
    assert all((a["image"] == b["image"]).all() for a, b in zip(got, full))
