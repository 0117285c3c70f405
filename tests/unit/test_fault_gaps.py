"""Charging write gaps and read latency to faults that ran alone (tests/faults/gaps.py)."""

from __future__ import annotations

from tests.faults.gaps import FaultWindow, single_fault_costs, summary_by_kind, write_gaps
from tests.verify.history import Op


def write(key: bytes, done: float) -> Op:
    return Op(0, "put", key, b"v", None, done - 0.01, done, "ok", None, 1, None)


def get(invoked: float, latency: float) -> Op:
    return Op(0, "get", b"k", None, None, invoked, invoked + latency, "ok", b"v", 1, None)


def test_write_gaps_are_between_successive_successful_writes_of_one_key() -> None:
    ops = [write(b"a", 1.0), write(b"b", 1.5), write(b"a", 3.0), write(b"a", 3.5)]
    assert sorted(write_gaps(ops)) == [(1.0, 3.0), (3.0, 3.5)]


def test_a_gap_overlapping_a_lone_fault_is_charged_to_it() -> None:
    ops = [write(b"a", 1.0), write(b"a", 2.8), write(b"a", 3.0)]
    [cost] = single_fault_costs(ops, [FaultWindow(0, "kill", 1.5, 2.5)])
    assert abs(cost.write_gap_s - 1.8) < 1e-9


def test_overlapping_faults_are_not_single_and_cost_nothing_here() -> None:
    ops = [write(b"a", 1.0), write(b"a", 9.0)]
    wins = [FaultWindow(0, "kill", 2.0, 5.0), FaultWindow(1, "pause", 4.0, 6.0)]
    assert single_fault_costs(ops, wins) == []


def test_a_gap_spanning_two_separate_faults_is_charged_to_neither() -> None:
    ops = [write(b"a", 0.0), write(b"a", 10.0), write(b"b", 2.0), write(b"b", 2.5)]
    wins = [FaultWindow(0, "kill", 1.0, 3.0), FaultWindow(1, "pause", 6.0, 8.0)]
    costs = single_fault_costs(ops, wins)
    assert [c.write_gap_s for c in costs] == [0.5, 0.0]


def test_reads_during_a_fault_give_its_read_p99() -> None:
    ops = [get(1.1, 0.002)] * 99 + [get(1.2, 0.5), get(9.0, 3.0)]
    [cost] = single_fault_costs(ops, [FaultWindow(0, "pause", 1.0, 2.0)])
    assert cost.read_p99_s == 0.5


def test_summary_by_kind_gives_median_and_longest_gap() -> None:
    ops = [write(b"a", 0.0), write(b"a", 1.0), write(b"b", 10.0), write(b"b", 13.0),
           write(b"c", 20.0), write(b"c", 22.0)]
    wins = [FaultWindow(0, "kill", 0.5, 0.9), FaultWindow(1, "kill", 11.0, 12.0),
            FaultWindow(2, "kill", 21.0, 21.5)]
    s = summary_by_kind(single_fault_costs(ops, wins))
    assert s["kill"]["n"] == 3
    assert s["kill"]["gap_max_ms"] == 3000.0 and s["kill"]["gap_median_ms"] == 2000.0
