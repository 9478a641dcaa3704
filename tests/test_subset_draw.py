"""MetaCLIP's balancing draw (``read.subset.metaclip_keep``) against its definition: an entry matched
by ``count`` captions keeps each of them with p = min(1, t / count); a caption matching several
entries is kept with 1 - prod(1 - p); the draw is a function of its seed alone."""

from __future__ import annotations

import numpy as np

from vldata.read.subset import Picks, entry_probabilities, metaclip_keep


def _matches(per_caption: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in per_caption])]).astype(np.int64)
    ids = np.array([e for m in per_caption for e in m], dtype=np.int64)
    return offsets, ids


def within(kept: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(kept - n * p) <= sigmas * np.sqrt(n * p * (1 - p)) + 1e-9


# entry 0: the head (8,000 captions); 1: 3,000; 2: 600 (under t); 3 is matched together with 0 and 1
CAPTIONS = [[0]] * 6000 + [[1]] * 2000 + [[2]] * 600 + [[0, 1]] * 1000 + [[0, 1, 3]] * 1000 + [[]] * 400
T = 1000.0


def test_kept_fractions_follow_min_1_t_over_count_within_binomial_bounds():
    offsets, ids = _matches(CAPTIONS)
    counts = np.bincount(ids, minlength=4)
    assert counts.tolist() == [8000, 4000, 600, 1000]
    p = entry_probabilities(counts, T)
    assert np.allclose(p, [1000 / 8000, 1000 / 4000, 1.0, 1.0])
    keep = metaclip_keep(offsets, ids, counts, T, [7])
    groups = {"head": slice(0, 6000), "second": slice(6000, 8000), "rare": slice(8000, 8600),
              "pair": slice(8600, 9600), "with_rare": slice(9600, 10600), "none": slice(10600, 11000)}
    expected = {"head": p[0], "second": p[1], "rare": 1.0, "pair": 1 - (1 - p[0]) * (1 - p[1]),
                "with_rare": 1.0, "none": 0.0}
    for name, where in groups.items():
        n = where.stop - where.start
        kept = int(keep[where].sum())
        assert within(kept, n, expected[name]), (name, kept, n, expected[name])
    assert keep[groups["rare"]].all() and not keep[groups["none"]].any()


def test_over_ten_thousand_seeds_each_caption_is_kept_at_its_probability():
    per_caption = [[0], [1], [0, 1], [2]]
    offsets, ids = _matches(per_caption)
    counts = np.array([4000, 2000, 10], dtype=np.int64)
    p = entry_probabilities(counts, T)
    expected = [p[0], p[1], 1 - (1 - p[0]) * (1 - p[1]), 1.0]
    kept = np.zeros(4, dtype=np.int64)
    for seed in range(10_000):
        kept += metaclip_keep(offsets, ids, counts, T, [seed])
    for k, e in zip(kept, expected):
        assert within(int(k), 10_000, e), (kept, expected)


def test_same_seed_same_draw_and_online_epochs_differ_within_bounds():
    offsets, ids = _matches(CAPTIONS)
    counts = np.bincount(ids, minlength=4)
    a, b = metaclip_keep(offsets, ids, counts, T, [1, 2]), metaclip_keep(offsets, ids, counts, T, [1, 2])
    assert np.array_equal(a, b) and not np.array_equal(a, metaclip_keep(offsets, ids, counts, T, [1, 3]))
    picks = Picks("online", np.arange(len(CAPTIONS), dtype=np.int64), offsets, ids, counts, T, seed=4, online=True)
    draws = [picks.drawn(epoch, seed=0) for epoch in range(3)]
    assert all(not np.array_equal(draws[0], d) for d in draws[1:])
    assert np.array_equal(draws[1], picks.drawn(1, seed=0))  # reproducible: a pure function of the seeds
    for d in draws:
        head = np.count_nonzero(d < 6000)
        assert within(head, 6000, T / 8000)
    assert Picks("fixed", np.arange(3, dtype=np.int64)).drawn(0, 0) is None
