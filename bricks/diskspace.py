"""A brick whose disk is full steps out of the write path, and back in when space returns
(issue 13).

Writes to a full brick's RGs used to fail with an internal error until space was freed,
with a hundred error lines a second: write-all needs every active member, and the full
one could not stage anything.  Now the brick is in one of two states::

    FREE ──free space below brick.min_free_mb, or a write failed for lack of it──▶ FULL
      ▲                                                                          │
      └───────── free space at or above the resume level (checked periodically) ┘

While FULL it refuses every PREPARE with ``StorageFull`` before touching anything (nothing
applied), and asks each RG where it is active to exclude it (``rg_change`` to another
active member; the voters, who check a suspect before excluding it, accept one that says
its disk is full: ``Brick.ping``).  Writes to its RGs then go on with the other members.
Its recoveries wait (``Recoveries.hold``): a copy into a full disk only fails.  Back to
FREE, the recovery of each RG it was excluded from runs (DESIGN §7: marked recovering,
copy, delta, readmission) and it serves again.

Its lines about it are rate-limited (``dds.ratelimit``); ``storage_full`` (gauge, 0/1) and
``storage_full_refusals_total`` count it in ``/metrics``.
"""

from __future__ import annotations

import enum
import errno
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds.errors import DDSError, StorageFull
from dds.messages import RGChange
from dds.metrics import Metrics
from dds.ratelimit import LogLimiter
from dds.records import RGRecord, record_from_wire

if TYPE_CHECKING:
    from dds.bricks.context import BrickContext

#: Free space needed to leave FULL, beyond ``min_free``: hysteresis, so that a brick at
#: the edge does not flap in and out of its RGs.
RESUME_MARGIN_BYTES = 1 << 20
#: While FULL, free space is looked at at least this often (the configured interval may
#: be long; a failed write, not the check, may have found the disk full).
FULL_CHECK_S = 1.0
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class State(enum.Enum):
    FREE = "free"
    FULL = "full"


def full_error(error: BaseException) -> bool:
    """Whether ``error`` says the disk (or the quota) is full: ``ENOSPC``/``EDQUOT``, or
    SQLite's "database or disk is full"."""
    if isinstance(error, OSError):
        return error.errno in _FULL_ERRNOS
    if isinstance(error, sqlite3.OperationalError):
        name = getattr(error, "sqlite_errorname", "") or ""
        return name.startswith("SQLITE_FULL") or "database or disk is full" in str(error)
    return False


class DiskSpace:
    log = Logger()

    def __init__(self, brick_id: str, data_dir: Path, clock: IReactorTime, metrics: Metrics,
                 *, min_free_bytes: int, check_s: float,
                 on_full: Callable[[], None], on_free: Callable[[], None],
                 statvfs: Callable[[Path], os.statvfs_result] = os.statvfs) -> None:
        self.id = brick_id
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.metrics = metrics
        self.min_free = min_free_bytes
        self.resume_at = min_free_bytes + max(min_free_bytes, RESUME_MARGIN_BYTES)
        self.on_full = on_full
        self.on_free = on_free
        self.statvfs = statvfs
        self.state = State.FREE
        #: Why the brick is full (for the refusals and ``status``).
        self.reason = ""
        self.since = 0.0
        self._lines = LogLimiter(clock, self.log, per_window=3, window_s=30.0)
        self._check = LoopingCall(self.check)
        self._check.clock = clock
        self._check_s = check_s
        self._running = False
        metrics.gauge("storage_full", lambda: 1 if self.full else 0)
        metrics.gauge("storage_free_bytes", lambda: self.free_bytes() or 0)

    @property
    def full(self) -> bool:
        return self.state is State.FULL

    def start(self) -> None:
        self._running = True
        self._check.start(self._check_s, now=True)

    def stop(self) -> None:
        self._running = False
        if self._check.running:
            self._check.stop()

    def _every(self, seconds: float) -> None:
        """Look at free space every ``seconds`` from now on (if started).  On the next
        turn: this runs inside the check itself, which must not restart its own loop."""
        def restart() -> None:
            if not self._running or seconds == self._check.interval:
                return
            if self._check.running:
                self._check.stop()
            self._check.start(seconds, now=False)
        self.clock.callLater(0, restart)

    def free_bytes(self) -> int | None:
        """Bytes an unprivileged writer may still use in the data directory's filesystem
        (None if it cannot be asked)."""
        try:
            st = self.statvfs(self.data_dir)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def check(self) -> None:
        """The periodic look at free space; while FULL, also asks again to be excluded
        from the RGs that still list it active (a request may have been refused)."""
        free = self.free_bytes()
        if free is None:
            return
        if not self.full:
            if free < self.min_free:
                self._enter(f"{free} bytes free in {self.data_dir}, below "
                            f"brick.min_free_mb ({self.min_free >> 20} MiB)")
        elif free >= self.resume_at:
            self._leave(free)
        elif self._running:
            self.on_full()

    def saw(self, error: BaseException) -> bool:
        """A write of this brick failed with ``error``: True if it is (now) full.  Any
        other OSError (a short write says no errno) looks at free space at once."""
        if full_error(error):
            if not self.full:
                self._enter(f"a write failed: {error}")
            return True
        if isinstance(error, OSError) and not self.full:
            self.check()
        return self.full

    def refusal(self) -> StorageFull:
        """The answer to a write while FULL (counted)."""
        self.metrics.inc("storage_full_refusals_total")
        return StorageFull(f"brick {self.id} cannot stage writes: its disk is full "
                           f"({self.reason}); it steps out of its RGs until space returns")

    def warn(self, fmt: str, **fields: object) -> None:
        """A line about the full disk, at a bounded rate."""
        self._lines.warn(fmt, **fields)

    def _enter(self, why: str) -> None:
        self.state = State.FULL
        self.reason = why
        self.since = self.clock.seconds()
        self.metrics.inc("storage_full_episodes_total")
        self._every(min(self._check_s, FULL_CHECK_S))
        self.log.error("brick {brick}: disk full ({why}): refusing writes and stepping "
                       "out of its RGs until at least {resume} bytes are free",
                       brick=self.id, why=why, resume=self.resume_at)
        if self._running:
            self.on_full()

    def _leave(self, free: int) -> None:
        self.state = State.FREE
        self._every(self._check_s)
        self.log.warn("brick {brick}: {free} bytes free again after {seconds:.1f}s full: "
                      "re-syncing its RGs and serving again", brick=self.id, free=free,
                      seconds=self.clock.seconds() - self.since)
        self.reason = ""
        self.on_free()


class StepOut:
    """A full brick's requests to be excluded from each RG where it is active: one
    ``rg_change`` per RG at a time, to the first other active member (as a library's
    request goes, so that requests about one member meet at one coordinator)."""

    log = Logger()

    def __init__(self, ctx: BrickContext, *, timeout_s: float) -> None:
        self.id = ctx.id
        self.maps = ctx.maps
        self.peer = ctx.peer
        self.metrics = ctx.metrics
        self.timeout_s = timeout_s
        self._asking: set[str] = set()

    def ask(self, disk: DiskSpace) -> None:
        """Ask every RG that still lists this brick active (again at each check while
        the disk stays full: a request may have been refused)."""
        for rec in self.maps.map.rgs.values():
            if self.id in rec.active_members and rec.name not in self._asking:
                self._asking.add(rec.name)
                d = ensureDeferred(self._ask(rec, disk))
                d.addBoth(self._asked, rec.name)

    def _asked(self, result: object, rg: str) -> None:
        self._asking.discard(rg)
        if isinstance(result, Failure):
            self.log.failure("asking to be excluded from {rg} failed", result, rg=rg)

    async def _ask(self, rec: RGRecord, disk: DiskSpace) -> None:
        for other in [b for b in rec.active_members if b != self.id]:
            try:
                conn = await self.peer(other)
                reply = await conn.send(RGChange(
                    rg=rec.name, version=rec.version, fp=rec.fp, member=self.id,
                    state="excluded", reason=f"disk full: {disk.reason}"),
                    timeout=self.timeout_s)
            except DDSError as e:
                disk.warn("asking {other} to exclude {brick} from {rg} (disk full) failed: "
                          "{error}", other=other, brick=self.id, rg=rec.name,
                          error=e.message)
                continue
            self.metrics.inc("storage_full_exclusions_total")
            disk.warn("excluded from {rg} while the disk is full", rg=rec.name)
            try:
                self.maps.merge([record_from_wire(reply["record"])],
                                source=f"rg_change:{other}")
            except (ValueError, KeyError, TypeError, OSError) as e:
                # OSError: the map file cannot be written on a full disk; gossip brings
                # the record again, and the recovery check runs on a timer anyway.
                disk.warn("could not adopt {rg}'s record after the exclusion: {error}",
                          rg=rec.name, error=repr(e))
            return
