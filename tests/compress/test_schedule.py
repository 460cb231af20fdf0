"""Tests of shrinkssm.compress.schedule."""

import pytest

from shrinkssm.compress import ReductionSchedule


def test_equidistant_matches_published_default():
    # 4 points within the first 10% of 200k steps (the published sMNIST schedule).
    assert ReductionSchedule.equidistant(200_000).steps == (5_000, 10_000, 15_000, 20_000)


def test_equidistant_points_are_inside_the_window_and_distinct():
    s = ReductionSchedule.equidistant(1000, n_points=7, window=0.3)
    assert len(s) == 7
    assert all(1 <= step <= 300 for step in s.steps)
    assert list(s.steps) == sorted(set(s.steps))


def test_explicit_steps_are_sorted_and_deduplicated():
    s = ReductionSchedule.at([30, 10, 30, 20])
    assert s.steps == (10, 20, 30)
    assert s.is_due(20) and not s.is_due(21)
    assert s.remaining(10) == (20, 30)


@pytest.mark.parametrize("kwargs, match", [
    (dict(total_steps=0), "total_steps"),
    (dict(total_steps=100, n_points=-1), "n_points"),
    (dict(total_steps=100, window=0.0), "window"),
    (dict(total_steps=100, window=1.5), "window"),
    (dict(total_steps=20, n_points=4, window=0.1), "do not fit"),
])
def test_bad_schedules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReductionSchedule.equidistant(**kwargs)


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match=">= 1"):
        ReductionSchedule.at([0, 5])


def test_zero_points_is_an_empty_schedule():
    assert len(ReductionSchedule.equidistant(100, n_points=0)) == 0


def test_a_run_schedule_follows_mode_and_explicit_steps():
    assert ReductionSchedule.for_run(1000, 4, 0.1).steps == (25, 50, 75, 100)
    assert ReductionSchedule.for_run(1000, 4, 0.1, steps=[7, 3]).steps == (3, 7)
    # the uncompressed baseline has no points, even where the window could not hold them
    assert ReductionSchedule.for_run(10, 4, 0.1, mode="none").steps == ()
    assert ReductionSchedule.for_run(1000, 4, 0.1, steps=[5], mode="none").steps == ()


def test_described_schedule_checks_every_2000_steps_in_the_first_10_percent():
    assert ReductionSchedule.described(200_000, 2_000, 0.1).steps == tuple(range(2_000, 20_001, 2_000))
    assert ReductionSchedule.described(180_000, 2_000, 0.1).steps == tuple(range(2_000, 18_001, 2_000))
    # the defaults follow the run's length: T/100 between checks
    assert ReductionSchedule.described(200_000).steps == tuple(range(2_000, 20_001, 2_000))
    assert ReductionSchedule.described(30_000).steps == tuple(range(300, 3_001, 300))


def test_published_schedule_reduces_only_where_its_evaluation_branch_runs():
    # checks every 2,000 steps inside an evaluation branch that runs every 5,000: 10k and 20k
    assert ReductionSchedule.published(200_000, 2_000, 5_000, 0.1).steps == (10_000, 20_000)
    assert ReductionSchedule.published(200_000).steps == (10_000, 20_000)
    # the published sCIFAR setting: lcm(2000, 4500) = 18000, the end of its window
    assert ReductionSchedule.published(180_000, 2_000, 4_500, 0.1).steps == (18_000,)
    # brute force: every step in the window that both cadences hit
    for T, c, e, w in [(1_000, 30, 45, 0.3), (777, 7, 3, 0.5), (100, 200, 5, 1.0)]:
        expected = tuple(s for s in range(1, int(w * T) + 1) if s % c == 0 and s % e == 0)
        assert ReductionSchedule.published(T, c, e, w).steps == expected


def test_a_run_schedule_by_name():
    assert ReductionSchedule.for_run(200_000, schedule="published").steps == (10_000, 20_000)
    assert ReductionSchedule.for_run(200_000, schedule="described").steps[:2] == (2_000, 4_000)
    assert ReductionSchedule.for_run(200_000, schedule="published", mode="none").steps == ()
    with pytest.raises(ValueError, match="unknown schedule 'paper'; valid: equidistant, described, published"):
        ReductionSchedule.for_run(1000, schedule="paper")
    with pytest.raises(ValueError, match="check_every must be >= 1"):
        ReductionSchedule.described(1000, 0)
