"""Backups and restores at the brick (issue 17, DESIGN §12): the requests of
``dds-admin backup`` and ``dds-admin restore`` (``dds.backupmsgs``).

**Backup.**  ``backup_begin`` snapshots this brick's replica of one partition with the
copy's :func:`~dds.bricks.copy.snapshot.take_snapshot` (one consistent state, its log
position read from the file, every row verified) into ``<data>/backups/``.  Only an
active member serving the partition's RG takes one (a recovering replica may lag).
Before the snapshot it waits (briefly) for the transactions already prepared on the
partition to resolve: a write acknowledged to its client before the backup began may
still be prepared here (its COMMIT on the way), and must be in the backup.  The tool
then reads the file in chunks (``backup_chunk``) and deletes it (``backup_end``).

**Restore.**  ``restore_begin`` opens a :class:`~dds.bricks.copy.snapshot.SnapshotReceiver`
in ``<data>/backups/``; ``restore_chunk`` writes verified chunks; ``restore_finish``
verifies the whole file's xxh64 and every row (in the same pass as its checksum), then
installs it with
``Storage.replace_partition`` only where this brick's replica is *empty*: the partition
is fenced for the check and the install, so no write slips in between, and a replica
holding any row (tombstones too) or a transaction is refused.  A restore never
overwrites data.

**Idle sessions.**  A session (either kind) that hears nothing for ``idle_s`` is dropped
with its file, so a killed tool leaves nothing behind for long; a brick that restarts
empties ``<data>/backups/`` (sessions do not survive it).
"""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater
from twisted.logger import Logger

from dds.backupmsgs import (BackupBegin, BackupChunk, BackupEnd, RestoreAbort, RestoreBegin,
                            RestoreChunk, RestoreFinish)
from dds.errors import InvalidRequest, NotServing, Refused
from dds.messages import Message
from dds.partition import PartitionId

from dds.bricks.context import BrickContext
from dds.bricks.copy.snapshot import (CopyFailed, SnapshotInfo, SnapshotReceiver,
                                      read_chunk, take_snapshot)
from dds.bricks.mapstate import parse_pid
from dds.bricks.partstore import check_partition_file, hash_rows
from dds.bricks.rowcheck import ChecksumMismatch, row_checksum

__all__ = ["Backups", "IDLE_S", "PREPARED_WAIT_S", "scan_rows"]

#: A session that hears nothing for this long is dropped with its file.
IDLE_S = 60.0
#: The longest ``backup_begin`` waits for the transactions prepared before it to resolve.
PREPARED_WAIT_S = 5.0
_POLL_S = 0.02


class _Session:
    """One backup snapshot served, or one restore upload received."""

    __slots__ = ("id", "pid", "snapshot", "receiver", "timer", "busy")

    def __init__(self, sid: int, pid: str, timer: IDelayedCall) -> None:
        self.id = sid
        self.pid = pid
        self.snapshot: SnapshotInfo | None = None
        self.receiver: SnapshotReceiver | None = None
        self.timer = timer
        #: ``restore_finish`` is verifying and installing: no chunk, no second finish.
        self.busy = False


def scan_rows(path: Path, pid: str) -> dict[str, int]:
    """Blocking: one pass over a partition file's rows in key order, each verified against
    its row checksum (ChecksumMismatch naming the key): ``rows``, live keys (``count``),
    ``last_lsn`` and the replica ``checksum`` as the ``checksum`` request computes it.
    One pass instead of ``verify_file_rows`` and ``summarize_file`` each reading every
    row.  ValueError if the file is no partition file of ``pid``."""
    check_partition_file(path, pid)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    seen = {"rows": 0, "count": 0}
    try:
        conn.execute("BEGIN")
        has = "checksum" in {r[1] for r in conn.execute("PRAGMA table_info(kv)")}
        cur = conn.execute("SELECT key, value, version, " + ("checksum" if has else "NULL")
                           + " FROM kv ORDER BY key")

        def rows() -> Iterator[tuple[bytes, bytes | None, int]]:
            for key, value, version, checksum in cur:
                if checksum is not None and row_checksum(key, version, value) != checksum:
                    raise ChecksumMismatch(pid, key, "backed-up row")
                seen["rows"] += 1
                seen["count"] += value is not None
                yield key, value, version
        checksum = hash_rows(rows())
        top = conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM kv").fetchone()[0]
        floor = conn.execute("SELECT value FROM meta WHERE name = 'last_lsn'").fetchone()
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {**seen, "checksum": checksum,
            "last_lsn": max(int(top), int(floor[0]) if floor else 0)}


def _empty(path: Path) -> bool:
    """Worker thread: the partition file holds no row at all (tombstones count)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        return conn.execute("SELECT NOT EXISTS (SELECT 1 FROM kv)").fetchone()[0] == 1
    finally:
        conn.close()


class Backups:
    log = Logger()

    def __init__(self, ctx: BrickContext, serving: Callable[[str], bool],
                 damaged: dict[str, str], idle_s: float = IDLE_S) -> None:
        self.id = ctx.id
        self.clock = ctx.clock
        self.metrics = ctx.metrics
        self.maps = ctx.maps
        self.storage = ctx.storage
        self.participant = ctx.participant
        self.run_in_thread = ctx.run_in_thread
        self.fsync = ctx.fsyncs
        self.serving = serving
        self.damaged = damaged
        self.idle_s = idle_s
        self.dir = ctx.data_dir / "backups"
        # Left by a brick that stopped mid-backup: no session survives a restart.
        shutil.rmtree(self.dir, ignore_errors=True)
        self.sessions: dict[int, _Session] = {}
        self._ids = itertools.count(1)

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        return {BackupBegin: self.begin, BackupChunk: self.chunk, BackupEnd: self.end,
                RestoreBegin: self.restore_begin, RestoreChunk: self.restore_chunk,
                RestoreFinish: self.restore_finish, RestoreAbort: self.restore_abort}

    # -- sessions -------------------------------------------------------------------------

    def _open(self, pid: str) -> _Session:
        self.dir.mkdir(parents=True, exist_ok=True)
        sid = next(self._ids)
        session = _Session(sid, pid, self.clock.callLater(self.idle_s, self._expire, sid))
        self.sessions[sid] = session
        return session

    def _get(self, sid: int) -> _Session:
        session = self.sessions.get(sid)
        if session is None:
            raise InvalidRequest(f"no backup or restore session {sid} on brick {self.id} "
                                 "(ended, idle too long, or the brick restarted)")
        if session.timer.active():
            session.timer.reset(self.idle_s)
        return session

    def _close(self, sid: int) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        if session.timer.active():
            session.timer.cancel()
        if session.snapshot is not None:
            session.snapshot.path.unlink(missing_ok=True)
        if session.receiver is not None:
            session.receiver.abort()

    def _expire(self, sid: int) -> None:
        session = self.sessions.get(sid)
        if session is None:
            return
        if session.busy:        # verifying or installing: not idle
            session.timer = self.clock.callLater(self.idle_s, self._expire, sid)
            return
        self.log.warn("backup/restore session {sid} of {pid} idle for {idle}s: dropped",
                      sid=sid, pid=session.pid, idle=self.idle_s)
        self.metrics.inc("backup_sessions_expired")
        self._close(sid)

    def close_all(self) -> None:
        for sid in list(self.sessions):
            self._close(sid)

    # -- backup ---------------------------------------------------------------------------

    def _check_source(self, pid: PartitionId) -> None:
        rec = self.maps.map.partition_rg.get(pid)
        if rec is None:
            raise NotServing(f"{pid} is not an active partition of the map")
        if not self.serving(rec.name) or not self.storage.has_partition(str(pid)):
            raise NotServing(f"brick {self.id} does not serve {rec.name} (which holds "
                             f"{pid}): ask an active member")
        if str(pid) in self.damaged:
            raise NotServing(f"brick {self.id}'s replica of {pid} is damaged")

    async def _prepared_resolved(self, pid: PartitionId) -> bool:
        """Until every transaction prepared on ``pid`` now has left the participant (or
        ``PREPARED_WAIT_S`` passed: False).  Later ones may or may not be in the backup."""
        pending = {txid for txid, t in self.participant.active.items() if t.pid == pid}
        deadline = self.clock.seconds() + PREPARED_WAIT_S
        while pending & self.participant.active.keys():
            if self.clock.seconds() >= deadline:
                return False
            await deferLater(self.clock, _POLL_S, lambda: None)
        return True

    async def begin(self, msg: BackupBegin) -> dict[str, Any]:
        pid = parse_pid(msg.pid)
        self._check_source(pid)
        resolved = await self._prepared_resolved(pid)
        self._check_source(pid)
        session = self._open(str(pid))
        session.busy = True
        try:
            info = await take_snapshot(self.storage, str(pid),
                                       self.dir / f"{session.id}-{pid}.sqlite",
                                       self.run_in_thread)
        except KeyError:
            self._close(session.id)
            raise NotServing(f"brick {self.id} holds no replica of {pid}") from None
        except Exception as e:
            self._close(session.id)
            raise Refused(f"snapshot of {pid} on brick {self.id} failed: {e}") from None
        session.busy = False
        if session.id not in self.sessions:       # closed meanwhile
            info.path.unlink(missing_ok=True)
            raise InvalidRequest(f"backup session {session.id} ended during its snapshot")
        session.snapshot = info
        self.metrics.inc("backup_snapshots")
        self.log.info("backup snapshot {sid} of {pid}: {size} bytes at lsn {lsn}",
                      sid=session.id, pid=pid, size=info.size, lsn=info.lsn)
        return {"session": session.id, "pid": str(pid), "size": info.size, "lsn": info.lsn,
                "checksum": info.checksum, "brick": self.id,
                "prepared_resolved": resolved}

    async def chunk(self, msg: BackupChunk) -> dict[str, Any]:
        session = self._get(msg.session)
        info = session.snapshot
        if info is None:
            raise InvalidRequest(f"session {msg.session} is a restore, not a backup")
        if msg.offset > info.size:
            raise InvalidRequest(f"offset {msg.offset} past the snapshot's {info.size} bytes")
        data, checksum = await self.run_in_thread(read_chunk, info.path, msg.offset,
                                                  msg.size)
        self.metrics.inc("backup_bytes_sent", len(data))
        return {"data": data, "checksum": checksum}

    def end(self, msg: BackupEnd) -> dict[str, Any]:
        self._close(msg.session)
        return {}

    # -- restore --------------------------------------------------------------------------

    def _check_target(self, pid: PartitionId) -> None:
        if pid not in self.maps.my_partitions() or not self.storage.has_partition(str(pid)):
            raise NotServing(f"brick {self.id} holds no replica of {pid}: restore into the "
                             "members of the partition's RG")

    def restore_begin(self, msg: RestoreBegin) -> dict[str, Any]:
        pid = parse_pid(msg.pid)
        self._check_target(pid)
        session = self._open(str(pid))
        try:
            session.receiver = _Receiver(self.dir, str(pid), session.id, msg.size,
                                         msg.checksum)
        except CopyFailed as e:
            self._close(session.id)
            raise Refused(str(e)) from None
        return {"session": session.id}

    def restore_chunk(self, msg: RestoreChunk) -> dict[str, Any]:
        session = self._get(msg.session)
        receiver = session.receiver
        if receiver is None or session.busy:
            raise InvalidRequest(f"session {msg.session} takes no chunk now")
        try:
            receiver.write(msg.offset, msg.data, msg.checksum)
        except CopyFailed as e:
            self._close(msg.session)
            raise Refused(str(e)) from None
        self.metrics.inc("restore_bytes_received", len(msg.data))
        return {}

    async def restore_finish(self, msg: RestoreFinish) -> dict[str, Any]:
        session = self._get(msg.session)
        receiver = session.receiver
        if receiver is None or session.busy:
            raise InvalidRequest(f"session {msg.session} cannot be finished now")
        session.busy = True
        pid = PartitionId.parse(session.pid)
        fenced = False
        try:
            receiver.finish(fsync=self.fsync)
            try:
                summary: dict[str, int] = await self.run_in_thread(scan_rows, receiver.path,
                                                                   session.pid)
            except ChecksumMismatch as e:
                raise Refused(f"the uploaded row of key {e.key[:64]!r} of {pid} fails its "
                              "checksum: the backup file is damaged") from None
            except (ValueError, sqlite3.Error) as e:
                raise Refused(f"the uploaded file of {pid} is unusable: {e}") from None
            self._check_target(pid)
            # No write between the emptiness check and the install.
            self.participant.fence([pid])
            fenced = True
            if self.participant.busy([pid]):
                raise Refused(f"brick {self.id}'s replica of {pid} has transactions in "
                              "flight: a restore goes only into an empty cluster")
            path = self.storage.partition_path(session.pid)
            if not await self.run_in_thread(_empty, path):
                raise Refused(f"brick {self.id}'s replica of {pid} is not empty: a restore "
                              "never overwrites data (restore into a new cluster)")
            trash = receiver.install(self.storage)
            if trash is not None:       # the empty replica's file: small, freed at once
                trash.unlink(missing_ok=True)
        except CopyFailed as e:
            raise Refused(str(e)) from None
        finally:
            if fenced:
                self.participant.unfence([pid])
            session.busy = False
            self._close(msg.session)
        self.metrics.inc("restore_installs")
        self.log.info("restored {pid} from a backup: {rows} rows, lsn {lsn}", pid=pid,
                      rows=summary["rows"], lsn=summary["last_lsn"])
        return {"pid": session.pid, **summary}

    def restore_abort(self, msg: RestoreAbort) -> dict[str, Any]:
        self._close(msg.session)
        return {}


class _Receiver(SnapshotReceiver):
    """A receiver whose temporary file is named for its session (two uploads of one
    partition must not share a file); installed under the partition's own id."""

    def __init__(self, dest_dir: Path, pid: str, sid: int, size: int,
                 checksum: int) -> None:
        super().__init__(dest_dir, pid, size, checksum)
        # The base opened <pid>.sqlite.incoming; move it aside under the session's name.
        named = self.path.with_name(f"{sid}-{self.path.name}")
        self.path.rename(named)
        self.path = named
