"""What a training loop takes from TorchDataset: per-sample tensors, record fields, text choice, the
user's map and collate, seeded random crops that resume exactly, and elastic resume across world sizes.
Runs through real DataLoaders with 2 workers, on a generated in-memory source."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from fsspec.implementations.local import LocalFileSystem
from PIL import Image as PILImage
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

import vldata
from vldata.read.source import Source


def _jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    x = np.linspace(0, 255, 48, dtype=np.float32)
    img = (x[None, :, None] * 0.5 + rng.integers(0, 120, (36, 48, 3))).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


JPEGS = [_jpeg(i) for i in range(8)]


class Generated(Source):
    """n samples in shards of 10: key, image, text, label, score, names, and two text types."""

    def __init__(self, n: int = 53, name: str = "gen"):
        shards = [{"path": f"s{i}", "num_samples": min(10, n - 10 * i), "num_bytes": 0} for i in range(-(-n // 10))]
        manifest = {"splits": {"train": {"shards": shards}}, "builder": name}
        super().__init__(LocalFileSystem(), "", manifest, "train", name)

    def _read(self, s: int, j: int) -> dict:
        i = 10 * s + j
        return {"key": f"k{i:04d}", "image": JPEGS[i % len(JPEGS)], "text": f"caption {i}", "label": i % 7,
                "score": i / 100, "names": [f"n{i}"] * (i % 3), "common": f"common {i}",
                "scientific": f"sci {i}" if i % 5 else None}


def keys(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def test_a_decoded_sample_is_a_uint8_chw_tensor():
    ds = vldata.TorchDataset(Generated(5), decode="cpu", shuffle=False)
    sample = next(iter(ds))
    assert isinstance(sample["image"], torch.Tensor) and sample["image"].dtype == torch.uint8
    assert sample["image"].shape == (3, 36, 48)
    sized = next(iter(vldata.TorchDataset(Generated(5), decode="cpu", image_size=(16, 20))))
    assert sized["image"].shape == (3, 16, 20)


def test_fields_reach_batches_as_tensors_or_lists_through_two_workers():
    ds = vldata.TorchDataset(Generated(), batch_size=4, decode="cpu", image_size=16, fields=["label", "score", "names"])
    batches = list(DataLoader(ds, batch_size=None, num_workers=2))
    b = batches[0]
    assert b["image"].shape == (4, 3, 16, 16) and b["image"].dtype == torch.uint8
    assert b["label"].dtype == torch.int64 and b["score"].dtype == torch.float32
    assert b["label"].tolist() == [int(k[1:]) % 7 for k in b["key"]]
    assert b["score"].tolist() == pytest.approx([int(k[1:]) / 100 for k in b["key"]])
    assert b["names"] == [[f"n{int(k[1:])}"] * (int(k[1:]) % 3) for k in b["key"]]
    assert set(keys(batches)) == {f"k{i:04d}" for i in range(53)}
    assert "common" not in b  # only the fields asked for


def test_text_from_a_field_a_choice_of_fields_or_a_callable():
    one = vldata.TorchDataset(Generated(), batch_size=5, text="common")
    assert all(t == f"common {int(k[1:])}" for b in one for t, k in zip(b["text"], b["key"]))
    call = vldata.TorchDataset(Generated(), batch_size=5, text=lambda s: s["key"].upper())
    assert all(t == k.upper() for b in call for t, k in zip(b["text"], b["key"]))

    def run(workers, epoch=0):
        ds = vldata.TorchDataset(Generated(400), batch_size=8, text=["common", "scientific"], seed=3)
        ds.set_epoch(epoch)
        return list(DataLoader(ds, batch_size=None, num_workers=workers))

    batches = run(2)
    chosen = Counter()
    for b in batches:
        for t, field, k in zip(b["text"], b["text_field"], b["key"]):
            i = int(k[1:])
            if i % 5 == 0:  # no scientific name: always the common one
                assert field == "common"
            chosen[field] += i % 5 != 0
            assert t == (f"common {i}" if field == "common" else f"sci {i}")
    both = 400 - 80
    assert abs(chosen["common"] - both / 2) < 4 * (both / 4) ** 0.5  # uniform: within 4 sigma
    assert [b["text_field"] for b in batches] == [b["text_field"] for b in run(0)]  # seeded, not per worker
    assert [b["text_field"] for b in batches] != [b["text_field"] for b in run(0, epoch=1)]


def test_map_runs_in_workers_with_seeded_torch_randomness_and_its_keys_are_batched():
    def add_noise(sample):
        sample["noise"] = torch.rand(2)
        sample["length"] = len(sample["text"])
        sample["image"] = sample["image"].float() / 255
        return sample

    def run(workers):
        ds = vldata.TorchDataset(Generated(), batch_size=4, decode="cpu", image_size=16, map=add_noise, seed=1)
        return list(DataLoader(ds, batch_size=None, num_workers=workers))

    two, none = run(2), run(0)
    assert two[0]["image"].dtype == torch.float32 and two[0]["image"].shape == (4, 3, 16, 16)
    assert two[0]["noise"].shape == (4, 2) and two[0]["length"].dtype == torch.int64
    assert all(torch.equal(a["noise"], b["noise"]) for a, b in zip(two, none))  # same draws whatever the workers
    assert len({tuple(x.tolist()) for b in two for x in b["noise"]}) == 53  # and a fresh draw per sample


def test_a_user_collate_gets_the_samples():
    ds = vldata.TorchDataset(Generated(), batch_size=4, collate=lambda samples: [s["key"] for s in samples])
    batches = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert all(isinstance(b, list) for b in batches)
    assert {k for b in batches for k in b} == {f"k{i:04d}" for i in range(53)}


# -- elastic resume ----------------------------------------------------------------------------


def _rank_batches(world, rank, state=None, workers=2, batch_size=3, epoch=0, stop=None):
    ds = vldata.TorchDataset(Generated(), batch_size=batch_size, rank=rank, world_size=world, seed=4)
    ds.set_epoch(epoch)
    if state is not None:
        ds.load_state_dict(state)
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=workers)
    if stop is None:
        return list(loader), ds, None
    it = iter(loader)
    got = [next(it) for _ in range(stop)]
    return got, ds, loader.state_dict()


@pytest.mark.parametrize("new_world,new_workers,new_batch", [(3, 1, 3), (1, 2, 3), (3, 2, 2)])
def test_a_state_from_world_two_finishes_the_epoch_at_another_world(new_world, new_workers, new_batch):
    before, states = [], []
    for rank in (0, 1):  # world 2, two workers each, stopped after 4 batches
        got, _, state = _rank_batches(2, rank, stop=4)
        before += keys(got)
        states.append(state)
    after, counts = [], []
    for rank in range(new_world):  # any old rank's state will do: they agree
        ds = vldata.TorchDataset(Generated(), batch_size=new_batch, rank=rank, world_size=new_world, seed=4)
        ds.load_state_dict(states[rank % 2])
        batches = list(StatefulDataLoader(ds, batch_size=None, num_workers=new_workers))
        counts.append(len(batches))
        assert len(batches) == len(ds)
        after += keys(batches)
        plan = ds.plan()
    assert len(set(counts)) == 1  # every rank the same number of batches: no DDP hang
    everything = [f"k{i:04d}" for i in range(53)]
    assert len(before) == 2 * 4 * 3 and len(set(before)) == len(before)
    assert sorted(set(before) | set(after)) == everything
    assert not set(before) & set(after) or plan.padding  # nothing consumed comes again...
    assert len(after) - len(set(after) - set(before)) == plan.padding  # ...except counted padding

    # the next epoch is the new world's own plan
    ds.set_epoch(1)
    fresh = vldata.TorchDataset(Generated(), batch_size=new_batch, rank=new_world - 1, world_size=new_world, seed=4)
    fresh.set_epoch(1)
    assert keys(list(ds)) == keys(list(fresh))


def test_a_rank_level_state_resumes_elastically_in_process():
    ds = vldata.TorchDataset(Generated(), batch_size=5, rank=0, world_size=2, seed=2)
    it = iter(ds)
    head = [next(it) for _ in range(2)]
    state = ds.state_dict()
    assert state["world_size"] == 2 and state["position"] == 2
    rest = []
    for rank in range(3):
        other = vldata.TorchDataset(Generated(), batch_size=4, rank=rank, world_size=3, seed=2)
        other.load_state_dict(state)
        rest.append(keys(list(other)))
    assert len({len(r) for r in rest}) == 1
    plan = vldata.TorchDataset(Generated(), batch_size=5, world_size=2, rank=0, seed=2).plan()
    consumed = [k for t in range(2) for r in range(2) for k in
                [f"k{int(i):04d}" for i in plan.batch(r, t)[1]]]
    assert keys(head) == consumed[:5] + consumed[10:15]
    assert sorted(set(consumed) | {k for r in rest for k in r}) == [f"k{i:04d}" for i in range(53)]


def test_a_state_of_another_seed_or_other_sources_is_refused_in_one_line():
    ds = vldata.TorchDataset(Generated(), batch_size=4, seed=1)
    state = ds.state_dict()
    with pytest.raises(ValueError, match="seed"):
        vldata.TorchDataset(Generated(), batch_size=4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="other sources") as e:
        vldata.TorchDataset(Generated(54), batch_size=4, seed=1).load_state_dict(state)
    assert "\n" not in str(e.value)
    mix = vldata.Mix({"a": Generated(), "b": Generated(name="b")})
    with pytest.raises(ValueError, match="other sources"):
        vldata.TorchDataset(mix, batch_size=4, seed=1).load_state_dict(state)


# -- random crops and flips ----------------------------------------------------------------------


def _crop_run(epochs, workers=2, stop=None, state=None, epoch_of_state=None):
    ds = vldata.TorchDataset(Generated(), batch_size=4, decode="cpu", image_size=24, crop="random",
                             scale=(0.2, 1.0), flip=True, seed=7)
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=workers)
    if state is not None:
        ds.set_epoch(epoch_of_state)
        loader.load_state_dict(state)
        return list(loader)
    out = []
    for e in epochs:
        ds.set_epoch(e)
        it = iter(loader)
        for n, b in enumerate(it):
            out.append(b)
            if stop is not None and n + 1 == stop:
                return out, loader.state_dict()
    return out


def test_random_crops_are_seeded_differ_across_epochs_and_resume_exactly():
    full = _crop_run([0, 1])
    again = _crop_run([0, 1], workers=0)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(full, again))  # seeded, not per worker
    per_epoch = len(full) // 2
    e0, e1 = full[:per_epoch], full[per_epoch:]
    by_key0 = {k: img for b in e0 for k, img in zip(b["key"], b["image"])}
    by_key1 = {k: img for b in e1 for k, img in zip(b["key"], b["image"])}
    assert sum(not torch.equal(by_key0[k], by_key1[k]) for k in by_key0) > 0.9 * len(by_key0)
    stop = int(np.random.default_rng().integers(1, per_epoch - 1))
    head, state = _crop_run([0], stop=stop)
    tail = _crop_run(None, state=state, epoch_of_state=0)
    resumed = head + tail
    assert [b["key"] for b in resumed] == [b["key"] for b in e0]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(resumed, e0))
