"""The DR journal's optional file (``dr_journal_path``): what lets a restarted service
still replay the writes the DR site did not have (DESIGN §12).

Append-only records, each ``MAGIC | length (u32) | crc32 (u32) | msgpack payload``:

- ``["add", seq, pid, key, op, value, version, {brick: at_ms}, acked_ms]``: an entry;
- ``["drop", [seq, ...]]``: entries that left the journal (covered, replayed, superseded).

Each record is written with one ``write`` on an ``O_APPEND`` descriptor as the write is
acknowledged: it survives the process being killed, not the host losing power (no fsync
per write: it would cost a disk flush per acknowledged write).  When most records are
drops, the file is rewritten with the live entries (``compact``: a new file renamed over
the old one, fsynced).

Reading back (``load``): a record whose checksum or payload is bad is **skipped and
named** (its offset and why, in ``LoadReport.damaged``), and reading resumes at the next
``MAGIC``: a damaged ``add`` loses that one entry (the caller logs it as a warning; the
write may then be missing at a promoted DR site), a damaged ``drop`` brings entries back
(their replay is refused or idempotent: harmless).  An incomplete last record is what a
kill in the middle of an append leaves: ignored (``LoadReport.torn``).  Loading compacts
the file, so damage is reported once.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any, Iterable

import attrs
import msgpack

MAGIC = b"DRJ1"
_HEAD = struct.Struct(">4sII")
#: A record longer than this is damage (an entry is at most a key, a 1 MiB value and a
#: few fields; a drop record lists at most ``DROP_BATCH`` sequence numbers).
MAX_RECORD = 64 << 20
#: Sequence numbers per ``drop`` record.
DROP_BATCH = 4096

#: An entry as the file holds it: seq, pid text, key, op, value, version, at, acked_ms.
Row = tuple[int, str, bytes, str, "bytes | None", int, dict[str, int], int]


@attrs.frozen
class LoadReport:
    """What ``load`` found: ``damaged`` lists ``(offset, why)`` of each skipped record;
    ``torn``: the offset of an incomplete last record, or None."""

    entries: int
    records: int
    damaged: tuple[tuple[int, str], ...] = ()
    torn: int | None = None


def _record(payload: list[Any]) -> bytes:
    body = msgpack.packb(payload, use_bin_type=True)
    return _HEAD.pack(MAGIC, len(body), zlib.crc32(body)) + body


def _row(item: Any) -> Row:
    """An ``add`` payload's fields, checked (``ValueError`` naming what is wrong)."""
    if len(item) != 9:
        raise ValueError(f"an add record has 9 fields, not {len(item)}")
    _, seq, pid, key, op, value, version, at, acked = item
    if not (type(seq) is int and type(pid) is str and type(key) is bytes
            and type(op) is str and (value is None or type(value) is bytes)
            and type(version) is int and isinstance(at, dict) and type(acked) is int
            and all(type(b) is str and type(t) is int for b, t in at.items())):
        raise ValueError("an add record's fields have the wrong types")
    return (seq, pid, key, op, value, version, dict(at), acked)


class JournalFile:
    """One journal file, open for appending."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        #: Entries added to the file, and how many of them were dropped since.
        self.adds = 0
        self.dropped = 0

    # -- reading ---------------------------------------------------------------------

    def load(self) -> tuple[list[Row], LoadReport]:
        """The live entries, in sequence order, and what was found on the way; then the
        file is compacted to them and opened for appending."""
        data = self.path.read_bytes() if self.path.exists() else b""
        live: dict[int, Row] = {}
        damaged: list[tuple[int, str]] = []
        torn: int | None = None
        records = 0
        pos = 0
        while pos < len(data):
            if data[pos:pos + 4] != MAGIC:
                nxt = data.find(MAGIC, pos + 1)
                damaged.append((pos, "no record starts here (bytes out of place)"))
                if nxt < 0:
                    break
                pos = nxt
                continue
            if pos + _HEAD.size > len(data):
                torn = pos
                break
            _, length, crc = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + length
            if length > MAX_RECORD or end > len(data):
                nxt = data.find(MAGIC, pos + 1)
                if nxt < 0 and length <= MAX_RECORD:
                    torn = pos                  # the last append was cut short
                    break
                damaged.append((pos, f"length {length} runs past the end of the file"))
                if nxt < 0:
                    break
                pos = nxt
                continue
            body = data[pos + _HEAD.size:end]
            why = self._apply(body, crc, live)
            if why is not None:
                damaged.append((pos, why))
                nxt = data.find(MAGIC, pos + 1)
                if nxt < 0:
                    break
                pos = nxt
                continue
            records += 1
            pos = end
        rows = [live[s] for s in sorted(live)]
        self.compact(rows)
        return rows, LoadReport(len(rows), records, tuple(damaged), torn)

    @staticmethod
    def _apply(body: bytes, crc: int, live: dict[int, Row]) -> str | None:
        """Apply one record to ``live``; why it is damaged, or None."""
        if zlib.crc32(body) != crc:
            return "checksum mismatch"
        try:
            item = msgpack.unpackb(body, raw=False, strict_map_key=True)
            if not isinstance(item, list) or not item:
                raise ValueError("not a record")
            if item[0] == "add":
                row = _row(item)
                live[row[0]] = row
            elif item[0] == "drop" and len(item) == 2 and isinstance(item[1], list):
                for seq in item[1]:
                    live.pop(seq, None)
            else:
                raise ValueError(f"unknown record kind {item[0]!r:.20}")
        except Exception as e:          # msgpack raises several unrelated types
            return f"undecodable ({e.__class__.__name__}: {e})"
        return None

    # -- writing ---------------------------------------------------------------------

    def _open(self) -> None:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _write(self, data: bytes) -> None:
        self._open()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def add(self, row: Row) -> None:
        seq, pid, key, op, value, version, at, acked = row
        self._write(_record(["add", seq, pid, key, op, value, version, at, acked]))
        self.adds += 1

    def drop(self, seqs: Iterable[int]) -> None:
        seqs = list(seqs)
        out = b"".join(_record(["drop", seqs[i:i + DROP_BATCH]])
                       for i in range(0, len(seqs), DROP_BATCH))
        if out:
            self._write(out)
            self.dropped += len(seqs)

    def worth_compacting(self) -> bool:
        """Most entries of the file left the journal: rewrite it with the others."""
        return self.adds >= 2048 and 2 * self.dropped > self.adds

    def compact(self, rows: Iterable[Row]) -> None:
        """Rewrite the file with ``rows`` alone (a new file, fsynced, renamed over)."""
        self.close()
        tmp = self.path.with_name(self.path.name + ".compact")
        count = 0
        with open(tmp, "wb") as f:
            for seq, pid, key, op, value, version, at, acked in rows:
                f.write(_record(["add", seq, pid, key, op, value, version, at, acked]))
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.adds = count
        self.dropped = 0
        self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


__all__ = ["JournalFile", "LoadReport", "MAGIC", "Row"]
