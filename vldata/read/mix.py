"""Several sources mixed by weight: a thin description that hands out plans and samples.

A ``Mix`` owns no order of its own: ``plan(...)`` returns the pure ``Plan`` for an epoch, and
``sample(k, i)`` reads sample i of source k and tags it with the source's name (``source``), which
training code can use for prefix conditioning of the text encoder. A single ``Source`` is a Mix of
one. Weights are exact rationals (``plan.rational_weights``). With ``balance_by=FIELD, cap=N`` each
epoch uses at most N samples of any value of FIELD (MetaCLIP-style), from values saved at build time; a
source opened on an online subset (``vldata select --metaclip ... --online``) brings its own draw per
epoch, which the cap then applies to.
It must not decide order itself (``read.plan`` does, as a pure function) nor open files beyond
asking its sources.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vldata.read.plan import Plan, Stop
from vldata.read.source import Source


class Mix:
    def __init__(self, sources: dict[str, Source], weights: dict[str, float] | None = None, seed: int = 0,
                 stop: Stop = "first_exhausted", balance_by: str | None = None, cap: int | None = None):
        if not sources:
            raise ValueError("a Mix needs at least one source")
        self.names = list(sources)
        self.sources = [sources[n] for n in self.names]
        weights = weights or {n: 1.0 for n in self.names}
        unknown = set(weights) - set(self.names)
        if unknown:
            raise ValueError(f"weights for unknown sources: {sorted(unknown)}")
        self.weights = tuple(float(weights.get(n, 0.0)) for n in self.names)
        self.seed, self.stop = seed, stop
        if (balance_by is None) != (cap is None) or (cap is not None and cap < 1):
            raise ValueError("balance_by and cap go together, with cap >= 1")
        self.balance_by, self.cap = balance_by, cap
        self._values: list | None = None
        self._subsets: dict[int, tuple] = {}
        self.plan()  # validate weights, sizes and stop rule now rather than in a worker

    @classmethod
    def of(cls, data: Source | Mix, seed: int = 0, balance_by: str | None = None, cap: int | None = None) -> Mix:
        if isinstance(data, Mix):
            if balance_by is not None:
                raise ValueError("give balance_by/cap to the Mix itself")
            return data
        return cls({data.name: data}, seed=seed, balance_by=balance_by, cap=cap)

    def subsets(self, epoch: int, seed: int) -> tuple | None:
        """Per source, the indices this epoch may use (None: all): an online subset's draw for the
        epoch, then, with ``balance_by``, for every value with more than ``cap`` of those samples a
        fresh random ``cap`` of them (MetaCLIP's per-entry cap), every sample of rarer values.
        Sources without the field keep everything they drew."""
        if (epoch, seed) not in self._subsets:
            drawn = [s.drawn(epoch, seed) for s in self.sources]
            if self.balance_by is None and all(d is None for d in drawn):
                return None
            if self.balance_by is not None and self._values is None:
                self._values = [_values_or_none(s, self.balance_by) for s in self.sources]
                if all(v is None for v in self._values):
                    self.sources[0].values(self.balance_by)  # raises KeyError naming what is there
            out = []
            for k, indices in enumerate(drawn):
                values = self._values[k] if self.balance_by is not None else None
                if values is None:
                    out.append(indices)
                    continue
                rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, k, 0xBA1A]))
                groups: dict = {}
                for i in range(len(values)) if indices is None else indices.tolist():
                    groups.setdefault(values[i], []).append(i)
                keep = []
                for v in sorted(groups, key=lambda v: (v is None, str(v))):
                    members = groups[v]
                    keep.extend(members if len(members) <= self.cap else rng.choice(members, self.cap, replace=False))
                out.append(np.sort(np.asarray(keep, dtype=np.int64)))
            self._subsets = {(epoch, seed): tuple(out)}  # one epoch at a time
        return self._subsets[(epoch, seed)]

    def plan(self, epoch: int = 0, world_size: int = 1, batch_size: int = 1, shuffle: bool = True,
             window: int = 4096, drop_last: bool = False, seed: int | None = None, start: int = 0) -> Plan:
        seed = self.seed if seed is None else seed
        # each source is shuffled by the blocks its reader reads whole (parquet row groups, tar
        # shards), its window no wider than what its reader keeps (a few row groups)
        return Plan(shard_sizes=tuple(s.block_sizes for s in self.sources), weights=self.weights,
                    seed=seed, epoch=epoch, stop=self.stop, world_size=world_size,
                    batch_size=batch_size, shuffle=shuffle, window=window, drop_last=drop_last,
                    start=start, subsets=self.subsets(epoch, seed),
                    windows=tuple(min(window, s.locality or window) for s in self.sources))

    def fingerprint(self) -> str:
        """What a saved position refers to: the sources (names, shard sizes), weights, stop rule and
        balancing. A state taken over another fingerprint cannot resume this Mix."""
        import hashlib
        import json

        what = [self.names, [list(s.shard_sizes) for s in self.sources], self.weights, self.stop,
                self.balance_by, self.cap]
        if any(s.identity is not None for s in self.sources):  # states saved without subsets stay valid
            what.append([s.identity for s in self.sources])
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def sample(self, k: int, i: int) -> dict[str, Any]:
        sample = self.sources[k][int(i)]
        sample["source"] = self.names[k]
        return sample

    def __len__(self) -> int:
        length = self.plan().epoch_length
        if length < 0:
            raise TypeError("an endless Mix (stop='never') has no length")
        return length

    def __getitem__(self, g: int) -> dict[str, Any]:
        k, i = self.plan().sources_at([g])
        return self.sample(int(k[0]), int(i[0]))


def _values_or_none(source: Source, field: str) -> list | None:
    try:
        return source.values(field)
    except KeyError:
        return None
