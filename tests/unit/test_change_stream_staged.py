"""A page of the change stream holds a write committed before its safe time even when
the key's next write is staged and not yet durable (``PartitionStore.rows_since`` with
``upto``): found by the DR fault run (tests/faults/dr.py), where such a write was in no
page, the follower's mark vouched for it, and the primary died before the next write
became durable."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock

from dds.bricks.changes import ChangeStream
from dds.bricks.partstore import ReadResult
from dds.bricks.rowcheck import row_checksum
from dds.bricks.storage import Storage
from dds.changemsgs import ReadChanges
from dds.changepos import decode
from dds.metrics import Metrics
from dds.partition import PartitionId

PID = PartitionId(1, 0)


def _stream(tmp_path: Path, clock: Clock) -> tuple[ChangeStream, Storage]:
    storage = Storage(tmp_path, clock)
    storage.open_partition(str(PID))
    ctx = SimpleNamespace(id="b1", clock=clock, metrics=Metrics(), storage=storage,
                          maps=SimpleNamespace(map=SimpleNamespace(
                              partition_rg={PID: object()})),
                          participant=SimpleNamespace(active={}))
    return ChangeStream(ctx, lambda *gate: PID, lambda: set()), storage  # type: ignore[arg-type]


def _stage(storage: Storage, key: bytes, version: int) -> None:
    store = storage.open_partition(str(PID))
    value = b"v%d" % version
    store._stage(key, ReadResult(value, version), row_checksum(key, version, value))


def _read(stream: ChangeStream, position: str) -> dict[str, Any]:
    return stream.read(ReadChanges(str(PID), "rg0", 1, 1, position, 100))


def test_a_durable_staged_write_is_served_while_its_successor_is_not_durable(
        tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1000.0)
    stream, storage = _stream(tmp_path, clock)
    store = storage.open_partition(str(PID))
    _stage(storage, b"k", 1)
    store._commit()                                   # in the file
    start = _read(stream, "beginning")["position"]
    _stage(storage, b"k", 2)
    store._durable_lsn = store._last_lsn              # durable in the brick's log
    clock.advance(1.0)
    _stage(storage, b"k", 3)                          # staged, not yet durable
    clock.advance(1.0)
    page = _read(stream, start)
    assert [(c[0], c[2]) for c in page["changes"]] == [(b"k", 2)]
    assert decode(page["position"]).safe_time <= 1001.0   # the staging of v3


def test_without_a_cap_only_each_keys_newest_staged_row_is_served(tmp_path: Path) -> None:
    _stream_, storage = _stream(tmp_path, Clock())
    store = storage.open_partition(str(PID))
    for v in (1, 2, 3):
        _stage(storage, b"k", v)
    assert [r[2] for r in store.rows_since(0)] == [3]
    assert [r[2] for r in store.rows_since(0, upto=2)] == [2]
