"""Several sources mixed by weight: a thin description that hands out plans and samples.

A ``Mix`` owns no order of its own: ``plan(...)`` returns the pure ``Plan`` for an epoch, and
``sample(k, i)`` reads sample i of source k and tags it with the source's name (``source``), which
training code can use for prefix conditioning of the text encoder. A single ``Source`` is a Mix of
one. Weights are exact rationals (``plan.rational_weights``).
"""

from __future__ import annotations

from typing import Any

from .plan import Plan, Stop
from .source import Source


class Mix:
    def __init__(self, sources: dict[str, Source], weights: dict[str, float] | None = None, seed: int = 0,
                 stop: Stop = "first_exhausted"):
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
        self.plan()  # validate weights, sizes and stop rule now rather than in a worker

    @classmethod
    def of(cls, data: Source | Mix, seed: int = 0) -> Mix:
        return data if isinstance(data, Mix) else cls({data.name: data}, seed=seed)

    def plan(self, epoch: int = 0, world_size: int = 1, batch_size: int = 1, shuffle: bool = True,
             window: int = 4096, drop_last: bool = False, seed: int | None = None) -> Plan:
        return Plan(shard_sizes=tuple(s.shard_sizes for s in self.sources), weights=self.weights,
                    seed=self.seed if seed is None else seed, epoch=epoch, stop=self.stop, world_size=world_size,
                    batch_size=batch_size, shuffle=shuffle, window=window, drop_last=drop_last)

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
