"""A brick re-syncing its replicas of an RG (DESIGN §7): the recovering side.

One ``Recovery`` per RG, an explicit state machine::

    DISCOVERING ─ a member serves ─▶ MARKING ─▶ COPYING ─▶ DELTA ─▶ READMITTING ─▶ DONE
         │                      (me: recovering) (snapshots) (fenced)  (record change)
         │                              └▶ WAITING ─┘ (while a partition is incoming)
         └─ nobody serves, I am active (whole-RG restart) ─▶ RECONCILING ─▶ DONE

Any failure (a source gone, a stream cut, a checksum mismatch, a full disk) cancels the
copy session at the source, deletes what was received, and the machine starts again
from DISCOVERING after a backoff.  The stale replica is replaced only by a complete,
verified snapshot, so a failed attempt leaves it as it was.

Until its Recovery is DONE the brick serves nothing of that RG (``blocked``): no reads,
no YES votes.  Discovery first asks the other members for their record, so a brick that
was excluded while it was down learns it before deciding anything.

Reorganizations (DESIGN §8): a partition *incoming* in the RG is being filled by a move
or a split for the members that job planned with, not for a brick that recovers
meanwhile.  So before copying the brick waits (``WAITING``) until its RG lists no
incoming partition, and the source refuses the readmission if the RG's partitions
changed since the copy began (a cut-over, a drop) or one is incoming again: the next
attempt copies the new layout.  Otherwise a member readmitted during a move would serve
the moved-in partition without the writes the move copied to the others.

Whole-RG restart: when no member serves and this brick is still active in the newest
record a quorum of members reports, every member that was active holds every
acknowledged write (write-all, and in ``disk``/``fsync`` mode it is durable), so the
brick serves again once the transactions it restored as prepared are resolved.  In
``memory`` mode the unflushed tail may be lost; see ``docs/operations.md``.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from dds import failpoints
from dds.deferreds import gather, sleep
from dds.errors import DDSError
from dds.fencerenew import LAPSE_MS, CopyFenceRenew, FenceKeeper
from dds.messages import CopyBegin, Message, RGChange, RGStatus
from dds.records import RGRecord, record_from_wire
from dds.replies import RGStatusReply

from dds.bricks.context import BrickContext
from dds.bricks.copy.layout import incoming as _incoming, partition_layout
from dds.bricks.copy.pull import RPC_TIMEOUT_S, Pull, PullFailed
from dds.bricks.copy.snapshot import CopyFailed

BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
#: While its RG lists an incoming partition, a recovering brick asks again this often.
WAIT_INCOMING_S = 0.25
#: While recoveries are held (``Recoveries.hold``), each looks again this often.
HOLD_CHECK_S = 0.5


class Phase(enum.Enum):
    DISCOVERING = "discovering"
    MARKING = "marking"
    WAITING = "waiting"
    COPYING = "copying"
    DELTA = "delta"
    READMITTING = "readmitting"
    RECONCILING = "reconciling"
    RETRYING = "retrying"
    DONE = "done"


class RecoveryAborted(Exception):
    """This attempt cannot go on; the message says why.  The next attempt starts over."""


@attrs.define
class Recovery:
    """Progress of one RG's recovery, as ``dds-admin status`` shows it."""

    rg: str
    phase: Phase = Phase.DISCOVERING
    source: str | None = None
    attempts: int = 0
    started: float = 0.0
    copy_s: float | None = None
    fenced_s: float | None = None
    last_error: str | None = None
    pull: Pull | None = None
    #: How the last attempt ended: "copied" or "reconciled" (whole-RG restart).
    how: str | None = None
    running: Deferred[None] | None = None
    #: The partitions the last copy installed.
    copied: list[str] = attrs.field(factory=list)

    def to_wire(self) -> dict[str, Any]:
        pull = self.pull
        return {"rg": self.rg, "phase": self.phase.value, "source": self.source,
                "bytes_total": pull.bytes_total if pull else 0,
                "bytes_done": pull.bytes_done if pull else 0,
                "attempts": self.attempts, "copy_s": self.copy_s,
                "fenced_s": self.fenced_s, "last_error": self.last_error, "how": self.how}


class Recoveries:
    log = Logger()

    def __init__(self, ctx: BrickContext, work_dir: Path, *, fence_whole_copy: bool) -> None:
        self.ctx = ctx
        self.id = ctx.id
        self.maps = ctx.maps
        self.participant = ctx.participant
        self.peer = ctx.peer
        self.clock = ctx.clock
        self.metrics = ctx.metrics
        self.work_dir = Path(work_dir)
        #: Copies fence writes for the whole copy by default (``full_lease`` on the wire).
        self.fence_whole_copy = fence_whole_copy
        self.durability = ctx.durability
        self.by_rg: dict[str, Recovery] = {}
        #: RGs this brick must not serve until their recovery is done.
        self.blocked: set[str] = set()
        self._stopping = False
        #: Why this brick's replicas of an RG must be copied, never reconciled (one was
        #: unreadable and is empty now: ``bricks/damage.py``), or None.
        self.must_copy: Callable[[str], str | None] = lambda rg: None
        #: Called with the partitions a recovery replaced by copies, once it is done.
        self.copied: Callable[[set[str]], None] = lambda pids: None
        #: Why recoveries must wait now (a full disk: ``bricks/diskspace.py``), or None.
        self.hold: Callable[[], str | None] = lambda: None
        # Copies a crash interrupted: nothing resumes them.
        if self.work_dir.exists():
            for stale in self.work_dir.glob("*.incoming"):
                stale.unlink(missing_ok=True)

    # -- what to recover ---------------------------------------------------------------

    def after_restart(self) -> None:
        """A restarted brick treats every RG it belongs to as stale."""
        for rec in self.maps.map.rgs.values():
            if rec.member_state(self.id) is not None:
                self.blocked.add(rec.name)
                self.ensure(rec.name, why="restarted")

    def check(self) -> None:
        """Start recovery of every RG where the map says this brick is not active."""
        for rec in self.maps.map.rgs.values():
            state = rec.member_state(self.id)
            if state in ("recovering", "excluded"):
                self.ensure(rec.name, why=f"{state} in {rec.name} v{rec.version}")

    def ensure(self, rg: str, why: str, fence_whole_copy: bool | None = None) -> bool:
        """Start recovery of ``rg`` unless it is running; True if it was started."""
        r = self.by_rg.get(rg)
        if r is not None and r.running is not None:
            return False
        if self._stopping:
            return False
        r = self.by_rg[rg] = Recovery(rg, started=self.clock.seconds())
        self.blocked.add(rg)
        self.log.warn("recovering {rg}: {why}", rg=rg, why=why)
        self.metrics.inc("recoveries_started_total")
        r.running = ensureDeferred(self._loop(
            r, self.fence_whole_copy if fence_whole_copy is None else fence_whole_copy))
        r.running.addErrback(lambda f: self.log.failure("recovery of {rg} crashed",
                                                        failure=f, rg=rg))
        return True

    def stop(self) -> None:
        self._stopping = True

    def status(self) -> dict[str, Any]:
        return {rg: r.to_wire() for rg, r in self.by_rg.items()}

    # -- the machine -------------------------------------------------------------------

    async def _loop(self, r: Recovery, fence_whole_copy: bool) -> None:
        try:
            while not self._stopping:
                held = self.hold()
                if held is not None:
                    # Not an attempt: nothing is tried (a copy into a full disk fails).
                    r.phase = Phase.WAITING
                    r.last_error = held
                    await sleep(self.clock, HOLD_CHECK_S)
                    continue
                r.attempts += 1
                try:
                    await self._attempt(r, fence_whole_copy)
                except (RecoveryAborted, PullFailed, CopyFailed, DDSError, KeyError,
                        TypeError, ValueError) as e:
                    # The last three: a reply of the wrong shape (a confused or hostile
                    # peer); the attempt is abandoned like any other.
                    message = (e.message if isinstance(e, DDSError) else
                               str(e) if isinstance(e, (RecoveryAborted, PullFailed,
                                                        CopyFailed)) else
                               f"malformed reply: {e!r}")
                    r.last_error = message
                    r.phase = Phase.RETRYING
                    self.metrics.inc("recovery_attempts_failed_total")
                    delay = BACKOFF_S[min(r.attempts - 1, len(BACKOFF_S) - 1)]
                    self.log.warn("recovery of {rg} (attempt {n}) failed: {error}; "
                                  "retrying in {delay}s", rg=r.rg, n=r.attempts,
                                  error=message, delay=delay)
                    await sleep(self.clock, delay)
                    continue
                r.phase = Phase.DONE
                self.blocked.discard(r.rg)
                if r.how == "copied":
                    self.copied(set(r.copied))
                self.metrics.inc("recoveries_done_total")
                self.log.warn("{rg} re-synced after {n} attempt(s); serving it again",
                              rg=r.rg, n=r.attempts)
                return
        finally:
            r.running = None

    async def _attempt(self, r: Recovery, fence_whole_copy: bool) -> None:
        r.phase = Phase.DISCOVERING
        rec, serving, reconciled = await self._discover(r.rg)
        me = rec.member_state(self.id)
        if me is None:
            self.log.info("no longer a member of {rg}; nothing to recover", rg=r.rg)
            return
        sources = [b for b in serving if b != self.id and b in rec.active_members]
        # Whole-RG restart: nobody serves, or only members that came back the same way.
        # Still active in the newest record, this brick took part in every write that
        # committed, and (unless in memory mode) kept it; copying would change nothing.
        must_copy = self.must_copy(r.rg)
        together = me == "active" and self.durability != "memory" and all(
            b in reconciled for b in sources) and must_copy is None
        if not sources or together:
            if must_copy is not None:
                raise RecoveryAborted(f"no active member of {r.rg} serves it now, and this "
                                      f"brick's replicas need a copy ({must_copy})")
            if me == "active":
                await self._reconcile(r, rec)
                r.how = "reconciled"
                return
            raise RecoveryAborted(f"no active member of {r.rg} serves it now")
        source = r.source = sources[0]
        if me != "recovering":
            r.phase = Phase.MARKING
            rec = await self._mark_recovering(rec, source)
        if _incoming(rec):
            rec, source = await self._wait_for_incoming(r)
        await self._copy(r, rec, source, fence_whole_copy)
        r.how = "copied"

    async def _wait_for_incoming(self, r: Recovery) -> tuple[RGRecord, str]:
        """Until the RG lists no incoming partition (a move or split into it is cut over
        or rolled back): the newest record then, and a source serving it."""
        r.phase = Phase.WAITING
        self.log.info("recovery of {rg} waits: {pids} incoming", rg=r.rg,
                      pids=_incoming(self.maps.map.rgs[r.rg]))
        while True:
            await sleep(self.clock, WAIT_INCOMING_S)
            if self._stopping:
                raise RecoveryAborted("brick stopping")
            rec, serving, _ = await self._discover(r.rg)
            if rec.member_state(self.id) != "recovering":
                raise RecoveryAborted(f"{r.rg} v{rec.version} no longer lists me recovering")
            if _incoming(rec):
                continue
            sources = [b for b in serving if b != self.id and b in rec.active_members]
            if not sources:
                raise RecoveryAborted(f"no active member of {r.rg} serves it now")
            r.source = sources[0]
            return rec, sources[0]

    def reconciled(self, rg: str) -> bool:
        """Whether this brick serves ``rg`` again after a whole-RG restart."""
        r = self.by_rg.get(rg)
        return r is not None and r.phase is Phase.DONE and r.how == "reconciled"

    async def _discover(self, rg: str) -> tuple[RGRecord, list[str], set[str]]:
        """The newest record of ``rg`` among the members, and who serves it.  Needs
        answers from a quorum of the newest record's active members (counting this
        brick), so an exclusion made while it was away is found."""
        rec = self.maps.map.rgs.get(rg)
        if rec is None:
            raise RecoveryAborted(f"{rg} is not in the map")
        others = [m.brick for m in rec.members if m.brick != self.id]
        replies = await gather([Deferred.fromCoroutine(self._rg_status(b, rg))
                                 for b in others])
        answered = {self.id}
        serving: list[str] = []
        reconciled: set[str] = set()
        for brick, reply in zip(others, replies):
            if isinstance(reply, BaseException):
                continue
            answered.add(brick)
            if reply.record is not None:
                try:
                    self.maps.merge([record_from_wire(reply.record)],
                                    source=f"rg_status:{brick}")
                except ValueError:
                    continue
            if reply.serving:
                serving.append(brick)
            if reply.reconciled:
                reconciled.add(brick)
        rec = self.maps.map.rgs[rg]
        heard = [b for b in rec.active_members if b in answered]
        if len(heard) < rec.quorum:
            raise RecoveryAborted(f"heard from {sorted(answered)}, not from a quorum of "
                                  f"{rg}'s active members {list(rec.active_members)}")
        return rec, serving, reconciled

    async def _mark_recovering(self, rec: RGRecord, source: str) -> RGRecord:
        reply = await self._call_or_raise(source, RGChange(
            rg=rec.name, version=rec.version, fp=rec.fp, member=self.id,
            state="recovering", reason="re-syncing after a restart or exclusion"),
            RPC_TIMEOUT_S)
        self.maps.merge([record_from_wire(reply["record"])], source=f"rg_change:{source}")
        new = self.maps.map.rgs[rec.name]
        if new.member_state(self.id) != "recovering":
            raise RecoveryAborted(f"{rec.name} v{new.version} does not list me recovering")
        return new

    async def _reconcile(self, r: Recovery, rec: RGRecord) -> None:
        r.phase = Phase.RECONCILING
        pids = {e.pid for e in rec.partitions}
        if self.durability == "memory":
            self.log.warn("whole-RG restart of {rg} in memory durability: writes not yet "
                          "flushed when the bricks stopped are lost", rg=rec.name)
        while any(t.pid in pids for t in self.participant.active.values()):
            await sleep(self.clock, 0.1)       # restored transactions: termination
            if self._stopping:
                raise RecoveryAborted("brick stopping")
        self.log.warn("{rg}: no member was serving it; this brick was active and holds "
                      "every acknowledged write, so it serves again", rg=rec.name)

    async def _copy(self, r: Recovery, rec: RGRecord, source: str,
                    fence_whole_copy: bool) -> None:
        """The copy (``dds.bricks.copy``): snapshots, catch-up, the last delta under the
        source's fence, and the readmission the source runs under it."""
        r.phase = Phase.COPYING
        began = self.clock.seconds()
        pull = Pull(self.ctx, source, self.work_dir)
        r.pull = pull
        try:
            begun = await pull.begin(CopyBegin(rg=rec.name, target=self.id,
                                               full_lease=fence_whole_copy))
            copied = record_from_wire(begun.record)     # what the session copies
            if not isinstance(copied, RGRecord):
                raise RecoveryAborted(f"copy_begin to {source}: not an RG record")
            await pull.copy()
            r.copied = [str(snap["pid"]) for snap in pull.snapshots]
            r.copy_s = self.clock.seconds() - began
            r.phase = Phase.DELTA
            if not fence_whole_copy:
                await pull.catch_up()
            # The source refuses the readmission if the RG's partitions changed since
            # the copy began, or one is incoming: do not make it fence writes for that.
            now = self.maps.map.rgs[rec.name]
            if partition_layout(now) != partition_layout(copied) or _incoming(now):
                raise RecoveryAborted(f"{rec.name}'s partitions changed during the copy "
                                      f"(v{copied.version} to v{now.version}): copy again")
            # Fenced for the whole copy, the source fenced writes at copy_begin.
            fenced_at = began if fence_whole_copy else self.clock.seconds()
            # The source's fence lives only while this brick renews it: killed here, it
            # costs writes ~2 s, not timeouts.copy_fence_ms (dds.fencerenew).
            keeper = FenceKeeper(self.clock, lambda _b, msg, t: pull.call(msg, t), [
                (source, CopyFenceRenew(session=pull.session or 0, lapse_ms=LAPSE_MS))])
            await keeper.start()
            try:
                await pull.fence()
                if failpoints.ARMED:
                    failpoints.fire("recovery.after_fence")
                await pull.delta()
                r.phase = Phase.READMITTING
                # No full-table checksums here: they would run under the fence, and the
                # snapshot (whole-file xxh64) and each delta row were verified already.
                done = await pull.readmit()
            finally:
                keeper.stop()
            r.fenced_s = self.clock.seconds() - fenced_at
            self.maps.merge([record_from_wire(done["record"])], source=f"readmit:{source}")
            if self.maps.map.rgs[rec.name].member_state(self.id) != "active":
                raise RecoveryAborted("readmission did not make this brick active")
            self.metrics.inc("recovery_bytes_total", pull.bytes_total)
            self.log.warn("{rg}: copied {bytes} bytes from {source} in {copy:.2f}s; writes "
                          "were fenced {fenced:.3f}s", rg=rec.name, bytes=pull.bytes_total,
                          source=source, copy=r.copy_s, fenced=r.fenced_s)
        except Exception as e:
            pull.cancel(repr(e))
            raise

    async def _call(self, brick: str, msg: Message, timeout: float) -> Any:
        conn = await self.peer(brick)
        return await conn.send(msg, timeout=timeout)

    async def _rg_status(self, brick: str, rg: str) -> RGStatusReply:
        """``brick``'s view of ``rg``; a malformed reply fails as no reply does."""
        return RGStatusReply.from_wire(await self._call(brick, RGStatus(rg=rg), 3.0))

    async def _call_or_raise(self, brick: str, msg: Message, timeout: float) -> Any:
        try:
            return await self._call(brick, msg, timeout)
        except DDSError as e:
            raise RecoveryAborted(f"{msg.TYPE} to {brick}: {e.message}") from None

