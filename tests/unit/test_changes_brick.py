"""The brick's change stream handler (``bricks/changes.py``) on a real partition file, with
the map, the participant and the clock stubbed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock

from dds.bricks.changes import ChangeStream
from dds.bricks.participant import TxnState
from dds.bricks.partstore import ReadResult
from dds.bricks.rowcheck import row_checksum
from dds.bricks.storage import Storage
from dds.changemsgs import ReadChanges
from dds.changepos import Position, decode
from dds.errors import InvalidRequest
from dds.metrics import Metrics
from dds.partition import PartitionId

PID = PartitionId(1, 0)


def _stream(tmp_path: Path, clock: Clock, active: dict[Any, Any] | None = None
            ) -> tuple[ChangeStream, Storage]:
    storage = Storage(tmp_path, clock)
    storage.open_partition(str(PID))
    ctx = SimpleNamespace(id="b1", clock=clock, metrics=Metrics(), storage=storage,
                          maps=SimpleNamespace(map=SimpleNamespace(
                              partition_rg={PID: object(), PartitionId(1, 1): object()})),
                          participant=SimpleNamespace(active=active or {}))
    return ChangeStream(ctx, lambda *gate: PID, lambda: set()), storage  # type: ignore[arg-type]


def _write(storage: Storage, key: bytes, version: int) -> None:
    store = storage.open_partition(str(PID))
    store._stage(key, ReadResult(b"v", version), row_checksum(key, version, b"v"))
    store._commit()


def _read(stream: ChangeStream, position: str, limit: int = 100) -> dict[str, Any]:
    return stream.read(ReadChanges(str(PID), "rg0", 1, 1, position, limit))


def test_a_page_holds_the_rows_after_the_position_each_with_its_own(tmp_path: Path) -> None:
    stream, storage = _stream(tmp_path, Clock())
    for i in range(3):
        _write(storage, b"k%d" % i, 1)
    first = _read(stream, "beginning", limit=2)
    assert [c[0] for c in first["changes"]] == [b"k0", b"k1"] and first["more"]
    assert _read(stream, first["changes"][0][3])["changes"][0][0] == b"k1"
    rest = _read(stream, first["position"])
    assert [c[0] for c in rest["changes"]] == [b"k2"] and not rest["more"]
    assert rest["translated"] == "exact"


def test_the_safe_time_is_lowered_to_the_oldest_prepared_transaction(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(10.0)
    held = SimpleNamespace(pid_text=str(PID), state=TxnState.PREPARED, prepared_at=990.0)
    other = SimpleNamespace(pid_text="p1.1", state=TxnState.PREPARED, prepared_at=900.0)
    stream, storage = _stream(tmp_path, clock, {1: held, 2: other})
    clock.advance(990.0)
    assert decode(_read(stream, "now")["position"]).safe_time == 990.0
    held.state = TxnState.COMMITTED
    assert decode(_read(stream, "now")["position"]).safe_time == 1000.0


def test_a_vote_restored_at_start_vouches_for_no_time_at_all(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(10.0)
    restored = SimpleNamespace(pid_text=str(PID), state=TxnState.PREPARED, prepared_at=10.0)
    stream, storage = _stream(tmp_path, clock, {1: restored})
    clock.advance(100.0)
    assert decode(_read(stream, "now")["position"]).safe_time == 0.0


def test_a_position_of_another_lineage_resumes_by_time_minus_the_skew(
        tmp_path: Path) -> None:
    clock = Clock()
    stream, storage = _stream(tmp_path, clock)
    for i in range(4):
        clock.advance(2.0)          # one sample each: lsn i+1 at 2(i+1)
        _write(storage, b"k%d" % i, 1)
    elsewhere = Position(PID, "11" * 16, 999, 6.5).encode()   # another file's lsn 999
    page = _read(stream, elsewhere)
    # Samples before 6.5 - 1 s: lsns 1 (t=2) and 2 (t=4): resume after lsn 2.
    assert [c[0] for c in page["changes"]] == [b"k2", b"k3"]
    assert page["translated"] == "time"


def test_a_position_older_than_every_sample_starts_from_the_beginning(
        tmp_path: Path) -> None:
    clock = Clock()
    stream, storage = _stream(tmp_path, clock)
    clock.advance(100.0)
    _write(storage, b"a", 1)
    page = _read(stream, Position(PID, "22" * 16, 5, 50.0).encode())
    assert [c[0] for c in page["changes"]] == [b"a"] and page["translated"] == "beginning"


def test_a_partition_no_longer_in_the_map_ends_naming_its_successors(tmp_path: Path) -> None:
    stream, _ = _stream(tmp_path, Clock())
    page = stream.read(ReadChanges("p0.0", "rg0", 1, 1, "beginning"))
    assert page["ended"] and page["successors"] == ["p1.0", "p1.1"]


def test_a_position_past_the_end_of_its_own_file_is_refused(tmp_path: Path) -> None:
    stream, storage = _stream(tmp_path, Clock())
    _write(storage, b"a", 1)
    mine = decode(_read(stream, "now")["position"])
    with pytest.raises(InvalidRequest, match="past the end"):
        _read(stream, Position(PID, mine.lineage, 50, mine.safe_time).encode())
