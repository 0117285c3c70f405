"""The transaction log's records as the storage replays them at start (DESIGN §4, §9).

What a vote record holds (``PreparedRecord``), whether a record read back can be used
(``replayable``), the votes of the file earlier versions kept (``read_old_prepared``),
and which partitions a damaged stretch of the log may have touched
(``damaged_partitions``): the replicas that must be copied again before they serve.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import attrs

from dds.bricks.partstore import validate_pid
from dds.bricks.rowcheck import row_checksum
from dds.bricks.txlog import SETTLED, VOTE, WRITE, Record
from dds.partition import PartitionId

__all__ = ["PREPARED_FILE", "PreparedRecord", "damaged_partitions", "prepared_record",
           "read_old_prepared", "replayable", "vote_record"]

TxnId = tuple[int, int]
#: The file of recorded votes of earlier versions, read once and replaced by the log.
PREPARED_FILE = "prepared.sqlite"
_PAIR = struct.Struct(">QQ")


@attrs.frozen
class PreparedRecord:
    """A transaction this replica voted YES on, as found in the file after a restart."""

    txid: TxnId
    pid: str
    key: bytes
    op: str
    value: bytes | None
    new_version: int
    ts: tuple[int, int]
    #: The row's checksum (``bricks/rowcheck.py``), computed at PREPARE; None in a vote
    #: recorded before checksums existed.
    checksum: int | None = None
    #: The transaction's participants (DESIGN §4); empty in a vote recorded before the
    #: list was kept (termination then asks the record's active members).
    participants: tuple[str, ...] = ()


def read_old_prepared(path: Path) -> list[PreparedRecord]:
    """The votes an earlier version kept in ``prepared.sqlite`` (txid and ts packed as two
    unsigned 64-bit integers: too wide for SQLite's signed INTEGER)."""
    conn = sqlite3.connect(str(path))
    try:
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "prepared" not in tables:
            return []
        return [PreparedRecord(_PAIR.unpack(txid), pid, key, op, value, new_version,
                               _PAIR.unpack(ts))
                for txid, pid, key, op, value, new_version, ts in conn.execute(
                    "SELECT txid, pid, key, op, value, new_version, ts FROM prepared")]
    finally:
        conn.close()


def vote_record(rec: PreparedRecord) -> Record:
    """The log's vote record of ``rec`` (``bricks/txlog.py``)."""
    return (VOTE, rec.txid, rec.pid, rec.key, rec.op, rec.value, rec.new_version, rec.ts,
            rec.checksum, rec.participants)


def prepared_record(vote: Record) -> PreparedRecord:
    """A vote record read back (older ones lack the trailing fields)."""
    _kind, txid, pid, key, op, value, new_version, ts, *rest = vote
    return PreparedRecord(tuple(txid), pid, key, op, value, new_version,
                          tuple(ts), rest[0] if rest else None,
                          tuple(rest[1]) if len(rest) > 1 else ())


def replayable(rec: Record, check_row: bool = True) -> str | None:
    """Why a record read back from the log cannot be used (None: it can): its shape is
    wrong or (``check_row``) its row fails its checksum (a damaged batch decodes, with
    wrong bytes)."""
    try:
        kind = rec[0]
        if kind == SETTLED:
            return None if len(rec) == 2 and len(rec[1]) == 2 else "malformed settlement"
        if kind == VOTE:
            _k, txid, pid, key, _op, value, version, ts, *rest = rec
            validate_pid(pid)
            ok = (len(txid) == 2 and len(ts) == 2 and type(key) is bytes
                  and (len(rest) < 2 or (type(rest[1]) in (list, tuple)
                                         and all(type(b) is str for b in rest[1]))))
        elif kind == WRITE:
            _k, txid, pid, key, value, version, *rest = rec
            validate_pid(pid)
            ok = type(key) is bytes and (txid is None or len(txid) == 2)
        else:
            return f"unknown record kind {kind!r}"
        if not ok or not PartitionId.parse(pid).owns(key):
            return "malformed record"
        if check_row and rest and rest[0] is not None \
                and row_checksum(key, version, value) != rest[0]:
            return f"record of key {key[:64]!r} in {pid} fails its checksum"
    except (TypeError, ValueError, IndexError) as e:
        return f"malformed record: {e}"
    return None


def damaged_partitions(known: set[str], damaged_batches: list[list[Record] | None],
                       skipped: list[Record], vote_pids: dict[TxnId, str]) -> set[str]:
    """The partitions whose writes or YES votes the damaged stretches of the log may
    have held.  Every other batch passed its CRC, and a batch gone missing shows as
    a damaged stretch, so a damaged batch whose every record still decodes in shape
    touched only: each record's partition, every partition here owning its key (the
    partition field itself may be the flipped byte), and the partition of any vote
    its txid names (a flipped txid may settle another transaction's vote).  Anything
    less certain (a stretch that does not decode, a malformed record): all of them.
    ``known``: the partitions here; ``skipped``: the records replay could not use;
    ``vote_pids``: every vote's partition by txid, settled or not."""
    everything = set(known)
    in_damaged = {id(r) for b in damaged_batches if b for r in b}
    if any(id(r) not in in_damaged for r in skipped):
        return everything           # a bad record in a batch that passed its CRC
    out: set[str] = set()
    for batch in damaged_batches:
        if batch is None:
            return everything
        for rec in batch:
            if not isinstance(rec, (list, tuple)) or not rec \
                    or replayable(rec, check_row=False) is not None:
                return everything
            txid = rec[1]
            if rec[0] != SETTLED:
                pid, key = rec[2], rec[3]
                out.add(pid)
                out.update(p for p in known if PartitionId.parse(p).owns(key))
            if txid is not None and tuple(txid) in vote_pids:
                out.add(vote_pids[tuple(txid)])
    return out & everything
