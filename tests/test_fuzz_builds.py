"""Every builder survives seeded corruptions of its sample input (tests/fuzz_raw.py): exit 0 with
exact accounting, or exit 2 with one line; no traceback, no hang, peak RSS under 1 GB, and no row
that only the engine's last resort could count. ``make fuzz N=200`` runs many more."""

from __future__ import annotations

import pytest

from fuzz_raw import BUILDERS, run_case, write_samples

PER_BUILDER = 20  # the suite's share (about 2.5 min); make fuzz runs as many as asked


@pytest.fixture(scope="session")
def samples(tmp_path_factory):
    return write_samples(tmp_path_factory.mktemp("fuzz_samples"))


@pytest.mark.parametrize("seed", range(PER_BUILDER))
@pytest.mark.parametrize("builder", BUILDERS)
def test_a_corrupted_sample_builds_or_stops_with_one_line(samples, tmp_path, builder, seed):
    outcome = run_case(builder, samples[builder], seed, tmp_path)
    assert outcome.problem is None, (
        f"{builder} --seed {seed}: {outcome.problem} [{'; '.join(outcome.what)}] "
        f"(replay: python tests/fuzz_raw.py --builder {builder} --seed {seed})")
