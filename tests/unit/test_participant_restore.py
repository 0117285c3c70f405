"""Restoring recorded YES votes after a restart (Participant.restore)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from dds.metrics import Metrics

from dds.bricks.locks import LockTable
from dds.bricks.participant import Participant, Transaction, TxnState
from dds.bricks.storage import PreparedRecord, Storage


def _participant(tmp_path: Path, clock: Clock) -> tuple[Participant, Storage, list[Transaction]]:
    storage = Storage(tmp_path, clock)
    storage.open_partition("p0.0")
    asked: list[Transaction] = []
    p = Participant(storage, LockTable(clock), clock, Metrics(), lock_wait_s=1.0,
                    txn_deadline_s=5.0, on_deadline=asked.append)
    return p, storage, asked


def _record(txid: tuple[int, int], pid: str = "p0.0", version: int = 1) -> PreparedRecord:
    return PreparedRecord(txid, pid, b"k", "put", b"v", version, (1, 1))


def test_a_restored_vote_is_prepared_again_locked_fenced_and_resolved_soon(
        tmp_path: Path) -> None:
    clock = Clock()
    p, storage, asked = _participant(tmp_path, clock)
    assert p.restore([_record((9, 1))], resolve_after_s=1.0) == 1
    txn = p.active[(9, 1)]
    assert txn.state is TxnState.PREPARED and txn.new_version == 1 and txn.queried
    assert p.locks.holder(("p0.0", b"k")) == (9, 1)
    clock.advance(1.0)
    assert asked == [txn]
    storage.close()


def test_a_vote_whose_outcome_is_already_in_the_data_is_dropped(tmp_path: Path) -> None:
    clock = Clock()
    p, storage, asked = _participant(tmp_path, clock)
    storage.write("p0.0", b"k", b"v", 1)
    storage.prepare("p0.0", (9, 1), b"k", "put", b"v", 1, (1, 1))
    clock.advance(0)
    assert p.restore(storage.prepared(), resolve_after_s=1.0) == 0
    clock.advance(0)
    assert p.active == {} and storage.prepared() == []
    assert len(p.locks) == 0
    storage.close()


def test_a_vote_for_a_partition_no_longer_held_is_dropped(tmp_path: Path) -> None:
    clock = Clock()
    p, storage, asked = _participant(tmp_path, clock)
    assert p.restore([_record((9, 1), pid="p1.1")], resolve_after_s=1.0) == 0
    assert p.active == {} and len(p.locks) == 0
    clock.advance(2.0)
    assert asked == []
    storage.close()


def test_a_restored_vote_keeps_the_participants_termination_asks(tmp_path: Path) -> None:
    clock = Clock()
    p, storage, _asked = _participant(tmp_path, clock)
    rec = PreparedRecord((9, 4), "p0.0", b"k", "put", b"v", 1, (1, 1), None, ("b2", "b1"))
    assert p.restore([rec], resolve_after_s=1.0) == 1
    assert p.active[(9, 4)].participants == ("b2", "b1")
    storage.close()
