"""Partition files that cannot be read (issue 13): set aside, never served, copied again.

A replica file truncated, or with its header overwritten, made SQLite raise "file is not
a database" or "database disk image is malformed": the brick refused to start (naming no
file), or answered every read of the partition with an internal error.  Now:

* at start, before the storage opens anything, every partition file is probed
  (:func:`probe`); an unreadable one is moved to ``data_dir/quarantine`` as
  ``<pid>.<unix ms>.damaged.sqlite`` (the quarantine's directory, kept as long as its
  other files, never restored by ``dds-admin repair``) and the log says which file and
  why;
* while the brick runs, a read that meets such an error (:func:`unreadable`) does the
  same (:meth:`Damage.found`): the partition's transactions are dropped (its replica is
  replaced by a copy, whose data carries their outcome) and an empty replica takes its
  place;
* either way the brick re-copies the partition's RG from an active member by the
  recovery path (``bricks/recovery.py``: marked recovering, snapshot, delta,
  readmission), and until that is done answers requests for the partition with
  ``ReplicaDamaged`` (the library reads from another replica).

A *needs-copy* marker (``quarantine/<pid>.needs-copy``) says that the replica here is
not the data it should be, until a copy replaced it: without it, a brick restarted in
between would take its empty replica for a good one when no other member serves the RG
("whole-RG restart", which serves what the members hold without copying).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.logger import Logger

from dds.errors import DDSError, ReplicaDamaged
from dds.partition import PartitionId

from dds.bricks.mapstate import parse_pid
from dds.bricks.partstore import PID_RE, SUFFIX
from dds.bricks.needscopy import MARKER, QUARANTINE_DIR, mark, marked

if TYPE_CHECKING:       # the participant imports ``unreadable`` from here
    from dds.bricks.context import BrickContext
    from dds.bricks.recovery import Recoveries

log = Logger()

DAMAGED = ".damaged"
#: SQLite's own names for a file that is not (or no longer) a database it can read.
_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_MESSAGES = ("file is not a database", "database disk image is malformed")


def unreadable(error: BaseException) -> bool:
    """Whether ``error`` says a partition file's content is damaged (not a full disk,
    not a lock, not a missing file: those are other stories)."""
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    name = getattr(error, "sqlite_errorname", "") or ""
    return name.startswith(_CODES) or any(m in str(error) for m in _MESSAGES)


def probe(path: Path, deep: bool = False) -> str | None:
    """Why the partition file at ``path`` cannot be read, or None if it looks sound: the
    queries the storage runs when it opens a file, and a file shorter than the pages its
    header counts (a truncation; checked only without a WAL, whose frames may hold the
    file's tail).  Cheap: no page is read beyond what opening reads.  ``deep``: SQLite's
    ``quick_check`` too, which reads every page (only when opening the storage failed,
    to find the file it could not read)."""
    try:
        conn = sqlite3.connect(str(path), isolation_level=None)
    except sqlite3.Error as e:
        return str(e)
    try:
        if deep:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                return "quick_check: " + "; ".join(problems)
        conn.execute("SELECT name FROM sqlite_master").fetchall()
        conn.execute("SELECT name, value FROM meta").fetchall()
        conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM kv").fetchone()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.Error as e:
        return str(e) if unreadable(e) else None
    finally:
        conn.close()
    wal = Path(str(path) + "-wal")
    size = path.stat().st_size
    if (not wal.exists() or wal.stat().st_size == 0) and size < pages * page_size:
        return (f"truncated: {size} bytes, its header counts {pages} pages of "
                f"{page_size} bytes")
    return None


def _dest(qdir: Path, pid: str) -> Path:
    return qdir / f"{pid}.{int(time.time() * 1000)}{DAMAGED}{SUFFIX}"


def set_aside_unreadable(data_dir: Path, deep: bool = False) -> dict[str, str]:
    """At start, before the storage opens anything: move every unreadable partition file
    (with its -wal, -shm) to the quarantine directory and mark its partition as needing
    a copy (``deep``: see :func:`probe`).  Returns ``{pid: why}`` of the files moved."""
    data_dir = Path(data_dir)
    qdir = data_dir / QUARANTINE_DIR
    moved: dict[str, str] = {}
    for path in sorted(data_dir.glob("p*" + SUFFIX)):
        pid = path.name[: -len(SUFFIX)]
        if not PID_RE.match(pid):
            continue
        why = probe(path, deep)
        if why is None:
            continue
        qdir.mkdir(parents=True, exist_ok=True)
        mark(qdir, pid, f"its file was unreadable: {why}")
        dest = _dest(qdir, pid)
        os.replace(path, dest)
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            if side.exists():
                os.replace(side, Path(str(dest) + suffix))
        log.error("partition file {file} is unreadable ({why}): moved to {dest}; the "
                  "partition is copied again from its RG", file=str(path), why=why,
                  dest=str(dest))
        moved[pid] = why
    return moved


class Damage:
    """The brick's damaged partitions: found, set aside, re-copied by the recovery of
    their RG, which copies them and never reconciles them (``Recoveries.must_copy``)."""

    def __init__(self, ctx: BrickContext, recoveries: Recoveries) -> None:
        self.id = ctx.id
        self.qdir = Path(ctx.data_dir) / QUARANTINE_DIR
        self.metrics = metrics = ctx.metrics
        self.storage = ctx.storage
        self.participant = ctx.participant
        self.maps = ctx.maps
        self.recoveries = recoveries
        #: Partitions whose replica here is not to be served until a copy replaced it,
        #: and why.
        self.damaged: dict[str, str] = marked(ctx.data_dir)
        metrics.gauge("damaged_replicas", lambda: len(self.damaged))
        recoveries.must_copy = self.must_copy
        recoveries.copied = self.copied

    def start(self) -> None:
        """With the map loaded: re-copy every damaged partition an RG of mine lists."""
        listed = {str(p) for p in self.maps.my_partitions()}
        for pid in sorted(set(self.damaged) - listed):     # nothing to copy: forget it
            del self.damaged[pid]
            (self.qdir / (pid + MARKER)).unlink(missing_ok=True)
        for pid, why in sorted(self.damaged.items()):
            self._recopy(pid, why)

    def must_copy(self, rg: str) -> str | None:
        """Why the RG's replicas here must be copied, never reconciled, or None."""
        rec = self.maps.map.rgs.get(rg)
        if rec is None:
            return None
        damaged = [str(e.pid) for e in rec.partitions if str(e.pid) in self.damaged]
        return f"replicas needing a copy: {', '.join(damaged)}" if damaged else None

    def _recopy(self, pid: str, why: str) -> None:
        """Re-copy the RG of mine that lists ``pid`` (the recovery path, DESIGN §7)."""
        parsed = parse_pid(pid)
        for rec in self.maps.map.rgs.values():
            if rec.member_state(self.id) is not None and \
                    rec.partition_state(parsed) is not None:
                self.recoveries.ensure(rec.name, why=f"the replica of {pid} needs a copy "
                                       f"({why})")

    def started(self, moved: dict[str, str]) -> None:
        """The files ``set_aside_unreadable`` moved before the storage opened."""
        for pid, why in moved.items():
            self.damaged[pid] = why
            self.metrics.inc("replicas_damaged_total")

    def error(self, pid: str) -> ReplicaDamaged:
        why = self.damaged.get(pid, "unreadable")
        return ReplicaDamaged(f"the replica of {pid} here is damaged ({why}); it is being "
                              "copied again from its RG: read another replica")

    def read_error(self, pid: str, error: BaseException) -> DDSError:
        """``error`` met reading ``pid``'s file: ``ReplicaDamaged`` (the file is set
        aside and the partition copied again) if it says the file is damaged; any other
        error is raised as it was (an internal error)."""
        if unreadable(error):
            return self.found(pid, error)
        raise error

    def found(self, pid: str, error: BaseException) -> ReplicaDamaged:
        """A read of ``pid`` met ``error`` (``unreadable``): set the file aside, serve
        an empty replica blocked by the re-copy; the error to answer."""
        if pid in self.damaged:
            return self.error(pid)
        why = str(error)
        self.damaged[pid] = why
        self.metrics.inc("replicas_damaged_total")
        dest = _dest(self.qdir, pid)
        try:
            mark(self.qdir, pid, f"its file was unreadable: {why}")
            self.storage.quarantine_partition(pid, dest)
            log.error("partition file of {pid} is unreadable ({why}): moved to {dest}; "
                      "copying the partition again from its RG", pid=pid, why=why,
                      dest=str(dest))
        except (OSError, sqlite3.Error) as e:
            log.error("partition file of {pid} is unreadable ({why}) and could not be "
                      "moved aside: {error}; copying the partition again from its RG",
                      pid=pid, why=why, error=repr(e))
        self.participant.forget_partition(PartitionId.parse(pid))
        try:
            self.storage.open_partition(pid)
        except (OSError, sqlite3.Error, ValueError) as e:
            log.error("no new replica of {pid}: {error}", pid=pid, error=repr(e))
        self._recopy(pid, why)
        return self.error(pid)

    def copied(self, pids: set[str]) -> None:
        """A recovery replaced these replicas by copies: they are sound again."""
        for pid in sorted(pids & set(self.damaged)):
            del self.damaged[pid]
            (self.qdir / (pid + MARKER)).unlink(missing_ok=True)
            self.metrics.inc("replicas_damaged_recopied_total")
            log.warn("replica of {pid} copied again from its RG: served again", pid=pid)
