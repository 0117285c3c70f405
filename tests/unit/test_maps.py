"""Records, fingerprints and map merge."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dds.maps import ClusterMap
from dds.partition import PartitionId, initial_partitions
from dds.records import (BrickRecord, ClusterRecord, Member, PartitionEntry, RGRecord,
                         record_from_wire)


def _rg(version: int = 1, members: tuple[str, ...] = ("b1", "b2", "b3"),
        parts: int = 4) -> RGRecord:
    return RGRecord("rg0", version, tuple(Member(b) for b in members),
                    tuple(PartitionEntry(p) for p in initial_partitions(parts)))


def _map() -> ClusterMap:
    return ClusterMap.of([ClusterRecord("dds", 1, 3),
                          *(BrickRecord(f"b{i}", 1, "127.0.0.1", 7400 + i) for i in (1, 2, 3)),
                          _rg()])


FP_SCRIPT = """
from dds.records import *
from dds.partition import initial_partitions
r = RGRecord("rg0", 7, (Member("b1"), Member("b2", "recovering")),
             tuple(PartitionEntry(p, "active") for p in initial_partitions(8)))
print(r.fp)
"""


def test_fingerprints_are_stable_across_processes() -> None:
    outs = {subprocess.run([sys.executable, "-c", FP_SCRIPT], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": str(seed)}).stdout.strip()
            for seed in (1, 2, 3)}
    local = RGRecord("rg0", 7, (Member("b1"), Member("b2", "recovering")),
                     tuple(PartitionEntry(p, "active") for p in initial_partitions(8))).fp
    assert outs == {str(local)}


def test_fingerprint_changes_with_any_field() -> None:
    base = _rg()
    assert _rg(members=("b1", "b3", "b2")).fp != base.fp
    assert _rg(parts=8).fp != base.fp
    assert base.with_changes().fp != base.fp     # the version is part of the record


def test_partition_order_does_not_change_the_fingerprint() -> None:
    a = _rg()
    b = RGRecord("rg0", 1, a.members, tuple(reversed(a.partitions)))
    assert a.fp == b.fp


def test_records_round_trip_through_their_wire_form() -> None:
    for record in _map():
        assert record_from_wire(record.canonical()) == record


@pytest.mark.parametrize("bad", [["rg", "rg0"], ["zz", 1], ["rg", "rg0", 1, [["b1"]], []],
                                 ["rg", "rg0", 1, [["b1", "active"]], [["p3.99", "active"]]],
                                 ["brick", "b1", -1, "h", 1, ""], "not a list"])
def test_malformed_records_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="malformed record"):
        record_from_wire(bad)


def test_a_member_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        _rg(members=("b1", "b1", "b2"))


def test_merge_keeps_the_higher_version_per_record() -> None:
    m = _map()
    newer = _rg(version=2, members=("b1", "b2"))
    older_brick = BrickRecord("b1", 0, "10.0.0.1", 1)
    result = m.merge([newer, older_brick])
    assert result.adopted == (newer,)
    assert result.map.rgs["rg0"] == newer
    assert result.map.bricks["b1"].address == "127.0.0.1"
    assert result.map.fp != m.fp


def test_same_version_with_other_contents_is_a_conflict_not_adopted() -> None:
    m = _map()
    rogue = _rg(version=1, members=("b3", "b2", "b1"))
    result = m.merge([rogue])
    assert result.adopted == ()
    assert len(result.conflicts) == 1 and "divergent rg/rg0" in str(result.conflicts[0])
    assert result.map is m


def test_digest_comparison_says_what_to_send_and_what_to_want() -> None:
    mine = _map()
    theirs = mine.merge([_rg(version=3)]).map
    send, want = mine.newer_than(theirs.digest)
    assert send == [] and want == ["rg/rg0"]
    send, want = theirs.newer_than(mine.digest)
    assert [r.record_id for r in send] == ["rg/rg0"] and want == []


def test_routing_names_the_partition_and_its_replica_group() -> None:
    pid, rg = _map().route(b"a key")
    assert pid.owns(b"a key") and rg.name == "rg0"
    assert rg.serves(pid, "b2")


def test_a_partition_active_in_two_groups_is_a_map_error() -> None:
    other = RGRecord("rg1", 1, (Member("b1"),), (PartitionEntry(PartitionId(2, 0)),))
    with pytest.raises(ValueError, match="active in both"):
        _map().merge([other]).map.partition_rg
