"""Charging write gaps and read latency to the one fault on a key (tests/faults/gaps.py)."""

from __future__ import annotations

from tests.faults.gaps import FaultWindow, single_fault_costs, summary_by_kind, write_gaps
from tests.verify.history import Op

RG_A = frozenset({"b0", "b1", "b2"})
RG_B = frozenset({"b3", "b4", "b5"})
MEMBERS = {b"a": RG_A, b"b": RG_B, b"c": RG_A}


def write(key: bytes, done: float) -> Op:
    return Op(0, "put", key, b"v", None, done - 0.01, done, "ok", None, 1, None)


def get(key: bytes, invoked: float, latency: float) -> Op:
    return Op(0, "get", key, None, None, invoked, invoked + latency, "ok", b"v", 1, None)


def kill(index: int, brick: str, start: float, end: float) -> FaultWindow:
    return FaultWindow(index, "kill", start, end, frozenset({brick}))


def test_write_gaps_are_between_successive_successful_writes_of_one_key() -> None:
    ops = [write(b"a", 1.0), write(b"b", 1.5), write(b"a", 3.0), write(b"a", 3.5)]
    assert write_gaps(ops) == {b"a": [(1.0, 3.0), (3.0, 3.5)], b"b": []}


def test_a_gap_of_a_key_in_the_faulted_bricks_group_is_charged_to_the_fault() -> None:
    ops = [write(b"a", 1.0), write(b"a", 2.8), write(b"a", 3.0)]
    [cost] = single_fault_costs(ops, [kill(0, "b1", 1.5, 2.5)], MEMBERS)
    assert abs(cost.write_gap_s - 1.8) < 1e-9


def test_a_fault_on_another_group_is_not_charged_with_the_gap() -> None:
    ops = [write(b"b", 1.0), write(b"b", 2.8)]
    assert single_fault_costs(ops, [kill(0, "b1", 1.5, 2.5)], MEMBERS) == []


def test_a_gap_two_faults_on_its_key_overlap_is_charged_to_neither() -> None:
    ops = [write(b"a", 1.0), write(b"a", 9.0)]
    wins = [kill(0, "b0", 2.0, 5.0), kill(1, "b1", 4.0, 6.0)]
    assert single_fault_costs(ops, wins, MEMBERS) == []


def test_stacked_faults_on_separate_groups_are_each_measured_alone() -> None:
    ops = [write(b"a", 1.0), write(b"a", 3.0), write(b"b", 1.0), write(b"b", 5.0)]
    wins = [kill(0, "b0", 2.0, 4.0), kill(1, "b4", 2.0, 4.0)]
    costs = {c.window.index: c.write_gap_s for c in single_fault_costs(ops, wins, MEMBERS)}
    assert costs == {0: 2.0, 1: 4.0}


def test_a_network_partition_touches_every_key() -> None:
    ops = [write(b"b", 1.0), write(b"b", 3.0)]
    part = FaultWindow(0, "partition", 1.5, 2.5, frozenset({"b0"}))
    [cost] = single_fault_costs(ops, [part], MEMBERS)
    assert cost.write_gap_s == 2.0


def test_reads_of_its_keys_during_a_fault_give_its_read_p99() -> None:
    ops = ([write(b"a", 1.0), write(b"a", 1.2)] + [get(b"a", 1.1, 0.002)] * 99
           + [get(b"a", 1.2, 0.5), get(b"b", 1.3, 3.0), get(b"a", 9.0, 3.0)])
    [cost] = single_fault_costs(ops, [kill(0, "b2", 1.0, 2.0)], MEMBERS)
    assert cost.read_p99_s == 0.5


def test_summary_by_kind_gives_median_and_longest_gap() -> None:
    ops = [write(b"a", 0.0), write(b"a", 1.0), write(b"a", 10.0), write(b"a", 13.0),
           write(b"c", 20.0), write(b"c", 22.0)]
    wins = [kill(0, "b0", 0.5, 0.9), kill(1, "b0", 11.0, 12.0), kill(2, "b0", 21.0, 21.5)]
    s = summary_by_kind(single_fault_costs(ops, wins, MEMBERS))
    assert s["kill"]["n"] == 3
    assert s["kill"]["gap_max_ms"] == 3000.0 and s["kill"]["gap_median_ms"] == 2000.0
