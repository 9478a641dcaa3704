"""A resumable torch ``IterableDataset`` over a Source or a Mix: each (rank, worker) takes its slice
of one pure plan, and turns samples into what a training step takes.

Rank and world come from explicit arguments or ``torch.distributed``; the worker from
``get_worker_info()``. With ``batch_size`` set, the dataset yields whole batches (use
``DataLoader(ds, batch_size=None, num_workers=N)``); worker w of N produces the rank's batches w,
w+N, ..., which is exactly the order in which DataLoader collects them, so the rank sees the plan's
order whatever N is.

Per sample, in the workers: read; choose the text (``text=``: a field, a list of fields to choose
from uniformly, or a callable); decode (``decode="cpu"``: a uint8 [3,H,W] tensor, center- or
random-resized-cropped to ``image_size``, optionally flipped); apply the user's ``map``. Every random
choice (crop, flip, text, and torch's generator while ``map`` runs) is seeded from (seed, epoch,
global position), so a resumed run gives exactly the batches of an uninterrupted one. Batches hold
``image`` (uint8 [B,3,H,W]; with ``decode=None`` the encoded bytes as one flat uint8 tensor plus
``image_sizes``, for ``vldata.decode_loader_batch`` on the GPU), ``text``, ``key``, ``source``, the
record ``fields`` asked for (numbers as tensors, the rest as lists) and whatever ``map`` added; or
whatever the user's ``collate`` makes of the samples.

The state says where to resume: ``epoch``, ``position`` (the next batch number) and ``start`` (where
in the epoch the plan began), and which plan they refer to: ``seed``, ``world_size``, ``batch_size``
and the Mix's ``fingerprint``. Every worker restarts at the first of its batches at or after
``position``, which is right both for a rank-level state and for the per-worker states torchdata's
``StatefulDataLoader`` keeps. A state from another world size or batch size is elastic: the
positions it consumed are skipped and the rest of the epoch is split over the new world
(``Plan.start``); the next epoch is the new world's plan. Resuming reads nothing that was skipped.
Bad samples (an image that does not decode, no image) are skipped, counted and logged with their
key; a shard that cannot be read raises ``ShardError`` naming it; ``max_consecutive_errors`` skipped
samples in a row stop the run. This module only iterates: it builds nothing and imports nothing from
the write side.
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vldata.errors import SampleError, ShardError
from vldata.read.decode import collate_images, decode_image
from vldata.read.mix import Mix
from vldata.read.progress import SharedProgress
from vldata.read.source import Source

log = logging.getLogger("vldata")
_BASE = ("image", "text", "key", "source")
_SAMPLE_STREAM = 0x5A3D1E  # keeps per-sample draws apart from the plan's own seeds


class TooManyErrors(RuntimeError):
    """Too many consecutive samples could not be used: the data or the decoder is broken."""


class TorchDataset(IterableDataset):
    def __init__(self, data: Source | Mix, shuffle: bool = True, seed: int = 0,
                 decode: Literal["cpu"] | None = None, image_size: int | tuple[int, int] | None = None,
                 rank: int | None = None, world_size: int | None = None, batch_size: int | None = None,
                 drop_last: bool = False, window: int = 4096, max_consecutive_errors: int = 32,
                 balance_by: str | None = None, cap: int | None = None, *,
                 crop: Literal["center", "random"] = "center", scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = False,
                 fields: Sequence[str] = (), text: str | Sequence[str] | Callable[[dict], str] | None = None,
                 map: Callable[[dict], dict] | None = None,
                 collate: Callable[[list[dict]], Any] | None = None):
        if decode not in (None, "cpu"):
            raise ValueError(f"decode must be None or 'cpu', got {decode!r}")
        if decode == "cpu" and batch_size is not None and image_size is None and map is None:
            raise ValueError("batching decoded images needs image_size (one tensor shape per batch)")
        if crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
        if (crop == "random" or flip) and (decode != "cpu" or image_size is None):
            raise ValueError("crop='random' and flip need decode='cpu' and image_size (on the GPU: "
                             "vldata.decode_loader_batch(..., crop='random_resized'))")
        if not (0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"scale and ratio must be (low, high) with 0 < low <= high, got {scale}, {ratio}")
        if isinstance(fields, str):
            fields = (fields,)
        if text is not None and not (isinstance(text, str) or callable(text)):
            text = tuple(text)
            if not text or not all(isinstance(t, str) for t in text):
                raise ValueError("text must be a field name, a non-empty list of field names, or a callable")
        self.mix = Mix.of(data, seed=seed, balance_by=balance_by, cap=cap)
        self.shuffle, self.seed, self.decode, self.image_size = shuffle, seed, decode, image_size
        self.batch_size, self.drop_last, self.window = batch_size, drop_last, window
        self.max_consecutive_errors = max_consecutive_errors
        self.crop, self.scale, self.ratio, self.flip = crop, tuple(scale), tuple(ratio), flip
        self.fields, self.text, self.map, self.collate = tuple(fields), text, map, collate
        if world_size is None:
            dist = torch.distributed
            initialized = dist.is_available() and dist.is_initialized()
            world_size = dist.get_world_size() if initialized else 1
            rank = dist.get_rank() if initialized and rank is None else (rank or 0)
        self.rank, self.world_size = int(rank or 0), int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world of {self.world_size}")
        self.epoch = 0
        self.position = 0
        self.start = 0
        self._fingerprint = self.mix.fingerprint()
        self._progress = SharedProgress()  # what the main process and every worker see
        self._loaded: tuple[int, int, int] | None = None  # a state loaded inside a worker, for that worker only
        self._added: dict[str, None] = {}  # keys ``map`` added to samples (in order), carried into batches

    # -- state ---------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """The next pass reads epoch ``epoch`` from its beginning (a new permutation of every source),
        also in DataLoader workers that persist. Without it, a pass that follows a pass read to its
        end reads the next epoch, whatever ``num_workers``."""
        self._restart(int(epoch), 0, 0)

    @property
    def skipped(self) -> int:
        """Samples skipped so far, counted across the main process and every worker."""
        return self._progress.skipped

    def _restart(self, epoch: int, position: int, start: int) -> None:
        self.epoch, self.position, self.start = epoch, position, start
        if get_worker_info() is None:
            self._progress.restart(epoch, position, start)
        else:  # StatefulDataLoader restores each worker's own state inside that worker
            self._loaded = (epoch, position, start)

    @property
    def _batch(self) -> int:
        return self.batch_size or 1

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "start": self.start, "seed": self.seed,
                "world_size": self.world_size, "batch_size": self._batch, "fingerprint": self._fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state``: this dataset's own state (``state_dict()``, from any rank), or a
        ``StatefulDataLoader``'s whole state (its workers' positions are read from it). A state of
        another world size or batch size resumes elastically: load it here, in the main process,
        before the DataLoader starts; the new world finishes the epoch it was in."""
        state = _dataset_state(state)
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"state from seed {state.get('seed')} cannot resume seed {self.seed}")
        if state.get("fingerprint", self._fingerprint) != self._fingerprint:
            raise ValueError(f"state from other sources (fingerprint {state.get('fingerprint')}, these are "
                             f"{self._fingerprint}: names, shard sizes, weights, stop or balancing differ)")
        epoch, position, start = int(state["epoch"]), int(state["position"]), int(state.get("start", 0))
        world, batch = int(state.get("world_size", self.world_size)), int(state.get("batch_size", self._batch))
        if (world, batch) == (self.world_size, self._batch):
            self._restart(epoch, position, start)
            return
        if get_worker_info() is not None:
            raise ValueError(f"a state from world {world} x batch {batch} cannot resume world {self.world_size} x "
                             f"batch {self._batch} inside a DataLoader worker: call dataset.load_state_dict(state) "
                             "before the loader starts")
        consumed = start + position * world * batch
        length = self.mix.plan(epoch=epoch, seed=self.seed).epoch_length
        self._restart(epoch, 0, consumed if length < 0 else min(consumed, length))

    # -- iteration -----------------------------------------------------------------------------

    def plan(self):
        return self.mix.plan(epoch=self.epoch, world_size=self.world_size, batch_size=self._batch,
                             shuffle=self.shuffle, window=self.window, drop_last=self.drop_last, seed=self.seed,
                             start=self.start)

    def __len__(self) -> int:
        """Batches (or samples, without batch_size) this rank gets in the current epoch (its rest,
        after an elastic resume)."""
        n = self.plan().batches_per_rank
        if n < 0:
            raise TypeError("an endless Mix has no length")
        return n

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        generation, self.epoch, self.position, self.start = self._progress.begin(workers)
        if self._loaded is not None:
            (self.epoch, self.position, self.start), self._loaded = self._loaded, None
        plan = self.plan()
        consecutive = 0
        for t in plan.worker_batches(self.rank, worker, workers, start=self.position):
            positions = plan.batch_positions(self.rank, t)
            sources, indices = plan.sources_at(positions)
            samples = []
            for g, k, i in zip(positions.tolist(), sources.tolist(), indices.tolist()):
                sample = self._load(g, k, i)
                if sample is None:
                    consecutive += 1
                    if consecutive >= self.max_consecutive_errors:
                        raise TooManyErrors(f"{consecutive} consecutive samples could not be used; last: source "
                                            f"{self.mix.names[k]} index {i}")
                    continue
                consecutive = 0
                samples.append(sample)
            self.position = t + 1  # before yielding: a state taken after this batch resumes after it
            if self.batch_size is None:
                yield from samples
            elif samples:
                yield self.collate(samples) if self.collate is not None else self._collate(samples)
        self._progress.finish(generation)

    def _rng(self, g: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, g, _SAMPLE_STREAM])

    def _load(self, g: int, k: int, i: int) -> dict[str, Any] | None:
        """Sample i of source k at epoch position g, read, given its text, decoded and mapped."""
        try:
            sample = self.mix.sample(k, i)
        except SampleError as e:  # one sample; the shard's others are fine
            return self._skip(f"{self.mix.names[k]}[{i}]", str(e))
        except ShardError:
            raise
        except Exception as e:  # a sample that cannot be read
            return self._skip(f"{self.mix.names[k]}[{i}]", f"unreadable: {type(e).__name__}: {e}")
        if not isinstance(sample.get("image"), (bytes, bytearray)):
            return self._skip(sample.get("key"), "no primary image")
        random = self.crop == "random" or self.flip or isinstance(self.text, tuple)
        rng = self._rng(g) if random else None
        if self.text is not None:
            self._choose_text(sample, rng)
        if self.decode == "cpu":
            try:
                array = decode_image(sample["image"], self.image_size, **self._crop_args(rng))
            except Exception as e:
                return self._skip(sample.get("key"), f"image does not decode: {type(e).__name__}: {e}")
            sample["image"] = _chw(array)
        if self.map is not None:
            sample = self._map(sample, g)
        return sample

    def _crop_args(self, rng: np.random.Generator | None) -> dict[str, Any]:
        if self.crop == "center" and not self.flip:
            return {}
        return {"crop": self.crop, "scale": self.scale, "ratio": self.ratio, "flip": self.flip, "rng": rng}

    def _choose_text(self, sample: dict[str, Any], rng: np.random.Generator | None) -> None:
        if callable(self.text):
            sample["text"] = self.text(sample)
        elif isinstance(self.text, str):  # a sample without the field (another source) keeps its text
            if sample.get(self.text) is not None:
                sample["text"] = sample[self.text]
        else:  # one of several fields, uniformly among those the sample has; else its own text
            have = [name for name in self.text if sample.get(name) not in (None, "")]
            name = have[int(rng.integers(len(have)))] if have else "text"
            sample["text"], sample["text_field"] = sample.get(name, ""), name

    def _map(self, sample: dict[str, Any], g: int) -> dict[str, Any]:
        """The user's function, with torch's generator seeded from this sample's position (restored
        afterwards), so its random transforms resume exactly too."""
        seed = int(np.random.SeedSequence([self.seed, self.epoch, g, _SAMPLE_STREAM, 1]).generate_state(1)[0])
        before = set(sample)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.map(sample)
        if isinstance(out, dict):
            self._added.update((k, None) for k in out if k not in before)
        return out

    def _skip(self, key: Any, why: str) -> None:
        self._progress.add_skipped()
        log.warning("vldata: skipping sample %s: %s", key, why)
        return None

    def _collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Our batch: the base keys, the asked ``fields``, the text field chosen, and what ``map`` added."""
        names = list(_BASE) + [f for f in self.fields if f not in _BASE]
        if isinstance(self.text, tuple):
            names.append("text_field")
        names += [k for k in self._added if k not in names]
        batch: dict[str, Any] = {}
        for name in names:
            values = [s.get(name) for s in samples]
            if name == "image" and self.decode is None:
                batch["image"] = torch.frombuffer(bytearray(b"".join(values)), dtype=torch.uint8) \
                    if any(values) else torch.empty(0, dtype=torch.uint8)
                batch["image_sizes"] = torch.tensor([len(b) for b in values], dtype=torch.int64)
            else:
                batch[name] = collate_values(values)
        return batch


def _chw(array: np.ndarray) -> torch.Tensor:
    """A uint8 [3, H, W] view of an HWC array, without a copy. Pillow hands out its pixels as a
    read-only buffer that this array alone holds; torch warns about wrapping read-only memory, which
    here nobody else can see."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array).permute(2, 0, 1)


def collate_values(values: list) -> Any:
    """One batch column: uint8 [3,H,W] images of one shape into our channels-last uint8 [B,3,H,W]
    (one shared-memory copy), other tensors of one shape stacked, numbers (no None) as a tensor,
    everything else as a list."""
    if values and all(isinstance(v, torch.Tensor) for v in values):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) == 1:
            first = values[0]
            if first.dtype == torch.uint8 and first.dim() == 3 and first.shape[0] == 3:
                return collate_images([v.permute(1, 2, 0).numpy() for v in values])
            return torch.stack(values)
        return values
    if values and all(isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.bool)
    if values and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.int64)
    if values and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.float32)
    return values


def _dataset_state(state: dict[str, Any]) -> dict[str, Any]:
    """Our state from a StatefulDataLoader's whole state (the furthest of its workers: DataLoader
    takes batches round-robin, so the rank has consumed every batch before it), or ``state`` itself."""
    if "dataset_state" in state and "position" not in state:  # num_workers=0
        return state["dataset_state"]
    workers = state.get("_snapshot", {}).get("_worker_snapshots") if "position" not in state else None
    if workers is None:
        return state
    states = [w.get("dataset_state") for w in workers.values() if w and w.get("dataset_state")]
    if not states:
        raise ValueError("the loader state holds no dataset state (taken before the first batch?)")
    return max(states, key=lambda s: (s["epoch"], s["position"]))
