"""Carrying out the changes of a membership plan as one journaled job: at most
``--parallel`` at once, a change waiting for the earlier changes of its RGs; each
change safe to redo from any step, rolled back or finished when it cannot go on, and
settled the same way by ``dds-admin repair``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore

from dds import failpoints
from dds.errors import DDSError
from dds.partition import PartitionId
from dds.records import Member, RGRecord

from dds.tools.cluster import describe_error, gather
from dds.tools.jobs import Job
from dds.tools.membership.calls import Cluster
from dds.tools.membership.plan import Change
from dds.tools.membership.progress import View
from dds.tools.runner import AdminError, pause

__all__ = ["Options", "Executor", "ChangeFailed", "Cancelled", "Say"]

POLL_S = 0.25
#: A recovering new member whose recovery shows no progress this long is given up.
STALL_S = 60.0
#: ... and one whose recovery failed this many attempts in a row.
MAX_ATTEMPTS = 12
#: How long the new brick may miss status polls (busy copying) before it counts as gone.
UNREACHABLE_GRACE_S = 15.0
#: Between two looks at the journal for a cancel request while waiting.
CANCEL_CHECK_S = 2.0

Say = Callable[[str], None]


class ChangeFailed(AdminError):
    """One change could not be carried out (it was rolled back, or finished)."""


class Cancelled(AdminError):
    """An operator asked for the job to stop (``dds-admin cancel``)."""


@attrs.frozen
class Options:
    #: Changes in flight at once (changes of one RG always run one after the other).
    parallel: int = 2
    #: Seconds one change may take (its new member's recovery, mostly).
    timeout: float = 3600.0
    dry_run: bool = False
    #: Bandwidth limit of each partition copy of a move, MB/s (0: none; None: the source
    #: brick's ``brick.move_rate_mb_s``).  A member replacement re-syncs by recovery,
    #: which always uses the source brick's setting.
    rate_mb_s: int | None = None


class Executor:
    """Runs (or, for repair, settles) the changes of one job."""

    def __init__(self, cl: Cluster, job: Job, changes: list[Change], view: View, say: Say,
                 options: Options) -> None:
        self.cl = cl
        self.job = job
        self.changes = changes
        self.view = view
        self.say = say
        self.options = options
        #: Why no further change starts (a failure, a cancel), once one happened.
        self.stop: str | None = None
        self.cancelled = False
        self.outcomes: dict[int, str] = {}
        self.copied: dict[int, int] = {}
        self.errors: list[str] = []

    def _steps_done(self, n: int, c: Change) -> str | None:
        if self.job.done(f"{n}.rolled-back"):
            return "rolled back"
        if self.job.done(f"{n}.created") or self.job.done(f"{n}.moved"):
            return "done"
        if c.kind in ("create", "move"):
            return None
        if c.old and self.job.done(f"{n}.removed"):
            return "done"
        if not c.old and self.job.done(f"{n}.active"):
            return "done"
        return None

    async def _step(self, n: int, name: str) -> None:
        await self.job.step(f"{n}.{name}")
        if failpoints.ARMED:
            failpoints.fire(f"membership.after_{name}")

    def _reason(self, n: int, c: Change) -> str:
        return f"{self.job.kind} {self.job.id} #{n}: {c.text()}"

    # -- the whole plan ----------------------------------------------------------------------

    async def run_all(self) -> None:
        """Every change, at most ``parallel`` at once; a change waits for the earlier
        changes of the RGs it alters (so changes of one RG run in plan order)."""
        sem = DeferredSemaphore(max(1, self.options.parallel))
        finished: set[int] = set()
        waiters: dict[int, list[Deferred[None]]] = {}
        last: dict[str, int] = {}
        deps: dict[int, set[int]] = {}
        for i, c in enumerate(self.changes, 1):
            deps[i] = {last[rg] for rg in c.rgs if rg in last}
            for rg in c.rgs:
                last[rg] = i
        self.view.begin(f"{self.job.kind} {self.job.id}", self.changes)

        async def one(n: int) -> None:
            c = self.changes[n - 1]
            try:
                for d in sorted(deps[n]):
                    if d not in finished:
                        waiter: Deferred[None] = Deferred()
                        waiters.setdefault(d, []).append(waiter)
                        await waiter
                if self.stop is not None:
                    self._outcome(n, c, "not started")
                    return
                await sem.acquire()
                try:
                    if self.stop is None and await self.job.cancel_requested():
                        self.cancelled = True
                        self.stop = "cancelled by dds-admin cancel"
                    if self.stop is not None:
                        self._outcome(n, c, "not started")
                        return
                    await self._guarded(n, c)
                finally:
                    sem.release()
            except Exception as e:  # noqa: BLE001 -- a bug must not pass for success
                self.errors.append(f"#{n} {c.text()}: internal error {e!r}; run "
                                   "dds-admin repair")
                self.stop = self.stop or f"change #{n} failed"
                self._outcome(n, c, "failed")
            finally:
                finished.add(n)
                for waiter in waiters.pop(n, []):
                    waiter.callback(None)
        try:
            await gather(one(n) for n in range(1, len(self.changes) + 1))
        finally:
            self.view.end()

    async def _guarded(self, n: int, c: Change) -> None:
        try:
            self._outcome(n, c, await self.run_one(n, c))
        except Cancelled as e:
            self.cancelled = True
            self.stop = self.stop or "cancelled by dds-admin cancel"
            self._outcome(n, c, e.lines[0] if e.lines else "rolled back")
        except (AdminError, DDSError) as e:
            lines = e.lines if isinstance(e, AdminError) else [describe_error(e)]
            self.errors.append(f"#{n} {c.text()}: " + "; ".join(lines))
            self.stop = self.stop or f"change #{n} failed"
            self._outcome(n, c, "failed" if not isinstance(e, ChangeFailed)
                          else e.lines[0])

    def _outcome(self, n: int, c: Change, what: str) -> None:
        self.outcomes[n] = what
        self.view.event(n, c, what)

    # -- one change ---------------------------------------------------------------------------

    async def run_one(self, n: int, c: Change, rollback: bool = False) -> str:
        """Carry out change ``n`` from wherever it is (every step checks the record
        first, so it is safe to redo).  Returns its outcome; raises :class:`Cancelled`
        or :class:`ChangeFailed` after settling it."""
        done = self._steps_done(n, c)
        if done is not None:
            return done
        self.view.event(n, c, "started")
        if c.kind == "create":
            return await self._create(n, c)
        if c.kind == "move":
            return await self._move(n, c)
        try:
            if c.new:
                if not self.job.done(f"{n}.added"):
                    await self.cl.rg_update(c.rg, add=c.new, reason=self._reason(n, c))
                    await self._step(n, "added")
                    self.view.event(n, c, f"{c.new} joined {c.rg} as recovering")
                if not self.job.done(f"{n}.active"):
                    if rollback:
                        raise Cancelled("rolled back")
                    await self._wait_active(n, c)
                    await self._step(n, "active")
                    self.view.event(n, c, f"{c.new} is active in {c.rg}")
            if c.old and not self.job.done(f"{n}.removed"):
                await self.cl.rg_update(c.rg, remove=c.old, reason=self._reason(n, c))
                await self._step(n, "removed")
            return "done"
        except Cancelled as e:
            raise Cancelled(await self._unwind(n, c, str(e))) from None
        except (AdminError, DDSError) as e:
            why = "; ".join(e.lines) if isinstance(e, AdminError) else describe_error(e)
            if not c.new:
                raise ChangeFailed(f"failed: {why}") from None
            try:
                what = await self._unwind(n, c, why)
            except (AdminError, DDSError) as e2:
                raise AdminError(f"failed ({why}), and settling it failed too "
                                 f"({describe_error(e2) if isinstance(e2, DDSError) else e2})"
                                 "; run dds-admin repair") from None
            if what == "done":
                return "done"
            raise ChangeFailed(f"{what}: {why}") from None

    async def _create(self, n: int, c: Change) -> str:
        """A new RG of ``c.members``, all active, no partitions: pushed at version 1 to
        every brick (as ``init`` does); moves fill it."""
        rec = RGRecord(c.rg, 1, [Member(m, "active") for m in c.members], [])
        held = await self.cl.lookup(c.rg, c.members)
        if held is not None and held.fp != rec.fp:
            raise ChangeFailed(f"a replica group {c.rg} exists already (v{held.version})")
        self.cl.learn([rec])
        replies = await self.cl.push([rec])
        took = [b for b, r in replies.items()
                if not isinstance(r, BaseException) and not r.get("conflicts")]
        if not set(c.members) <= set(took):
            raise ChangeFailed(f"{c.rg} was not taken by {sorted(set(c.members) - set(took))}")
        await self.job.step(f"{n}.created")
        return "done"

    async def _move(self, n: int, c: Change) -> str:
        """``dds-admin move`` of ``c.pid`` to ``c.to_rg`` (a job of its own, which
        ``repair`` settles by itself if this tool dies during it)."""
        from dds.tools import move as mv

        assert c.pid is not None and c.to_rg is not None
        where = await self._partition_rg(c)
        if where == c.to_rg:
            await self.job.step(f"{n}.moved")
            return "done"
        if where != c.rg:
            raise ChangeFailed(f"{c.pid} is active in {where or 'no RG'} now, not {c.rg}")
        result = await mv.move(self.cl.reactor, self.cl.target, c.pid, c.to_rg, self.say,
                               rate_mb_s=self.options.rate_mb_s)
        self.copied[n] = int(result.get("copied_bytes", 0))
        for rg in c.rgs:
            await self.cl.record(rg)
        await self.job.step(f"{n}.moved")
        return "done"

    async def _partition_rg(self, c: Change) -> str | None:
        found = None
        for rg in c.rgs:
            rec = await self.cl.record(rg)
            if c.pid is not None and rec.partition_state(PartitionId.parse(c.pid)) == "active":
                found = rg
        return found

    async def _serving(self, brick: str, rg: str) -> bool:
        """Whether ``brick`` answers and serves ``rg`` (asked a few times over ~2 s)."""
        for attempt in range(3):
            try:
                return (await self.cl.status(brick, 5.0)).serves(rg)
            except (DDSError, AdminError):
                await pause(self.cl.reactor, 1.0)
        return False

    async def _unwind(self, n: int, c: Change, why: str) -> str:
        """A change that cannot go on: finished if its new member is active already and
        serves (then the old one goes), else rolled back (the new member is removed
        again, the old one stays)."""
        assert c.new is not None
        rec = await self.cl.record(c.rg, [c.new])
        state = rec.member_state(c.new)
        old_gone = c.old is not None and rec.member_state(c.old) is None
        if state == "active" and (old_gone or await self._serving(c.new, c.rg)):
            if not self.job.done(f"{n}.active"):
                await self._step(n, "active")
            if c.old and not self.job.done(f"{n}.removed"):
                await self.cl.rg_update(c.rg, remove=c.old, reason=self._reason(n, c))
                await self._step(n, "removed")
            return "done"
        if state is not None:
            self.say(f"#{n} {c.text()}: rolling back ({why})")
            await self.cl.rg_update(c.rg, remove=c.new,
                                    reason=self._reason(n, c) + f" rolled back: {why}")
        await self._step(n, "rolled-back")
        return "rolled back"

    async def _wait_active(self, n: int, c: Change) -> None:
        """Until ``c.new`` is an active member of ``c.rg`` (it re-syncs by itself), with
        its recovery's bytes shown; gives up on a stall, a timeout, a brick gone, or a
        cancel request."""
        assert c.new is not None
        now = time.monotonic()
        deadline = now + self.options.timeout
        answered = last_progress = now
        next_cancel = now + CANCEL_CHECK_S
        seen: tuple[Any, ...] | None = None
        while True:
            now = time.monotonic()
            try:
                st = await self.cl.status(c.new, 5.0)
                answered = now
            except (DDSError, AdminError) as e:
                if now - answered > UNREACHABLE_GRACE_S:
                    raise ChangeFailed(f"{c.new} stopped answering: "
                                       f"{e.lines[0] if isinstance(e, AdminError) else describe_error(e)}"
                                       ) from None
                st = None
            if st is not None:
                row = st.recovery.get(c.rg) or {}
                state = st.member_state(c.rg)
                self.view.copy(n, c, row)
                if row.get("bytes_total"):
                    self.copied[n] = int(row["bytes_total"])
                if st.serves(c.rg):
                    rec = await self.cl.record(c.rg, [c.new])
                    if rec.member_state(c.new) == "active":
                        return
                key = (row.get("attempts"), row.get("phase"), row.get("bytes_done"), state)
                # "waiting": the RG lists an incoming partition (a move into it runs), and
                # recovery waits for it to land; that is not a stall, however long.
                if key != seen or row.get("phase") == "waiting":
                    seen, last_progress = key, now
                attempts = int(row.get("attempts") or 0)
                if attempts >= MAX_ATTEMPTS and row.get("phase") == "retrying":
                    raise ChangeFailed(f"{c.new}'s recovery of {c.rg} failed {attempts} "
                                       f"times: {row.get('last_error')}")
                if state is None:
                    rec = await self.cl.record(c.rg, [c.new])
                    if rec.member_state(c.new) is None:
                        raise ChangeFailed(f"{c.new} is no longer a member of {c.rg}")
            if now - last_progress > STALL_S:
                raise ChangeFailed(f"{c.new}'s recovery of {c.rg} made no progress for "
                                   f"{STALL_S:g}s")
            if now > deadline:
                raise ChangeFailed(f"{c.new} did not become active in {c.rg} within "
                                   f"{self.options.timeout:g}s")
            if now >= next_cancel:
                next_cancel = now + CANCEL_CHECK_S
                if await self.job.cancel_requested():
                    raise Cancelled("cancelled by dds-admin cancel")
            await pause(self.cl.reactor, POLL_S)

    # -- repair --------------------------------------------------------------------------------

    async def settle(self, n: int, c: Change, rollback: bool) -> str:
        """``dds-admin repair``: finish or roll back change ``n`` if it is in flight;
        never start one that was not."""
        done = self._steps_done(n, c)
        if done is not None:
            return done
        if c.kind == "create":
            if await self.cl.lookup(c.rg, c.members) is None:
                return "not started"
            await self.job.step(f"{n}.created")
            return "done"
        if c.kind == "move":
            # A move killed midway is a job of its own, newer than this one: repair
            # settled it before this one.
            if await self._partition_rg(c) == c.to_rg:
                await self.job.step(f"{n}.moved")
                return "done"
            return "not started"
        rec = await self.cl.record(c.rg, [b for b in (c.new, c.old) if b])
        if c.new:
            state = rec.member_state(c.new)
            if not self.job.done(f"{n}.added"):
                if state is None:
                    return "not started"
                await self._step(n, "added")
            elif state is None:
                await self._step(n, "rolled-back")
                return "rolled back"
            if state == "active" and (c.old is None or rec.member_state(c.old) is not None) \
                    and not await self._serving(c.new, c.rg):
                # Active but gone: finishing would leave the RG a replica short.
                return await self._unwind(n, c, f"{c.new} does not serve {c.rg}")
        elif rec.member_state(c.old or "") is not None:
            return "not started"
        try:
            return await self.run_one(n, c, rollback=rollback)
        except (Cancelled, ChangeFailed) as e:
            return e.lines[0] if e.lines else "rolled back"

