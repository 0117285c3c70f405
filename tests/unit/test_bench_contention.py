"""The contention bench's check that no acknowledged increment was lost."""

from dds.tools.bench.contention import lost_increments


def test_counters_that_grew_by_their_acknowledged_increments_lost_nothing() -> None:
    assert lost_increments({"0": 5, "1": 0}, {"0": 8, "1": 2}, {"0": 3, "1": 2}, 0) == 0


def test_a_counter_short_of_its_acknowledged_increments_lost_the_difference() -> None:
    assert lost_increments({"0": 5}, {"0": 6}, {"0": 3}, 0) == 2


def test_growth_beyond_acknowledged_is_allowed_up_to_the_unknown_outcomes() -> None:
    assert lost_increments({"0": 0}, {"0": 4}, {"0": 3}, 1) == 0


def test_growth_beyond_acknowledged_and_unknown_outcomes_counts_as_lost() -> None:
    # One increment applied twice (or one from nowhere) hides one that was lost.
    assert lost_increments({"0": 0}, {"0": 5}, {"0": 3}, 1) == 1


def test_a_counter_that_went_back_loses_every_acknowledged_increment_and_more() -> None:
    assert lost_increments({"0": 10}, {"0": 9}, {"0": 2}, 0) == 3
