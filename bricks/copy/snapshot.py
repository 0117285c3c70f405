"""Copying a partition replica between bricks: the storage half of recovery (DESIGN §7).

The file is the unit of copy (DESIGN §9).  The source takes a consistent snapshot of a
partition's SQLite file while it keeps committing (:func:`take_snapshot`), serves it in
checksummed chunks (:func:`read_chunk`) and later, under a write fence, the rows written
since the snapshot's log position (``PartitionStore.rows_since``).  The recovering brick
receives the chunks into a temporary file (:class:`SnapshotReceiver`), verifies each chunk
and the whole file, installs the file in place of its stale replica, and applies the delta
(:func:`apply_delta`).

**Threads.**  A snapshot of a 100 MB partition takes a noticeable fraction of a second, so
the backup and the whole-file hash run in a worker thread, through an injected
``run_in_thread(f, *args) -> Deferred`` (the brick passes the reactor's thread pool).  The
worker opens its *own* connection to the partition file: the brick's connection stays on
the reactor thread, and WAL mode lets the worker read one consistent snapshot while the
reactor thread goes on committing.  Nothing in the worker touches :class:`Storage`.

**Log position.**  The snapshot's lsn is read from the snapshot file itself (its
``MAX(lsn)``, floored by ``meta.last_lsn``), never from the store's counters, which move on
while the backup runs: so it is exactly the position of what the file contains, and the
delta after it is exactly what the file lacks.  Staged (uncommitted) writes are not in the
file and not counted; they get later lsns and come with the delta.

Receiver-side chunk handling is synchronous and cheap (a ``pwrite`` and an xxh64 of at most
a few MiB), and runs on the reactor thread.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs
import xxhash
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dds.partition import PartitionId

from dds.bricks.context import RunInThread
from dds.bricks.discard import discard_gradually as discard_gradually  # re-exported
from dds.bricks.partstore import Row, validate_pid
from dds.bricks.rowcheck import ChecksumMismatch, row_checksum, verify_file_rows
from dds.bricks.storage import Storage
from dds.bricks.copy.stream import BLOCK as STREAM_BLOCK


log = Logger()


_HASH_BLOCK = STREAM_BLOCK
_INCOMING = ".incoming"


class CopyFailed(Exception):
    """A partition copy cannot go on: a checksum did not match, the disk is full, the
    delta is malformed.  ``reason`` says why; the message names the partition."""

    def __init__(self, pid: str, reason: str) -> None:
        super().__init__(f"copy of partition {pid} failed: {reason}")
        self.pid = pid
        self.reason = reason


@attrs.frozen
class SnapshotInfo:
    """A snapshot file of one partition: ``lsn`` is the log position of its contents and
    ``checksum`` the xxh64 of its bytes."""

    pid: str
    path: Path
    size: int
    lsn: int
    checksum: int
    #: xxh64 of each ``_HASH_BLOCK`` of the file (what a stream checks block by block).
    blocks: tuple[int, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """The entry of the ``copy_begin`` reply."""
        return {"pid": self.pid, "size": self.size, "lsn": self.lsn,
                "checksum": self.checksum}


# -- source side --------------------------------------------------------------------------

async def take_snapshot(storage: Storage, pid: str, dest: Path,
                        run_in_thread: RunInThread) -> SnapshotInfo:
    """Snapshot the replica of ``pid`` into ``dest``, a standalone SQLite file, without
    blocking the reactor.  Writes may continue meanwhile.  Raises KeyError if the brick
    holds no replica of ``pid``, or the worker's error (sqlite3.Error, OSError, ValueError)
    with no ``dest`` left behind; ChecksumMismatch (a ``ReplicaDamaged``) naming the key
    if a row of the snapshot fails its checksum, the row's repair started."""
    validate_pid(pid)
    if not storage.has_partition(pid):
        raise KeyError(pid)
    source = storage.partition_path(pid)
    try:
        info: SnapshotInfo = await run_in_thread(_snapshot_file, source, Path(dest), pid)
    except ChecksumMismatch as e:
        # Not shipped: the target would refuse it anyway.  Repaired here like a read's.
        if storage.has_partition(pid) and storage.file_row_damaged(pid, e.key):
            storage.on_damage(pid, e.key)
        raise
    log.info("snapshot of {pid}: {size} bytes at lsn {lsn}", pid=pid, size=info.size,
             lsn=info.lsn)
    return info


def _snapshot_file(source: Path, dest: Path, pid: str) -> SnapshotInfo:
    """Worker thread: online backup of ``source`` into ``dest``, then its lsn and hash."""
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        # Read-only and never creating: a missing file must fail, not become an empty DB.
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30.0,
                              check_same_thread=False)
        try:
            dst = sqlite3.connect(str(tmp), isolation_level=None, check_same_thread=False)
            try:
                # A snapshot is a scratch file (a crash deletes it): no fsync of its
                # 100 MB, which would stall every fsync on the disk meanwhile.
                dst.execute("PRAGMA synchronous=OFF")
                # pages=-1: the whole copy in one step, inside one read transaction, so the
                # copy is one consistent state (WAL: the writer is not blocked meanwhile).
                src.backup(dst, pages=-1)
                # The copy inherits WAL mode from the source's header; switch it back so
                # the single file is the complete database, with no -wal to ship.
                mode = dst.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
                if str(mode).lower() != "delete":
                    raise sqlite3.OperationalError(f"snapshot stuck in journal mode {mode}")
                meta = dict(dst.execute("SELECT name, value FROM meta"))
                if meta.get("partition") != pid:
                    raise ValueError(f"{source} holds partition {meta.get('partition')!r}, "
                                     f"not {pid!r}")
                top = dst.execute("SELECT COALESCE(MAX(lsn), 0) FROM kv").fetchone()[0]
                lsn = max(int(top), int(meta.get("last_lsn") or 0))
            finally:
                dst.close()
        finally:
            src.close()
        # Every row against its checksum before anything is shipped (the target checks
        # again: this side finds a damaged row early and has it repaired).
        verify_file_rows(tmp, pid)
        size, checksum, blocks = _hash_blocks(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return SnapshotInfo(pid=pid, path=dest, size=size, lsn=lsn, checksum=checksum,
                        blocks=blocks)


def _hash_file(path: Path) -> tuple[int, int]:
    """(size, xxh64) of a file's bytes."""
    size, checksum, _ = _hash_blocks(path)
    return size, checksum


def _hash_blocks(path: Path) -> tuple[int, int, tuple[int, ...]]:
    """(size, xxh64 of the whole file, xxh64 of each ``_HASH_BLOCK``) in one read."""
    h = xxhash.xxh64()
    size = 0
    blocks = []
    with open(path, "rb") as f:
        while True:
            block = f.read(_HASH_BLOCK)
            if not block:
                break
            h.update(block)
            blocks.append(xxhash.xxh64_intdigest(block))
            size += len(block)
    return size, h.intdigest(), tuple(blocks)


def read_chunk(path: Path, offset: int, size: int) -> tuple[bytes, int]:
    """``size`` bytes of ``path`` from ``offset`` (fewer at the end, none past it) and
    their xxh64."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    return data, xxhash.xxh64_intdigest(data)


# -- target side --------------------------------------------------------------------------

class SnapshotReceiver:
    """Receives one partition's snapshot into ``<dest_dir>/<pid>.sqlite.incoming`` and
    installs it in place of the brick's replica.

    Each chunk is verified before it is written; the whole file is verified by ``finish``.
    Nothing touches the existing replica before ``install``, so any failure before it
    (``CopyFailed``) leaves the replica as it was.  Chunks written in order are hashed as
    they come, so ``finish`` does not reread the file; out-of-order or repeated chunks are
    accepted and make ``finish`` hash the file from disk.

    A chunk whose checksum does not match is refused without writing anything: the caller
    may ask for it again, or ``abort``.  A write error (disk full …) aborts: the temporary
    file is removed.
    """

    def __init__(self, dest_dir: Path, pid: str, size: int, checksum: int) -> None:
        validate_pid(pid)
        if size < 0:
            raise ValueError(f"negative snapshot size {size}")
        self.pid = pid
        self.size = size
        self.checksum = checksum
        self.path = Path(dest_dir) / f"{pid}.sqlite{_INCOMING}"
        self.received = 0
        self.finished = False
        self._hash = xxhash.xxh64()
        self._hashed = 0          # bytes [0, _hashed) went through _hash in order
        self._in_order = True
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                                           0o644)
        except OSError as e:
            raise CopyFailed(pid, f"cannot create {self.path}: {e.strerror or e}") from e

    def write(self, offset: int, data: bytes | memoryview, checksum: int) -> None:
        """Verify and write one chunk at ``offset`` (in a stream's thread: nothing else
        uses the receiver meanwhile)."""
        if self._fd is None:
            raise CopyFailed(self.pid, "the receiver is closed")
        if xxhash.xxh64_intdigest(data) != checksum:
            raise CopyFailed(self.pid, f"checksum mismatch in the chunk at offset {offset} "
                             f"({len(data)} bytes)")
        if offset < 0 or offset + len(data) > self.size:
            raise CopyFailed(self.pid, f"chunk at offset {offset} of {len(data)} bytes lies "
                             f"outside the snapshot's {self.size} bytes")
        try:
            view = memoryview(data)
            done = 0
            while done < len(data):
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as e:
            self._fail(f"writing at offset {offset}: {e.strerror or e}")
        self.received += len(data)
        if self._in_order and offset == self._hashed:
            self._hash.update(data)
            self._hashed += len(data)
        else:
            self._in_order = False

    def finish(self, fsync: bool = True) -> None:
        """Verify the size and the whole file's checksum and, with ``fsync``, fsync
        it.  Without: a brick that crashes re-syncs on restart anyway, and in ``disk``
        durability only a power loss (which that mode does not survive) loses page-cache
        data; the fsync of 100 MB saturates a shared disk and stalls its neighbours."""
        if self._fd is None:
            raise CopyFailed(self.pid, "the receiver is closed")
        try:
            size = os.fstat(self._fd).st_size
            if size != self.size:
                self._fail(f"received {size} bytes, expected {self.size}")
            if self._in_order and self._hashed == self.size:
                got = self._hash.intdigest()
            else:
                got = _hash_file(self.path)[1]
            if got != self.checksum:
                self._fail(f"whole-file checksum mismatch ({got:#x}, expected "
                           f"{self.checksum:#x})")
            if fsync:
                os.fsync(self._fd)
        except OSError as e:
            self._fail(f"verifying {self.path}: {e.strerror or e}")
        os.close(self._fd)
        self._fd = None
        self.finished = True

    def verify_rows(self) -> int:
        """Blocking (for a worker thread), after ``finish``: verify every row of the
        received file against its checksum, so that a row damaged at the source is not
        installed (the whole-file hash only proves the bytes arrived as sent).  Raises
        CopyFailed naming the partition and the key; returns the rows verified."""
        if not self.finished:
            raise CopyFailed(self.pid, "row verification before a successful finish")
        try:
            return verify_file_rows(self.path, self.pid)
        except ChecksumMismatch as e:
            self.abort()
            raise CopyFailed(self.pid, f"the copied row of key {e.key[:64]!r} fails its "
                             "checksum: the source's replica is damaged there") from None
        except sqlite3.Error as e:
            self.abort()
            raise CopyFailed(self.pid, f"verifying the received rows: {e}") from None

    def install(self, storage: Storage) -> Path | None:
        """Replace the brick's replica of the partition with the verified file.  Returns
        the old replica's data, kept under another name for ``discard_gradually``
        (None if there was none): freeing it at once stalls the whole file system."""
        if not self.finished:
            raise CopyFailed(self.pid, "install before a successful finish")
        old = storage.partition_path(self.pid)
        trash: Path | None = old.with_name(old.name + ".discard")
        try:
            assert trash is not None
            trash.unlink(missing_ok=True)
            os.link(old, trash)
        except OSError:
            trash = None        # no old replica (or no hard links): nothing to keep
        try:
            storage.replace_partition(self.pid, self.path)
        except (OSError, ValueError, sqlite3.Error) as e:
            self.abort()
            if trash is not None:
                trash.unlink(missing_ok=True)
            raise CopyFailed(self.pid, f"installing the received file: {e}") from e
        log.info("installed a copy of {pid} ({size} bytes)", pid=self.pid, size=self.size)
        return trash

    def abort(self) -> None:
        """Give up: close and delete the temporary file (idempotent)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        self.path.unlink(missing_ok=True)
        self.finished = False

    def _fail(self, reason: str) -> NoReturn:
        """Abort and raise CopyFailed; never returns."""
        self.abort()
        raise CopyFailed(self.pid, reason)


def _check_row(pid: str, owner: PartitionId, i: int, row: Any) -> Row:
    if not isinstance(row, (list, tuple)) or len(row) not in (4, 5):
        raise CopyFailed(pid, f"delta row {i} is not [key, value, version, lsn, checksum]")
    # A source of the version before checksums sends four fields (taken unverified).
    key, value, version, lsn = row[:4]
    checksum = row[4] if len(row) == 5 else None
    if type(key) is not bytes:
        raise CopyFailed(pid, f"delta row {i}: key is {type(key).__name__}, not bytes")
    if value is not None and type(value) is not bytes:
        raise CopyFailed(pid, f"delta row {i}: value is {type(value).__name__}, "
                         "not bytes or None")
    if type(version) is not int or not 1 <= version < 1 << 63:
        raise CopyFailed(pid, f"delta row {i}: bad version {version!r}")
    if type(lsn) is not int or not 1 <= lsn < 1 << 63:
        raise CopyFailed(pid, f"delta row {i}: bad lsn {lsn!r}")
    if not owner.owns(key):
        raise CopyFailed(pid, f"delta row {i}: key {key[:32]!r} does not belong to {pid}")
    computed = row_checksum(key, version, value)
    if checksum is None:
        checksum = computed     # a row the source had no checksum for yet
    elif type(checksum) is not int or checksum != computed:
        raise CopyFailed(pid, f"delta row {i}: key {key[:64]!r} fails its checksum "
                         "(damaged at the source or on the way)")
    return (key, value, version, lsn, checksum)


def apply_delta(storage: Storage, pid: str, rows: Sequence[Any]) -> int:
    """Apply the source's delta rows ``[key, value|None, version, lsn, checksum]`` (each
    verified against its checksum) to the installed
    replica in one durable transaction, keeping the source's lsns.  Every row is checked
    (types, ranges, that the key belongs to ``pid``) before anything is applied: a
    malformed row raises CopyFailed and nothing changes.  Returns the number of rows."""
    try:
        owner = PartitionId.parse(pid)
    except ValueError as e:
        raise CopyFailed(str(pid), str(e)) from None
    checked = [_check_row(pid, owner, i, row) for i, row in enumerate(rows)]
    try:
        return storage.apply_rows(pid, checked)
    except (sqlite3.Error, OSError, ValueError, KeyError) as e:
        raise CopyFailed(pid, f"applying {len(checked)} delta rows: {e!r}") from e


__all__ = ["CopyFailed", "SnapshotInfo", "SnapshotReceiver", "apply_delta", "read_chunk",
           "take_snapshot"]
