"""Property tests of the pure plan: exact mixing, coverage, disjoint slices, equal batch counts."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vldata.read.plan import Plan, period_schedule, rational_weights

shards = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=4).map(tuple)


@st.composite
def plans(draw, stop=None):
    k = draw(st.integers(1, 4))
    sizes = tuple(draw(shards) for _ in range(k))
    weights = tuple(draw(st.integers(1, 9)) / 10 for _ in range(k))
    return Plan(shard_sizes=sizes, weights=weights, seed=draw(st.integers(0, 2**31)), epoch=draw(st.integers(0, 3)),
                stop=stop or draw(st.sampled_from(["first_exhausted", "all_exhausted"])),
                world_size=draw(st.integers(1, 8)), batch_size=draw(st.integers(1, 9)),
                window=draw(st.integers(1, 16)), drop_last=draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=6).filter(lambda a: sum(a) > 0))
def test_quota_schedule_keeps_every_prefix_within_one(a):
    seq, occ = period_schedule(tuple(a))
    P = sum(a)
    counts = np.zeros(len(a), dtype=np.int64)
    for t, k in enumerate(seq, start=1):
        assert occ[t - 1] == counts[k]
        counts[k] += 1
        assert all(abs(Fraction(int(c)) - Fraction(a[j] * t, P)) < 1 for j, c in enumerate(counts))
    assert list(counts) == list(a)


@settings(max_examples=150, deadline=None)
@given(plans())
def test_mix_prefix_error_at_most_one_against_requested_weights(plan):
    L = plan.epoch_length
    src, _ = plan.sources_at(np.arange(L))
    total = sum(Fraction(w).limit_denominator(1000) for w in plan.weights)
    for k, w in enumerate(plan.weights):
        share = Fraction(w).limit_denominator(1000) / total
        running = np.cumsum(src == k)
        n = np.arange(1, L + 1)
        assert np.all(np.abs(running - n * float(share)) <= 1 + 1e-9)


@settings(max_examples=150, deadline=None)
@given(plans())
def test_epoch_coverage_under_each_stop_rule(plan):
    L = plan.epoch_length
    src, idx = plan.sources_at(np.arange(L))
    per_source = [idx[src == k] for k in range(len(plan.sizes))]
    exhausted = [len(set(v.tolist())) == plan.sizes[k] for k, v in enumerate(per_source)]
    if plan.stop == "first_exhausted":
        assert all(len(v) == len(set(v.tolist())) for v in per_source)  # nothing twice
        assert any(exhausted)  # the epoch ends when one source is used up
        # ... and not earlier: the next position would repeat a sample of an exhausted source
        k, i = plan.sources_at(np.array([L]))
        assert int(i[0]) in set(per_source[int(k[0])].tolist())
    else:
        assert all(exhausted)  # every sample of every source at least once
        for k, v in enumerate(per_source):  # and each sample at most one pass more than the others
            counts = np.bincount(v, minlength=plan.sizes[k])
            assert counts.max() - counts.min() <= 1


@settings(max_examples=150, deadline=None)
@given(plans(), st.integers(0, 4))
def test_ranks_and_workers_split_the_epoch_without_overlap(plan, workers):
    nb = plan.batches_per_rank
    seen = []
    for rank in range(plan.world_size):
        rank_batches = []
        for w in range(max(1, workers)):
            rank_batches += list(plan.worker_batches(rank, w, workers))
        assert sorted(rank_batches) == list(range(nb))  # every rank: the same nb batches, each once
        for t in range(nb):
            seen.extend(plan.batch_positions(rank, t).tolist())
    L = plan.epoch_length
    if plan.drop_last:
        assert len(seen) == len(set(seen)) == L - plan.dropped
    else:
        assert set(seen) == set(range(L)) and len(seen) == L + plan.padding
        assert plan.padding < plan.step_size


def test_order_is_deterministic_and_changes_with_epoch():
    a = Plan(shard_sizes=((50, 50),), seed=1, epoch=0, batch_size=10)
    b = Plan(shard_sizes=((50, 50),), seed=1, epoch=0, batch_size=10)
    c = Plan(shard_sizes=((50, 50),), seed=1, epoch=1, batch_size=10)
    assert np.array_equal(a.batch(0, 3)[1], b.batch(0, 3)[1])
    assert not np.array_equal(a.sources_at(np.arange(100))[1], c.sources_at(np.arange(100))[1])


def test_endless_mix_cycles_with_fresh_permutations_and_resumes_in_o1():
    plan = Plan(shard_sizes=((5,), (3,)), weights=(0.5, 0.5), stop="never", batch_size=4, seed=3)
    src, idx = plan.sources_at(np.arange(12))
    small = idx[src == 1]
    assert sorted(small[:3].tolist()) == [0, 1, 2] and sorted(small[3:6].tolist()) == [0, 1, 2]
    far = 10**12
    s, i = plan.sources_at(np.arange(far, far + 8))
    assert (s == 0).sum() == 4 and i.max() < 5


def test_rational_weights():
    assert rational_weights([0.7, 0.3]) == [7, 3]
    assert rational_weights([1, 1, 2]) == [1, 1, 2]
    assert rational_weights([0.5, 0.0]) == [1, 0]
    assert sum(rational_weights([1 / 3, 1 / 7, 0.123457])) <= 100_000


@settings(max_examples=150, deadline=None)
@given(plans(), st.integers(1, 8), st.integers(1, 9), st.integers(0, 50))
def test_the_rest_of_an_epoch_splits_over_another_world_exactly_once(plan, world, batch, steps):
    """Elastic resume: after ``steps`` global steps at plan's world, a plan that starts where they ended
    hands every remaining position out exactly once (apart from its own padding), equally per rank."""
    import dataclasses

    L = plan.epoch_length
    steps = min(steps, plan.batches_per_rank)
    consumed = {int(p) for t in range(steps) for r in range(plan.world_size) for p in plan.batch_positions(r, t)}
    start = min(steps * plan.step_size, L)
    rest = dataclasses.replace(plan, world_size=world, batch_size=batch, start=start, drop_last=False)
    got = [int(p) for r in range(world) for t in range(rest.batches_per_rank) for p in rest.batch_positions(r, t)]
    assert all(start <= p < L for p in got)
    assert consumed | set(got) == set(range(L))  # the epoch, and the rest exactly once:
    assert set(got) == set(range(start, L))
    assert len(got) - len(set(got)) == rest.padding
    assert rest.batches_per_rank == -(-(L - start) // rest.step_size)
