"""A resumable torch ``IterableDataset`` over a Source or a Mix: each (rank, worker) takes its slice
of one pure plan.

Rank and world come from explicit arguments or ``torch.distributed``; the worker from
``get_worker_info()``. With ``batch_size`` set, the dataset yields whole batches (use
``DataLoader(ds, batch_size=None, num_workers=N)``). Batches hold ``image`` (uint8 [B,3,H,W] with
``decode="cpu"``; with ``decode=None`` the encoded bytes as one flat uint8 tensor plus
``image_sizes``, for ``vldata.decode_loader_batch`` on the GPU), ``text``, ``key`` and ``source``.
Worker w of N produces the rank's batches
w, w+N, ..., which is exactly the order in which DataLoader collects them, so the rank sees the
plan's order whatever N is. The state is four integers: ``epoch`` and ``position`` (the next batch
number) say where to resume, ``seed`` and ``world_size`` say which plan they refer to (a state of
another plan is refused); every worker restarts at the first of its batches at or after
``position``, which is right both for a rank-level state and for the per-worker states torchdata's
``StatefulDataLoader`` keeps. Resuming reads nothing that was skipped. Bad samples (an image that
does not decode, no image) are skipped, counted and logged with their key; a shard that cannot be
read raises ``ShardError`` naming it; ``max_consecutive_errors`` skipped samples in a row stop the
run. This module only iterates: it builds nothing and imports nothing from the write side.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch.utils.data import IterableDataset, get_worker_info

from vldata.read.decode import collate_images, decode_image
from vldata.read.mix import Mix
from vldata.read.progress import SharedProgress
from vldata.errors import SampleError, ShardError
from vldata.read.source import Source

log = logging.getLogger("vldata")


class TooManyErrors(RuntimeError):
    """Too many consecutive samples could not be used: the data or the decoder is broken."""


class TorchDataset(IterableDataset):
    def __init__(self, data: Source | Mix, shuffle: bool = True, seed: int = 0,
                 decode: Literal["cpu"] | None = None, image_size: int | tuple[int, int] | None = None,
                 rank: int | None = None, world_size: int | None = None, batch_size: int | None = None,
                 drop_last: bool = False, window: int = 4096, max_consecutive_errors: int = 32,
                 balance_by: str | None = None, cap: int | None = None):
        if decode not in (None, "cpu"):
            raise ValueError(f"decode must be None or 'cpu', got {decode!r}")
        if decode == "cpu" and batch_size is not None and image_size is None:
            raise ValueError("batching decoded images needs image_size (one tensor shape per batch)")
        self.mix = Mix.of(data, seed=seed, balance_by=balance_by, cap=cap)
        self.shuffle, self.seed, self.decode, self.image_size = shuffle, seed, decode, image_size
        self.batch_size, self.drop_last, self.window = batch_size, drop_last, window
        self.max_consecutive_errors = max_consecutive_errors
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
        self._progress = SharedProgress()  # what the main process and every worker see
        self._loaded: tuple[int, int] | None = None  # a state loaded inside a worker, for that worker only

    # -- state ---------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """The next pass reads epoch ``epoch`` from its beginning (a new permutation of every source),
        also in DataLoader workers that persist. Without it, a pass that follows a pass read to its
        end reads the next epoch, whatever ``num_workers``."""
        self._restart(int(epoch), 0)

    @property
    def skipped(self) -> int:
        """Samples skipped so far, counted across the main process and every worker."""
        return self._progress.skipped

    def _restart(self, epoch: int, position: int) -> None:
        self.epoch, self.position = epoch, position
        if get_worker_info() is None:
            self._progress.restart(epoch, position)
        else:  # StatefulDataLoader restores each worker's own state inside that worker
            self._loaded = (epoch, position)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("world_size", self.world_size) != self.world_size:
            raise ValueError(f"state from seed {state.get('seed')} / world {state.get('world_size')} cannot resume "
                             f"seed {self.seed} / world {self.world_size}")
        self._restart(int(state["epoch"]), int(state["position"]))

    # -- iteration -----------------------------------------------------------------------------

    def plan(self):
        return self.mix.plan(epoch=self.epoch, world_size=self.world_size, batch_size=self.batch_size or 1,
                             shuffle=self.shuffle, window=self.window, drop_last=self.drop_last, seed=self.seed)

    def __len__(self) -> int:
        """Batches (or samples, without batch_size) this rank gets per epoch."""
        n = self.plan().batches_per_rank
        if n < 0:
            raise TypeError("an endless Mix has no length")
        return n

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        generation, self.epoch, self.position = self._progress.begin(workers)
        if self._loaded is not None:
            (self.epoch, self.position), self._loaded = self._loaded, None
        plan = self.plan()
        consecutive = 0
        for t in plan.worker_batches(self.rank, worker, workers, start=self.position):
            sources, indices = plan.batch(self.rank, t)
            samples = []
            for k, i in zip(sources.tolist(), indices.tolist()):
                sample = self._load(k, i)
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
                yield self._collate(samples)
        self._progress.finish(generation)

    def _load(self, k: int, i: int) -> dict[str, Any] | None:
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
        if self.decode == "cpu":
            try:
                sample["image"] = decode_image(sample["image"], self.image_size)
            except Exception as e:
                return self._skip(sample.get("key"), f"image does not decode: {type(e).__name__}: {e}")
        return sample

    def _skip(self, key: Any, why: str) -> None:
        self._progress.add_skipped()
        log.warning("vldata: skipping sample %s: %s", key, why)
        return None

    def _collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        images = [s["image"] for s in samples]
        batch = {
            "text": [s.get("text", "") for s in samples],
            "key": [s["key"] for s in samples],
            "source": [s["source"] for s in samples],
        }
        if self.decode == "cpu":
            batch["image"] = collate_images(images)
        else:  # encoded bytes as one flat uint8 tensor (one shared-memory block per batch) + lengths
            batch["image"] = torch.frombuffer(bytearray(b"".join(images)), dtype=torch.uint8) \
                if any(images) else torch.empty(0, dtype=torch.uint8)
            batch["image_sizes"] = torch.tensor([len(b) for b in images], dtype=torch.int64)
        return batch
