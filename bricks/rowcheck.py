"""Row checksums: every stored value carries one (issue 13, "A damaged value is served").

A row's checksum is an xxh3-64 over its key, its version and its value, a removal
(tombstone, value None) distinguished from an empty value.  It is computed once, when
the participant stages the write at PREPARE, and then travels with the row: into the
vote and write records of the transaction log, the partition file's ``kv.checksum``
column, snapshots (the file itself), deltas and split rows.  Whoever reads a row from
a file, a log or another brick recomputes it and compares (:func:`verify`): a mismatch
means the bytes changed after they were staged (a flipped bit on disk, a torn copy).

The value is stored as SQLite's signed 64-bit INTEGER, so the digest is folded into
``[-2^63, 2^63)``.  ``None`` in the column marks a row written before checksums existed:
it is served unverified until the migration (``bricks/checksumwalk.py``) gives it one.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import xxhash

from dds.errors import ReplicaDamaged

__all__ = ["row_checksum", "ChecksumMismatch", "verify_file_rows"]

_HEADER = struct.Struct(">BQI").pack
_digest = xxhash.xxh3_64_intdigest
_TOP = 1 << 63
_WRAP = 1 << 64


def row_checksum(key: bytes, version: int, value: bytes | None) -> int:
    """The checksum of ``key = value`` at ``version`` (value None: a tombstone), as a
    signed 64-bit integer.  The value is hashed with a seed made of the rest, so a large
    value is not copied."""
    if value is None:
        h = _digest(_HEADER(0, version, len(key)) + key)
    else:
        h = _digest(value, _digest(_HEADER(1, version, len(key)) + key))
    return h - _WRAP if h >= _TOP else h


class ChecksumMismatch(ReplicaDamaged):
    """A stored row does not match its checksum: the brick must not return its bytes.
    Names the partition and the key (shortened)."""

    def __init__(self, pid: str, key: bytes, where: str = "stored value") -> None:
        super().__init__(f"the {where} of key {key[:64]!r} in partition {pid} fails its "
                         "checksum: this replica is damaged there (repairing it from the RG)")
        self.pid = pid
        self.key = key


def verify_file_rows(path: Path, pid: str, batch: int = 2000) -> int:
    """Verify every row of a partition file that carries a checksum, on a read-only
    connection of its own (blocking: for a worker thread).  Returns the rows verified;
    raises ChecksumMismatch naming the first damaged key.  A file of the schema before
    checksums (no column) has nothing to verify."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(kv)")}
        if "checksum" not in columns:
            return 0
        cur = conn.execute("SELECT key, value, version, checksum FROM kv")
        n = 0
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                return n
            for key, value, version, checksum in rows:
                if checksum is not None:
                    if row_checksum(key, version, value) != checksum:
                        raise ChecksumMismatch(pid, key, "copied row")
                    n += 1
    finally:
        conn.close()
