"""The brick's transaction log: durable YES votes and committed writes, appended.

A participant's YES vote must be durable before it is sent, and a COMMIT's write before
it is acknowledged (DESIGN §4).  Both go into one append-only file per brick, written with
one ``os.write`` per group commit (plus ``fdatasync`` in ``fsync`` mode), instead of a
commit per partition file and one of a vote table each time.  The partition files
(DESIGN §9) are written from memory lazily, in large batches; the log is what makes a
write durable until they have it.

Each ``os.write`` appends one *batch*: a header ``>II`` (payload length, CRC-32 of the
payload) and the payload, a msgpack array of records:

- ``[1, txid, pid, key, op, value, new_version, ts, checksum, participants]``: a YES
  vote (a prepared transaction; ``participants``: the members termination asks);
- ``[2, txid | None, pid, key, value, version, checksum]``: a committed write (``value``
  None: a tombstone); with a txid it also settles that transaction's vote;
- ``[3, txid]``: the vote is settled without a write (aborted, or dropped).

``checksum`` is the row's (``bricks/rowcheck.py``), computed at PREPARE; records of
earlier versions have none (one field fewer) and are taken unverified.  Votes of earlier
versions have no ``participants`` either; termination then asks the record's members.

A process that dies mid-append leaves at most a torn last batch, shorter than its header
says, which reading ignores: nothing of it was ever acknowledged.  A batch that looks torn
but is followed by an intact batch is not the tail: it is damage (a flipped length field),
counted as below, and reading goes on at the intact batch.  A batch whose CRC fails
but which is whole (its full length, not all zeros) is not torn but damaged (a flipped
bit on disk): its records are decoded if they still can be (each write's own checksum
then sorts the intact ones from the damaged), reading goes on after it, and the log
counts it (:attr:`TxnLog.damaged`, and what decoded in :attr:`TxnLog.damaged_batches`):
the brick then trusts none of the replicas the damaged stretch may have touched until
their RGs copied them again (``Storage._damaged_partitions``, ``bricks/needscopy.py``).

The files are ``txlog.<generation>``.  :meth:`TxnLog.rotate` starts the next generation
holding only the votes still undecided, once every committed write of the old one is in
the partition files, and then renames the old one to ``txlog.<generation>.old``, which
nothing reads (the caller frees it a few MB at a time: ``bricks/discard.py``); a crash
in between leaves both generations, and reading them in order gives the same state
(records are idempotent).
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgpack
from twisted.logger import Logger

from dds.bricks.atomicfile import fsync_dir

log = Logger()

TxnId = tuple[int, int]
#: A record as appended (a tuple) or as read back (a list).
Record = Any

VOTE, WRITE, SETTLED = 1, 2, 3
_HEADER = struct.Struct(">II")
_NAME = re.compile(r"^txlog\.(\d{8})$")


def _name(generation: int) -> str:
    return f"txlog.{generation:08d}"


def read_batches(path: Path, damage: list[str] | None = None,
                 salvaged: list[list[Record] | None] | None = None
                 ) -> Iterator[list[Record]]:
    """The records of each intact batch of one log file, in order; stops at the first
    torn batch (the tail of an append that never completed).  A batch that fails its
    CRC but is whole (:func:`_whole`) is damaged, not torn: what of it still
    decodes is yielded (unverified: the caller checks each record), one line describing
    it is appended to ``damage``, and reading goes on.  ``salvaged`` gets, for each
    damaged stretch, the records decoded from it (None: nothing of it decodes, or it is
    a gap of unknown content), so that the caller can tell which partitions it touched."""
    data = path.read_bytes()
    pos, end = 0, len(data)
    while end - pos >= _HEADER.size:
        n, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        payload = data[start:start + n]
        if len(payload) < n or zlib.crc32(payload) != crc:
            if _whole(payload, n):
                log.error("{path}: the batch at offset {offset} ({n} bytes) fails its CRC "
                          "but was written whole: damaged on disk",
                          path=str(path), offset=pos, n=n)
                if damage is not None:
                    damage.append(f"{path.name} offset {pos}")
                try:
                    records_of = msgpack.unpackb(payload, raw=False, strict_map_key=True)
                except Exception:  # noqa: BLE001 -- nothing of it is usable
                    records_of = None
                if salvaged is not None:
                    salvaged.append(records_of if isinstance(records_of, list) else None)
                if isinstance(records_of, list):
                    yield records_of
                pos = start + n
                continue
            resume = _next_valid_batch(data, pos + 1)
            if resume is None:
                log.warn("{path}: ignoring a torn batch at offset {offset} ({n} bytes)",
                         path=str(path), offset=pos, n=end - pos)
                return
            # Not the tail: an intact batch follows, so this one's header (its length)
            # or its bytes were damaged on disk.  What lay in between is unknown.
            log.error("{path}: the batch at offset {offset} looks torn but an intact "
                      "batch follows at offset {resume}: damaged on disk",
                      path=str(path), offset=pos, resume=resume)
            if damage is not None:
                damage.append(f"{path.name} offset {pos} to {resume}")
            if salvaged is not None:
                salvaged.append(None)
            pos = resume
            continue
        try:
            records = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except Exception as e:  # a CRC match makes this a bug, not a torn write
            log.error("{path}: undecodable batch at offset {offset}: {error!r}",
                      path=str(path), offset=pos, error=e)
            return
        yield records
        pos = start + n


def _next_valid_batch(data: bytes, start: int) -> int | None:
    """The offset of the first batch at or after ``start`` whose payload matches its
    CRC, or None.  An append cut short can only be the last thing in the file; a
    "torn" batch with an intact one after it was damaged instead (a flipped length
    field makes a whole batch look short).  Run only when a batch looks torn."""
    end = len(data)
    for q in range(start, end - _HEADER.size + 1):
        n, crc = _HEADER.unpack_from(data, q)
        body = q + _HEADER.size
        if 0 < n <= end - body and zlib.crc32(data[body:body + n]) == crc:
            return q
    return None


def _whole(payload: bytes, n: int) -> bool:
    """Whether a batch failing its CRC is damaged rather than torn.  An append is one
    ``write``; a process killed during it leaves a *prefix* (fewer bytes than the header
    counts), and nothing after it.  A batch of full length was written whole and may
    have been acknowledged: losing it silently would lose a write and a YES vote.  All
    zeros is the mark of a power loss that extended the file without its data (an
    append never acknowledged under ``fsync``): torn."""
    return len(payload) == n and payload.count(0) != n


def log_files(directory: Path) -> list[Path]:
    """The log files in ``directory``, oldest generation first."""
    found = sorted(int(m.group(1)) for f in directory.iterdir()
                   if (m := _NAME.match(f.name)))
    return [directory / _name(g) for g in found]


def undecided_votes(directory: Path) -> list[Record]:
    """The vote records not settled in the log files of ``directory`` (a brick's data
    directory), read while the brick is down or up: what a restart would restore."""
    votes: dict[TxnId, Record] = {}
    for path in log_files(directory):
        for batch in read_batches(path):
            for rec in batch:
                if rec[0] == VOTE:
                    votes[tuple(rec[1])] = rec
                elif rec[1] is not None:
                    votes.pop(tuple(rec[1]), None)
    return list(votes.values())


class TxnLog:
    """Appends batches of records to the current generation's file.

    Opening finds the files a previous run left (:meth:`records` reads them); the first
    :meth:`rotate` starts this run's generation and deletes them."""

    def __init__(self, directory: Path, fsync: bool) -> None:
        self.directory = directory
        self.fsync = fsync
        #: Files of earlier generations, read by ``records`` and retired by ``rotate``.
        self.old = log_files(directory)
        #: Files retired before a crash that had no time to free them.
        self.retired = sorted(directory.glob("txlog.*.old"))
        self.generation = int(self.old[-1].name.rpartition(".")[2]) if self.old else 0
        self.path: Path | None = None
        self._fd = -1
        self.size = 0
        self.closed = False
        #: Damaged batches found by ``records`` (where each was) ...
        self.damaged: list[str] = []
        #: ... and what each held, as far as it decodes (None: unknown).
        self.damaged_batches: list[list[Record] | None] = []

    def records(self) -> Iterator[Record]:
        """Every record the previous runs left, oldest first (those of a damaged batch
        included, for the caller to verify)."""
        for path in self.old:
            for batch in read_batches(path, self.damaged, self.damaged_batches):
                yield from batch

    def write(self, records: list[Record]) -> None:
        """Append one batch; durable against a process crash on return (``fsync``: against
        power loss too).  On an error nothing of the batch counts: the file is cut back."""
        if self._fd < 0:
            raise OSError("the transaction log is not open")
        payload = msgpack.packb(records, use_bin_type=True)
        data = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, self.size)
            except OSError as e:
                log.critical("could not cut {path} back after a failed append: {error!r}",
                             path=str(self.path), error=e)
            raise
        self.size += len(data)

    def rotate(self, live: Iterable[Record]) -> list[Path]:
        """Start the next generation with ``live`` (the undecided votes) and retire every
        older file; returns the retired files, for the caller to free.  The caller has
        made every committed write of the current generation durable in the partition
        files first."""
        old = [*self.old, *([self.path] if self.path is not None else [])]
        generation = self.generation + 1
        path = self.directory / _name(generation)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        try:
            records = list(live)
            size = 0
            if records:
                payload = msgpack.packb(records, use_bin_type=True)
                data = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
                if os.write(fd, data) != len(data):
                    raise OSError(f"short write to {path}")
                size = len(data)
            if self.fsync:
                os.fdatasync(fd)
                fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self.path, self.generation, self.size = fd, path, generation, size
        self.old = []
        retired = []
        for p in old:
            if p.exists():
                gone = p.with_name(p.name + ".old")
                os.replace(p, gone)
                retired.append(gone)
        if self.fsync and retired:
            fsync_dir(self.directory)
        return retired

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


__all__ = ["TxnLog", "read_batches", "log_files", "undecided_votes", "VOTE", "WRITE",
           "SETTLED"]
