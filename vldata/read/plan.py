"""The sample order as a pure function: mixing, shuffling, and the split across ranks and workers.

Nothing here reads data or imports torch. Given the sources' shard sizes, their weights, a seed, the
epoch, the stop rule, the world size and the batch size, a ``Plan`` answers: which (source, sample)
is at global position g, how long the epoch is, and which positions rank r's batch t holds.

Mixing is exact: weights become integers ``a_k`` summing to a period ``P`` (exact rationals, see
``rational_weights``); within each period the sources are interleaved by the quota method
(earliest lower-quota deadline among sources still under their upper quota), which keeps every
source's count within one sample of ``weight × n`` in every prefix; whole periods repeat, so
position g is found in O(1) and resuming anywhere costs nothing. Each source's own order is a fresh
permutation per pass (seeded by seed, epoch, source and pass) with bounded locality: shards in a
random order, then samples shuffled within windows, so reads stay mostly sequential.
This module must stay pure: numpy only, no files, no torch, no randomness outside the seeds it is
given.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Literal

import numpy as np

Stop = Literal["never", "first_exhausted", "all_exhausted"]
MAX_PERIOD = 100_000
INFINITE = -1


def rational_weights(weights: list[float], max_period: int = MAX_PERIOD) -> list[int]:
    """Integer weights proportional to ``weights`` (as exact rationals: 0.7/0.3 -> 7/3), with a sum
    no larger than ``max_period``. Zero weights stay zero."""
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    total = sum(Fraction(w) for w in weights)
    denominator = 1_000_000
    while True:
        fracs = [(Fraction(w) / total).limit_denominator(denominator) for w in weights]
        lcm = 1
        for f in fracs:
            lcm = lcm * f.denominator // np.gcd(lcm, f.denominator)
        ints = [int(f * lcm) for f in fracs]
        g = int(np.gcd.reduce(np.array([i for i in ints if i] or [1], dtype=np.int64)))
        ints = [i // g for i in ints]
        if sum(ints) <= max_period or denominator == 1:
            if sum(ints) == 0:
                raise ValueError(f"weights too small to represent: {weights}")
            return ints
        denominator //= 10


@lru_cache(maxsize=64)
def period_schedule(a: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One period of the quota interleaving of integer weights ``a``: (source at each step, how many
    earlier steps of the period chose that source)."""
    P, K = sum(a), len(a)
    counts = [0] * K
    seq = np.empty(P, dtype=np.int32)
    occ = np.empty(P, dtype=np.int64)
    # deadline of source k's next sample: the first t at which floor(a_k t / P) exceeds its count
    heap = [(Fraction(P, a[k]), k) for k in range(K) if a[k] > 0]
    heapq.heapify(heap)
    waiting: list[tuple[Fraction, int]] = []
    for t in range(1, P + 1):
        # a source may take step t only if that keeps it within its upper quota ceil(a_k t / P)
        chosen = None
        while heap:
            d, k = heapq.heappop(heap)
            if (counts[k] + 1) * P <= a[k] * t + P - 1:
                chosen = (d, k)
                break
            waiting.append((d, k))
        if chosen is None:  # cannot happen for a quota schedule; guard against silent drift
            raise AssertionError(f"quota schedule stuck at step {t} for weights {a}")
        for item in waiting:
            heapq.heappush(heap, item)
        waiting.clear()
        _, k = chosen
        seq[t - 1], occ[t - 1] = k, counts[k]
        counts[k] += 1
        heapq.heappush(heap, (Fraction((counts[k] + 1) * P, a[k]), k))
    return seq, occ


@lru_cache(maxsize=32)
def local_order(shard_sizes: tuple[int, ...], seed: int, epoch: int, source: int, pass_: int,
                window: int, shuffle: bool) -> np.ndarray:
    """A permutation of one source's samples: shards (or the blocks a reader reads whole: parquet row
    groups) in a random order, then samples shuffled within consecutive windows of ``window``
    (bounded locality); identity when not shuffling."""
    n = int(sum(shard_sizes))
    if not shuffle:
        idx = np.arange(n, dtype=np.int64)
        idx.setflags(write=False)
        return idx
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, source, pass_]))
    starts = np.concatenate([[0], np.cumsum(shard_sizes)[:-1]]).astype(np.int64)
    order = rng.permutation(len(shard_sizes))
    idx = np.concatenate([np.arange(starts[s], starts[s] + shard_sizes[s], dtype=np.int64) for s in order]) \
        if n else np.zeros(0, dtype=np.int64)
    if window > 1 and n > 1:
        keys = np.arange(n) // window + rng.random(n)
        idx = idx[np.argsort(keys, kind="stable")]
    idx.setflags(write=False)  # cached and shared
    return idx


@dataclass(frozen=True)
class Plan:
    """The global order of one epoch and its split into ranks' batches.

    ``shard_sizes[k]`` are source k's shard sample counts; ``batch_size`` is per rank; a global step
    consumes ``world_size * batch_size`` consecutive positions, rank r taking the r-th block.
    ``drop_last`` drops the epoch's incomplete last step; otherwise it is padded with positions from
    the start of what the plan hands out (counted in ``padding``). With ``stop="never"`` the epoch is
    endless. ``start`` > 0 hands out only positions ``start..`` of the epoch: the rest of an epoch
    whose first ``start`` positions were consumed under another world size or batch size (elastic
    resume); the batch numbers ``t`` then count from that point.
    """

    shard_sizes: tuple[tuple[int, ...], ...]
    weights: tuple[float, ...] = ()
    seed: int = 0
    epoch: int = 0
    stop: Stop = "first_exhausted"
    world_size: int = 1
    batch_size: int = 1
    shuffle: bool = True
    window: int = 4096
    drop_last: bool = False
    start: int = 0
    # per source: the shuffle window (None: ``window`` for all), so that a source read by blocks
    # (parquet row groups) keeps each window within the few blocks its reader holds
    windows: tuple[int, ...] | None = None
    # per source: the sorted global indices this epoch may use (balanced sampling), or None for all
    subsets: tuple[np.ndarray | None, ...] | None = field(default=None, compare=False, repr=False)
    int_weights: tuple[int, ...] = field(init=False)
    sizes: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.stop not in ("never", "first_exhausted", "all_exhausted"):
            raise ValueError(f"stop must be never, first_exhausted or all_exhausted, got {self.stop!r}")
        if self.world_size < 1 or self.batch_size < 1:
            raise ValueError("world_size and batch_size must be >= 1")
        weights = self.weights or tuple(1.0 for _ in self.shard_sizes)
        if len(weights) != len(self.shard_sizes):
            raise ValueError("one weight per source")
        subsets = self.subsets or (None,) * len(self.shard_sizes)
        if len(subsets) != len(self.shard_sizes):
            raise ValueError("one subset (or None) per source")
        if self.windows is not None and len(self.windows) != len(self.shard_sizes):
            raise ValueError("one window per source")
        sizes = tuple(int(sum(s)) if sub is None else len(sub) for s, sub in zip(self.shard_sizes, subsets))
        ints = rational_weights(list(weights))
        for k, (w, n) in enumerate(zip(ints, sizes)):
            if w > 0 and n == 0:
                raise ValueError(f"source {k} has weight but no samples")
        object.__setattr__(self, "int_weights", tuple(ints))
        object.__setattr__(self, "sizes", sizes)
        L = self.epoch_length
        if self.start < 0 or (L != INFINITE and self.start > L):
            raise ValueError(f"start {self.start} outside the epoch of {L} positions")

    # -- the global stream -------------------------------------------------------------------

    @property
    def period(self) -> int:
        return sum(self.int_weights)

    def counts_before(self, g: int) -> np.ndarray:
        """How many samples of each source the first ``g`` positions hold."""
        seq, occ = period_schedule(self.int_weights)
        q, r = divmod(g, self.period)
        counts = np.array(self.int_weights, dtype=np.int64) * q
        if r:
            counts += np.bincount(seq[:r], minlength=len(self.int_weights))
        return counts

    def _position_of(self, k: int, m: int) -> int:
        """Global position of source k's m-th sample (0-based)."""
        seq, occ = period_schedule(self.int_weights)
        q, within = divmod(m, self.int_weights[k])
        steps = np.flatnonzero(seq == k)
        return q * self.period + int(steps[within])

    @property
    def epoch_length(self) -> int:
        """Positions in one epoch (``INFINITE`` for stop="never")."""
        if self.stop == "never":
            return INFINITE
        ends = [self._position_of(k, n - 1) + 1 for k, n in enumerate(self.sizes) if self.int_weights[k] > 0]
        if self.stop == "first_exhausted":
            # positions before the first source would need a sample it no longer has
            return min(self._position_of(k, n) for k, n in enumerate(self.sizes) if self.int_weights[k] > 0)
        return max(ends)

    def sources_at(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, sample index within that source) of each global position."""
        positions = np.asarray(positions, dtype=np.int64)
        seq, occ = period_schedule(self.int_weights)
        q, r = np.divmod(positions, self.period)
        src = seq[r]
        j = q * np.array(self.int_weights, dtype=np.int64)[src] + occ[r]  # per-source draw number
        idx = np.empty_like(j)
        for k in np.unique(src):
            mask = src == k
            n = self.sizes[k]
            passes, within = np.divmod(j[mask], n)
            out = np.empty(mask.sum(), dtype=np.int64)
            sub = self.subsets[k] if self.subsets else None
            shard_sizes = self.shard_sizes[k] if sub is None else self._subset_shard_sizes(int(k))
            for p in np.unique(passes):
                pm = passes == p
                window = self.windows[k] if self.windows else self.window
                out[pm] = local_order(shard_sizes, self.seed, self.epoch, int(k), int(p),
                                      window, self.shuffle)[within[pm]]
            idx[mask] = out if sub is None else sub[out]
        return src, idx

    def _subset_shard_sizes(self, k: int) -> tuple[int, ...]:
        """How many of source k's subset fall in each of its shards (keeps reads shard-local)."""
        bounds = np.cumsum(self.shard_sizes[k])
        shard_of = np.searchsorted(bounds, self.subsets[k], side="right")
        return tuple(int(c) for c in np.bincount(shard_of, minlength=len(bounds)))

    # -- ranks and batches --------------------------------------------------------------------

    @property
    def step_size(self) -> int:
        return self.world_size * self.batch_size

    @property
    def batches_per_rank(self) -> int:
        """Batches each rank gets this epoch (all ranks the same; ``INFINITE`` when endless)."""
        n = self.remaining
        if n == INFINITE:
            return INFINITE
        return n // self.step_size if self.drop_last else -(-n // self.step_size)

    @property
    def remaining(self) -> int:
        """Positions this plan hands out: the epoch from ``start`` on (``INFINITE`` when endless)."""
        L = self.epoch_length
        return INFINITE if L == INFINITE else L - self.start

    @property
    def padding(self) -> int:
        """Positions repeated to fill the last step (0 with drop_last or an exact fit)."""
        nb = self.batches_per_rank
        return 0 if nb == INFINITE else max(0, nb * self.step_size - self.remaining)

    @property
    def dropped(self) -> int:
        nb = self.batches_per_rank
        return 0 if nb == INFINITE else max(0, self.remaining - nb * self.step_size)

    def batch_positions(self, rank: int, t: int) -> np.ndarray:
        """Global positions of rank ``rank``'s batch ``t`` (padding wraps to ``start``)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world of {self.world_size}")
        first = t * self.step_size + rank * self.batch_size
        pos = np.arange(first, first + self.batch_size, dtype=np.int64)
        n = self.remaining
        return self.start + (pos if n == INFINITE else pos % max(n, 1))

    def batch(self, rank: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, index within source) of each sample of rank ``rank``'s batch ``t``."""
        return self.sources_at(self.batch_positions(rank, t))

    def worker_batches(self, rank: int, worker: int, num_workers: int, start: int = 0):
        """Batch numbers worker ``worker`` of ``num_workers`` produces, from the first one >= start.
        DataLoader takes batches from its workers round-robin, so this keeps the rank's order."""
        num_workers = max(1, num_workers)
        t = start + (worker - start) % num_workers
        nb = self.batches_per_rank
        while nb == INFINITE or t < nb:
            yield t
            t += num_workers

    def summary(self) -> dict:
        return {"sizes": list(self.sizes), "int_weights": list(self.int_weights), "period": self.period,
                "epoch_length": self.epoch_length, "start": self.start, "batches_per_rank": self.batches_per_rank,
                "padding": self.padding, "dropped": self.dropped}
