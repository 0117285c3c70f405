"""``dr_apply`` and ``dr_marks`` on a DR site's brick (``bricks/drapply.py``, DESIGN §12):
rows written at their versions only over older copies, with their marks, in one
transaction the change stream sees; every refusal applies nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest
from twisted.internet.task import Clock

from dds.changepos import Position
from dds.drmsgs import DrApply, DrMarks
from dds.errors import (InvalidRequest, Locked, NotServing, Recovering, Refused,
                        ReplicaDamaged, StaleMap)
from dds.metrics import Metrics
from dds.partition import PartitionId
from dds.records import DRRecord, Member, PartitionEntry, RGRecord

from dds.bricks.drapply import DrApplier
from dds.bricks.locks import LockTable
from dds.bricks.mapstate import MapState
from dds.bricks.participant import Participant
from dds.bricks.partstore import PartitionStore
from dds.bricks.storage import Storage

from tests.unit.brickctx import brick_context

P = PartitionId(1, 0)
PRIMARY_P = PartitionId(2, 1)
LINEAGE = "cd" * 16


def keys(n: int, pid: PartitionId = P) -> list[bytes]:
    return [k for k in (b"k%d" % i for i in range(20 * n)) if pid.owns(k)][:n]


def mark(safe_ms: int, lsn: int = 9) -> list[Any]:
    return [Position(PRIMARY_P, LINEAGE, lsn, safe_ms / 1000).encode(), safe_ms]


@attrs.define
class Disk:
    full: bool = False

    def refusal(self) -> Exception:
        from dds.errors import StorageFull
        return StorageFull("full")


@attrs.define
class Site:
    clock: Clock
    maps: MapState
    storage: Storage
    participant: Participant
    locks: LockTable
    metrics: Metrics
    applier: DrApplier
    serving: list[bool]
    rg: RGRecord

    def request(self, rows: list[Any], marks: dict[str, Any] | None = None,
                pid: PartitionId = P) -> DrApply:
        return DrApply(str(pid), self.rg.name, self.rg.version, self.rg.fp, rows,
                       marks or {})

    def apply(self, rows: list[Any], marks: dict[str, Any] | None = None) -> Any:
        return self.applier.apply(self.request(rows, marks))

    def read(self, key: bytes) -> tuple[bytes | None, int]:
        r = self.storage.read(str(P), key)
        return r.value, r.version

    def store(self) -> PartitionStore:
        return self.storage.open_partition(str(P))


def build(tmp_path: Path, dr: DRRecord | None) -> Site:
    clock = Clock()
    clock.advance(1000)
    metrics = Metrics()
    storage = Storage(tmp_path / "data", clock)
    maps = MapState("b1", tmp_path / "data", metrics)
    rg = RGRecord("rg0", 1, [Member("b1"), Member("b2")], [PartitionEntry(P, "active")])
    other = RGRecord("rg1", 1, [Member("b2")], [PartitionEntry(PartitionId(1, 1), "active")])
    assert maps.merge([rg, other] + ([dr] if dr else []), source="test").adopted
    storage.open_partition(str(P))
    locks = LockTable(clock)
    participant = Participant(storage, locks, clock, metrics, lock_wait_s=1.0,
                              txn_deadline_s=5.0, on_deadline=lambda txn: None)
    ctx = brick_context(tmp_path / "data", clock, storage, participant, metrics, maps=maps)
    serving = [True]

    def check_serving(rg: str, pid: str) -> None:
        if not serving[0]:
            raise NotServing("no lease")
    applier = DrApplier(ctx, lambda *g: maps.check(*g)[0], check_serving, locks, Disk(),
                        max_key_bytes=1024, max_value_bytes=1 << 20)
    return Site(clock, maps, storage, participant, locks, metrics, applier, serving, rg)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = build(tmp_path, DRRecord(1, "follower", 0, "east"))
    yield made
    made.storage.close()


def test_rows_are_written_at_their_own_versions(site: Site) -> None:
    a, b = keys(2)
    assert site.apply([[a, b"va", 7], [b, None, 3]]) == {"applied": 2, "skipped": 0}
    assert site.read(a) == (b"va", 7)
    assert site.read(b) == (None, 3)
    assert site.metrics.value("dr_rows_applied_total") == 2


def test_a_row_not_newer_than_the_replicas_copy_is_skipped(site: Site) -> None:
    a, b = keys(2)
    site.apply([[a, b"new", 7]])
    assert site.apply([[a, b"old", 5], [a, b"same", 7], [b, b"vb", 1]]) == {
        "applied": 1, "skipped": 2}
    assert site.read(a) == (b"new", 7)
    assert site.metrics.value("dr_rows_skipped_total") == 2


def test_a_page_sent_twice_changes_nothing(site: Site) -> None:
    rows = [[k, b"v" + k, 4] for k in keys(5)]
    site.apply(rows)
    lsn = site.store().committed_lsn()
    assert site.apply(rows) == {"applied": 0, "skipped": 5}
    assert site.store().committed_lsn() == lsn


def test_a_key_twice_in_one_request_ends_at_its_newest_version(site: Site) -> None:
    (a,) = keys(1)
    assert site.apply([[a, b"v2", 2], [a, b"v5", 5], [a, b"v3", 3]]) == {
        "applied": 2, "skipped": 1}
    assert site.read(a) == (b"v5", 5)


def test_applied_rows_take_new_lsns_and_appear_in_the_change_stream(site: Site) -> None:
    a, b = keys(2)
    before = site.store().committed_lsn()
    site.apply([[a, b"va", 7], [b, b"vb", 2]])
    rows = list(site.store().rows_since(before))
    assert [(r[0], r[2]) for r in rows] == [(a, 7), (b, 2)]
    assert [r[3] for r in rows] == [before + 1, before + 2]
    assert all(r[4] is not None for r in rows)      # with their checksums


def test_marks_are_stored_with_the_rows_and_survive_a_reopen(site: Site,
                                                            tmp_path: Path) -> None:
    (a,) = keys(1)
    site.apply([[a, b"va", 7]], {str(PRIMARY_P): mark(900_000)})
    assert site.applier.marks(DrMarks())["marks"] == {str(P): {str(PRIMARY_P):
                                                                 mark(900_000)}}
    site.storage.close()
    reopened = PartitionStore(tmp_path / "data" / "p1.0.sqlite", "p1.0")
    try:
        assert reopened.dr_marks() == {str(PRIMARY_P): mark(900_000)}
    finally:
        reopened.close()


def test_a_mark_does_not_go_back(site: Site) -> None:
    site.apply([], {str(PRIMARY_P): mark(900_000)})
    site.apply([], {str(PRIMARY_P): mark(800_000)})
    assert site.store().dr_marks() == {str(PRIMARY_P): mark(900_000)}


def test_a_primary_refuses_dr_apply(site: Site) -> None:
    site.maps.merge([DRRecord(2, "primary", 1, "east")], source="test")
    with pytest.raises(Refused, match="promoted at epoch 1"):
        site.apply([[keys(1)[0], b"v", 1]])
    assert site.metrics.value("dr_apply_refused_total") == 1


def test_a_site_without_a_dr_record_refuses_dr_apply(tmp_path: Path) -> None:
    alone = build(tmp_path, None)
    try:
        with pytest.raises(Refused, match="without a DR record"):
            alone.apply([[keys(1)[0], b"v", 1]])
    finally:
        alone.storage.close()


def test_a_key_of_another_partition_applies_nothing(site: Site) -> None:
    (a,) = keys(1)
    (other,) = keys(1, PartitionId(1, 1))
    with pytest.raises(InvalidRequest, match="does not belong to partition p1.0"):
        site.apply([[a, b"va", 3], [other, b"vo", 3]])
    assert site.read(a) == (None, 0)


def test_a_mark_naming_another_partitions_position_is_invalid(site: Site) -> None:
    (a,) = keys(1)
    with pytest.raises(InvalidRequest, match="is a position of p2.1"):
        site.apply([[a, b"va", 3]], {"p2.2": mark(1)})
    assert site.read(a) == (None, 0)


def test_a_locked_key_refuses_the_whole_request(site: Site) -> None:
    a, b = keys(2)
    site.locks.try_acquire((str(P), b), (1, 1), (1, 1))
    with pytest.raises(Locked):
        site.apply([[a, b"va", 3], [b, b"vb", 3]])
    assert site.read(a) == (None, 0)


def test_a_fenced_partition_is_recovering(site: Site) -> None:
    site.participant.writes.fence([P])
    with pytest.raises(Recovering):
        site.apply([[keys(1)[0], b"v", 1]])


def test_a_brick_not_serving_the_rg_refuses(site: Site) -> None:
    site.serving[0] = False
    with pytest.raises(NotServing):
        site.apply([[keys(1)[0], b"v", 1]])


def test_a_stale_route_is_refused(site: Site) -> None:
    with pytest.raises(StaleMap):
        site.applier.apply(DrApply(str(P), "rg0", 2, site.rg.fp, [], {}))


def test_a_damaged_row_refuses_the_request_with_nothing_written(site: Site) -> None:
    a, b = keys(2)
    site.apply([[a, b"va", 3]])
    site.store()._conn.execute("UPDATE kv SET value = ? WHERE key = ?", (b"rot", a))
    with pytest.raises(ReplicaDamaged):
        site.apply([[b, b"vb", 3], [a, b"va4", 4]])
    assert site.store().read_unverified(b)[0].version == 0


def test_rows_staged_before_go_to_the_file_first(site: Site) -> None:
    a, b = keys(2)
    site.storage.write(str(P), a, b"staged", 2)
    assert site.store().staged(a)
    site.apply([[b, b"vb", 5]])
    rows = list(site.store().rows_since(0))
    assert [(r[0], r[2]) for r in rows] == [(a, 2), (b, 5)]
    assert not site.store().staged(a)
