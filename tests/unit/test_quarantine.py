"""Replicas no record lists: quarantined, swept after the grace period, restored; and
which finished reorganizations let a brick drop a replica at once (issue 13)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from dds.bricks.quarantine import Quarantine, reorganized
from dds.bricks.storage import Storage
from dds.errors import InvalidRequest, Refused
from dds.maps import ClusterMap
from dds.metrics import Metrics
from dds.partition import PartitionId
from dds.records import Member, PartitionEntry, RGRecord

P = PartitionId.parse


class Wall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def storage(tmp_path: Path, clock: Clock) -> Iterator[Storage]:
    s = Storage(tmp_path, clock)
    s.open_partition("p1.0")
    s.write("p1.0", b"k", b"v", 1)
    clock.advance(0)
    yield s
    s.close()


def _quarantine(tmp_path: Path, storage: Storage, clock: Clock, wall: Wall,
                metrics: Metrics | None = None) -> Quarantine:
    return Quarantine(tmp_path, storage, clock, metrics or Metrics(), 3600.0, wall=wall)


def test_a_quarantined_replica_keeps_its_rows_out_of_the_brick(
        tmp_path: Path, storage: Storage, clock: Clock) -> None:
    metrics = Metrics()
    q = _quarantine(tmp_path, storage, clock, Wall(), metrics)
    dest = q.put("p1.0", "test")
    assert not storage.has_partition("p1.0")
    assert not (tmp_path / "p1.0.sqlite").exists()
    assert dest.exists() and dest.parent == tmp_path / "quarantine"
    assert [e["pid"] for e in q.status()] == ["p1.0"]
    assert metrics.snapshot()["replicas_quarantined_total"] == 1


def test_the_sweep_deletes_only_files_older_than_the_grace_period(
        tmp_path: Path, storage: Storage, clock: Clock) -> None:
    wall = Wall()
    q = _quarantine(tmp_path, storage, clock, wall)
    dest = q.put("p1.0", "test")
    wall.now += 3599
    assert q.sweep() == 0 and dest.exists()
    wall.now += 2
    assert q.sweep() == 1
    clock.advance(10)
    assert q.status() == [] and not dest.exists()


def test_a_restored_replica_is_served_with_its_rows(
        tmp_path: Path, storage: Storage, clock: Clock) -> None:
    q = _quarantine(tmp_path, storage, clock, Wall())
    q.put("p1.0", "test")
    reply = q.restore("p1.0", listed=True)
    assert reply["pid"] == "p1.0"
    assert storage.read("p1.0", b"k").value == b"v"
    assert q.status() == []


def test_restoring_a_partition_no_record_of_mine_lists_is_refused(
        tmp_path: Path, storage: Storage, clock: Clock) -> None:
    q = _quarantine(tmp_path, storage, clock, Wall())
    q.put("p1.0", "test")
    with pytest.raises(Refused, match="lists"):
        q.restore("p1.0", listed=False)
    with pytest.raises(InvalidRequest, match="no quarantined replica of p1.1"):
        q.restore("p1.1", listed=True)


def _rg(name: str, version: int, parts: dict[str, str],
        members: tuple[str, ...] = ("b1",)) -> RGRecord:
    return RGRecord(name, version, tuple(Member(m) for m in members),
                    [PartitionEntry(P(p), s) for p, s in parts.items()])


def test_a_finished_move_of_mine_accounts_for_the_source_replica() -> None:
    old = ClusterMap.of([_rg("rg0", 2, {"p1.0": "outgoing", "p1.1": "active"}),
                         _rg("rg1", 3, {"p1.0": "active"}, ("b2",))])
    new = old.merge([_rg("rg0", 3, {"p1.1": "active"})]).map
    assert reorganized(old, new, "b1", P("p1.0")) == "moved to rg1"


def test_a_record_that_merely_stops_listing_a_partition_accounts_for_nothing() -> None:
    old = ClusterMap.of([_rg("rg0", 1, {"p1.0": "active", "p1.1": "active"})])
    new = old.merge([_rg("rg0", 2, {"p1.1": "active"})]).map
    assert reorganized(old, new, "b1", P("p1.0")) is None
    assert reorganized(None, new, "b1", P("p1.0")) is None


def test_a_finished_split_accounts_for_its_source_but_a_forged_one_does_not() -> None:
    old = ClusterMap.of([_rg("rg0", 2, {"p1.0": "active", "p1.1": "active",
                                        "p2.0": "incoming", "p2.2": "incoming"})])
    split = {"p1.1": "active", "p2.0": "active", "p2.2": "active"}
    assert reorganized(old, old.merge([_rg("rg0", 3, split)]).map, "b1", P("p1.0"))
    forged_from = ClusterMap.of([_rg("rg0", 2, {"p1.0": "active", "p1.1": "active"})])
    assert reorganized(forged_from, forged_from.merge([_rg("rg0", 3, split)]).map, "b1",
                       P("p1.0")) is None


def test_a_finished_merge_accounts_for_its_sources() -> None:
    old = ClusterMap.of([_rg("rg0", 2, {"p2.0": "active", "p2.2": "active",
                                        "p1.1": "active", "p1.0": "incoming"})])
    new = old.merge([_rg("rg0", 3, {"p1.0": "active", "p1.1": "active"})]).map
    assert reorganized(old, new, "b1", P("p2.0"))
    assert reorganized(old, new, "b1", P("p2.2"))


def test_an_abandoned_incoming_copy_is_dropped() -> None:
    old = ClusterMap.of([_rg("rg1", 2, {"p1.0": "incoming"}),
                         _rg("rg0", 1, {"p1.0": "active", "p1.1": "active"}, ("b2",))])
    new = old.merge([_rg("rg1", 3, {})]).map
    assert reorganized(old, new, "b1", P("p1.0"))


def test_a_brick_removed_from_its_group_quarantines_its_replicas() -> None:
    old = ClusterMap.of([_rg("rg0", 1, {"p0.0": "active"}, ("b1", "b2"))])
    new = old.merge([_rg("rg0", 2, {"p0.0": "active"}, ("b2",))]).map
    assert reorganized(old, new, "b1", P("p0.0")) is None


def test_a_restored_replica_replaces_an_empty_one_but_never_a_written_one(
        tmp_path: Path, storage: Storage, clock: Clock) -> None:
    q = _quarantine(tmp_path, storage, clock, Wall())
    q.put("p1.0", "test")
    storage.open_partition("p1.0")              # re-listed: an empty replica
    q.restore("p1.0", listed=True)
    assert storage.read("p1.0", b"k").value == b"v"
    q.put("p1.0", "again")
    storage.open_partition("p1.0")
    storage.write("p1.0", b"other", b"w", 1)
    clock.advance(0)
    with pytest.raises(Refused, match="written replica"):
        q.restore("p1.0", listed=True)
