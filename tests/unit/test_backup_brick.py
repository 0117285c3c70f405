"""Unit tests of the brick's backup component (``bricks/backup.py``): snapshots served in
chunks and deleted, idle sessions dropped with their files, the wait for prepared
transactions, and restores installed only into empty replicas.  Real SQLite files in
tmp_path, time from a Clock, worker-thread work run inline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import xxhash
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dds.backupmsgs import (BackupBegin, BackupChunk, BackupEnd, RestoreBegin,
                            RestoreChunk, RestoreFinish)
from dds.errors import InvalidRequest, NotServing, Refused
from dds.messages import Prepare
from dds.metrics import Metrics
from dds.partition import PartitionId
from dds.records import Member, PartitionEntry, RGRecord

from dds.bricks.backup import IDLE_S, PREPARED_WAIT_S, Backups
from dds.bricks.locks import LockTable
from dds.bricks.mapstate import MapState
from dds.bricks.participant import Participant
from dds.bricks.storage import Storage

from tests.unit.brickctx import brick_context

P = PartitionId(1, 0)
OTHER = PartitionId(1, 1)


def keys_of(pid: PartitionId, n: int) -> list[bytes]:
    return [k for k in (b"k%d" % i for i in range(10_000)) if pid.owns(k)][:n]


def outcome(aw: Any) -> list[Any]:
    d = Deferred.fromCoroutine(aw) if not isinstance(aw, Deferred) else aw
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def value_of(out: list[Any]) -> Any:
    assert out, "not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


@attrs.define
class Brick:
    clock: Clock
    storage: Storage
    participant: Participant
    backups: Backups
    metrics: Metrics
    serving: list[bool]

    def put(self, n: int, pid: PartitionId = P) -> None:
        for i, k in enumerate(keys_of(pid, n)):
            self.storage.write(str(pid), k, b"v%d" % i, 1)
        self.clock.advance(0)

    def call(self, result: Any) -> Any:
        out = outcome(result) if not isinstance(result, dict) else [result]
        self.clock.advance(0)
        return value_of(out)

    def download(self, reply: dict[str, Any]) -> bytes:
        data = b""
        while len(data) < reply["size"]:
            chunk = self.call(self.backups.chunk(BackupChunk(reply["session"], len(data),
                                                             1 << 16)))
            assert xxhash.xxh64_intdigest(chunk["data"]) == chunk["checksum"]
            data += chunk["data"]
        return data

    def upload(self, data: bytes, pid: PartitionId = P) -> dict[str, Any]:
        sid = self.backups.restore_begin(RestoreBegin(str(pid), len(data),
                                                      xxhash.xxh64_intdigest(data)))["session"]
        for at in range(0, len(data), 1 << 16):
            part = data[at:at + (1 << 16)]
            self.backups.restore_chunk(RestoreChunk(sid, at, part,
                                                    xxhash.xxh64_intdigest(part)))
        reply: dict[str, Any] = self.call(self.backups.restore_finish(RestoreFinish(sid)))
        return reply


def make_brick(root: Path) -> Brick:
    clock = Clock()
    metrics = Metrics()
    storage = Storage(root / "data", clock)
    maps = MapState("b1", root / "data", metrics)
    maps.merge([RGRecord("rg0", 1, [Member("b1"), Member("b2"), Member("b3")],
                         [PartitionEntry(P, "active"), PartitionEntry(OTHER, "active")])],
               source="test")
    for pid in (P, OTHER):
        storage.open_partition(str(pid))
    participant = Participant(storage, LockTable(clock), clock, metrics, lock_wait_s=1.0,
                              txn_deadline_s=5.0, on_deadline=lambda txn: None)
    ctx = brick_context(root / "data", clock, storage, participant, metrics, maps=maps)
    serving = [True]
    backups = Backups(ctx, lambda rg: serving[0], {}, idle_s=IDLE_S)
    return Brick(clock, storage, participant, backups, metrics, serving)


@pytest.fixture
def brick(tmp_path: Path) -> Iterator[Brick]:
    b = make_brick(tmp_path / "one")
    yield b
    b.backups.close_all()
    b.storage.close()


@pytest.fixture
def empty_brick(tmp_path: Path) -> Iterator[Brick]:
    b = make_brick(tmp_path / "two")
    yield b
    b.backups.close_all()
    b.storage.close()


def test_a_backup_snapshot_is_served_in_chunks_at_its_lsn_then_deleted(brick: Brick) -> None:
    brick.put(20)
    reply = brick.call(brick.backups.begin(BackupBegin(str(P))))
    assert reply["lsn"] == 20 and reply["brick"] == "b1" and reply["prepared_resolved"]
    data = brick.download(reply)
    assert xxhash.xxh64_intdigest(data) == reply["checksum"]
    assert list(brick.backups.dir.iterdir())
    brick.backups.end(BackupEnd(reply["session"]))
    assert not list(brick.backups.dir.iterdir())


def test_an_idle_backup_session_is_dropped_with_its_file(brick: Brick) -> None:
    brick.put(5)
    reply = brick.call(brick.backups.begin(BackupBegin(str(P))))
    brick.clock.advance(IDLE_S + 1)
    assert not list(brick.backups.dir.iterdir())
    with pytest.raises(InvalidRequest, match="idle too long"):
        brick.call(brick.backups.chunk(BackupChunk(reply["session"], 0, 100)))
    assert brick.metrics.snapshot()["backup_sessions_expired_total"] == 1


def test_backup_begin_waits_for_a_transaction_prepared_before_it(brick: Brick) -> None:
    msg = Prepare(txid=(9, 1), ts=(9, 1), pid=str(P), key=keys_of(P, 1)[0], op="put",
                  value=b"x", expected_version=None, rg="rg0", rg_version=1, rg_fp=0,
                  timeout_ms=1000)
    brick.participant.prepare(msg, P, lambda: None)
    brick.clock.advance(0)
    out = outcome(brick.backups.begin(BackupBegin(str(P))))
    brick.clock.advance(0.5)
    assert out == [], "the snapshot did not wait for the prepared transaction"
    brick.participant.abort((9, 1))
    brick.clock.advance(0.1)
    assert value_of(out)["prepared_resolved"] is True


def test_backup_begin_gives_up_waiting_after_a_bound(brick: Brick) -> None:
    msg = Prepare(txid=(9, 2), ts=(9, 2), pid=str(P), key=keys_of(P, 1)[0], op="put",
                  value=b"x", expected_version=None, rg="rg0", rg_version=1, rg_fp=0,
                  timeout_ms=1000)
    brick.participant.prepare(msg, P, lambda: None)
    out = outcome(brick.backups.begin(BackupBegin(str(P))))
    for _ in range(int(PREPARED_WAIT_S / 0.02) + 10):
        brick.clock.advance(0.02)
    assert value_of(out)["prepared_resolved"] is False


def test_backup_begin_is_refused_by_a_brick_not_serving_the_rg(brick: Brick) -> None:
    brick.serving[0] = False
    with pytest.raises(NotServing, match="does not serve rg0"):
        brick.call(brick.backups.begin(BackupBegin(str(P))))


def test_a_restored_file_is_installed_into_an_empty_replica(brick: Brick,
                                                           empty_brick: Brick) -> None:
    brick.put(30)
    data = brick.download(brick.call(brick.backups.begin(BackupBegin(str(P)))))
    reply = empty_brick.upload(data)
    assert reply["rows"] == 30 and reply["count"] == 30 and reply["last_lsn"] == 30
    assert reply["checksum"] == brick.storage.open_partition(str(P)).checksum()
    assert empty_brick.storage.read(str(P), keys_of(P, 1)[0]).value == b"v0"
    assert not list(empty_brick.backups.dir.iterdir())
    assert not list(empty_brick.storage.data_dir.glob("*.discard"))


def test_a_restore_into_a_replica_holding_a_row_is_refused_and_changes_nothing(
        brick: Brick, empty_brick: Brick) -> None:
    brick.put(30)
    data = brick.download(brick.call(brick.backups.begin(BackupBegin(str(P)))))
    empty_brick.storage.write(str(P), keys_of(P, 40)[39], None, 3)     # one tombstone
    empty_brick.clock.advance(0)
    before = empty_brick.storage.open_partition(str(P)).checksum()
    with pytest.raises(Refused, match="is not empty"):
        empty_brick.upload(data)
    assert empty_brick.storage.open_partition(str(P)).checksum() == before
    assert not empty_brick.participant.fenced


def test_a_restore_chunk_failing_its_checksum_is_refused(empty_brick: Brick) -> None:
    sid = empty_brick.backups.restore_begin(RestoreBegin(str(P), 10, 0))["session"]
    with pytest.raises(Refused, match="checksum mismatch"):
        empty_brick.backups.restore_chunk(RestoreChunk(sid, 0, b"0123456789", 12345))
    assert not list(empty_brick.backups.dir.iterdir())


def test_a_restore_into_a_partition_the_brick_does_not_hold_is_refused(
        empty_brick: Brick) -> None:
    with pytest.raises(NotServing, match="holds no replica of p2.1"):
        empty_brick.backups.restore_begin(RestoreBegin("p2.1", 10, 0))


def test_an_upload_with_a_damaged_row_is_refused_and_the_replica_stays_empty(
        brick: Brick, empty_brick: Brick, tmp_path: Path) -> None:
    import sqlite3
    brick.put(30)
    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(brick.download(brick.call(brick.backups.begin(BackupBegin(str(P))))))
    conn = sqlite3.connect(str(damaged), isolation_level=None)
    conn.execute("UPDATE kv SET value = X'00' WHERE key = ?", (keys_of(P, 1)[0],))
    conn.close()
    with pytest.raises(Refused, match="fails its checksum"):
        empty_brick.upload(damaged.read_bytes())
    assert empty_brick.storage.read(str(P), keys_of(P, 1)[0]).version == 0
    assert not list(empty_brick.backups.dir.iterdir())
