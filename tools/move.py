"""``dds-admin move PARTITION --to RG``: move a partition to another replica group, online
(DESIGN §8), as a journaled job.

Steps (the journaled ones are recorded in the journal of every brick involved once
done; each is safe to redo):

1. ``incoming`` (journaled): the target RG lists the partition as incoming (record
   change); its members create an empty replica.
2. ``copied`` (journaled, with the copy sessions): every target member copies it from
   one source member (one snapshot shared by the targets' sessions; chunks; catch-up
   deltas while writes go on), then keeps following the source's writes.
3. ``fenced``: the source fences writes to the partition (they fail ``Recovering``; the
   library retries) and drains what was prepared.
4. ``delta`` and 5. ``cutover-out``, at the same time: every target member applies the
   last delta; the source RG marks the partition outgoing (it serves it no more), the
   target RG's members get that record, and the source's fence is checked again (it
   held until then: no write can have missed the last delta).
6. ``cutover-in`` (journaled once done): the target RG marks it active.  Clients with
   old maps are redirected by ``StaleMap``; between 5 and 6 the key range routes
   nowhere and they retry every few milliseconds.
7. ``released``: the source lifts its fence and frees its snapshot.
8. ``dropped``: the source RG forgets the partition; its members free their replicas.
   Then the job is recorded ``done``.

Writes to the partition pause from 3 to 6.  Nothing is journaled in there (a journal
write is an fsync on every brick), and the two records needed for 5 and 6 are read
before 3.  Failpoints ``move.after_<step>`` fire after each step (4 and 5 together).

**Repair** (``resume``) decides by the records, not by the journal: the move is
finished if the partition is active in the target RG, or if it is outgoing in the
source RG, the source's fence still holds (the copy session is alive: a restart would
have ended it) and every target answers ``move_finish`` (it applies the last delta, or
says it did).  Otherwise the move is rolled back: the source's fence is lifted, an
outgoing entry in the source RG becomes active again (nobody wrote the partition since
the fence), and the target RG forgets the incoming copy.  The same rule settles a move
whose tool hits an error.

From just before step 3 to the end, the tool renews the source's fence
(``dds.fencerenew``): a tool killed under the fence costs writes about two
seconds, after which the source lifts it (while the partition is still active in the
source RG) and repair rolls the move back.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList

from dds import failpoints
from dds.errors import DDSError
from dds.fencerenew import LAPSE_MS, CopyFenceRenew, FenceKeeper
from dds.messages import CopyCancel, CopyFence, MoveFinish, MovePull
from dds.maps import ClusterMap
from dds.partition import PartitionId
from dds.records import RGRecord
from dds.tools import reorg
from dds.tools.cluster import Target, describe_error, fetch_map, gather
from dds.tools.jobs import Job, JobView, brick_addresses
from dds.tools.rgedit import RecordEditor
from dds.tools.runner import AdminError, pause

#: Every step, in order (failpoints ``move.after_<step>`` fire after each).
STEPS = ("incoming", "copied", "fenced", "delta", "cutover-out", "cutover-in", "released",
         "dropped")
#: The steps recorded in the journal.
JOURNALED = ("incoming", "copied", "cutover-in")
Say = Callable[[str], None]
Progress = Callable[[int, int], None]
#: A copy of a large partition takes a while; everything else is quick.
PULL_TIMEOUT_S = 600.0
CALL_TIMEOUT_S = 30.0
#: Between two looks at the targets' copy progress (``status``: ``moves_in``).
PROGRESS_POLL_S = 0.2


def plan_move(cmap: ClusterMap, pid_text: str, to_rg: str) -> dict[str, Any]:
    """The plan, checked against the map: the partition is active in another RG, the
    target RG exists and has active members."""
    try:
        pid = PartitionId.parse(pid_text)
    except ValueError as e:
        raise AdminError(f"bad partition id {pid_text!r}: {e}") from None
    source_rg = cmap.partition_rg.get(pid)
    if source_rg is None:
        raise AdminError(f"partition {pid} is not active in any replica group")
    target_rg = cmap.rgs.get(to_rg)
    if target_rg is None:
        raise AdminError(f"no replica group {to_rg!r} (groups: {', '.join(sorted(cmap.rgs))})")
    if target_rg.name == source_rg.name:
        raise AdminError(f"partition {pid} is already in {to_rg}")
    if not target_rg.active_members or not source_rg.active_members:
        raise AdminError("both replica groups need an active member")
    return {"pid": str(pid), "from_rg": source_rg.name, "to_rg": target_rg.name,
            "source": source_rg.active_members[0],
            "targets": list(target_rg.active_members)}


class Mover(RecordEditor):
    """Runs (or resumes) one move job."""

    def __init__(self, reactor: Any, target: Target, cmap: ClusterMap, job: Job,
                 say: Say, progress: Progress | None = None) -> None:
        super().__init__(reactor, target, brick_addresses(cmap), say, reuse=True)
        self.job = job
        self.plan = job.plan
        self.progress = progress
        self.sessions: dict[str, int] = dict(job.steps.get("copied", {}).get("sessions", {}))
        #: Seconds writes to the partition were paused (fence to cut-over), once known.
        self.fence_s = 0.0
        self._fenced_at: float | None = None

    # -- the steps -----------------------------------------------------------------------

    async def run(self) -> None:
        p = self.plan
        pid, source, targets = p["pid"], p["source"], p["targets"]
        if not self.job.done("incoming"):
            await self.update(p["to_rg"], lambda r, _: _incoming(r, pid, targets),
                              f"move of {pid} from {p['from_rg']}: incoming")
            await self._step("incoming")
        await self._cancel_point()
        if not self.job.done("copied"):
            self.say(f"copying {pid} from {source} to {', '.join(targets)}")
            replies = await self._with_progress(DeferredList(
                [_deferred(self.send(t, MovePull(pid=pid, source=source,
                                                 from_rg=p["from_rg"],
                                                 rate_mb_s=p.get("rate_mb_s")),
                                     PULL_TIMEOUT_S)) for t in targets],
                consumeErrors=True))
            failed = [f"{t}: {describe_error(r.value)}" for t, (ok, r) in
                      zip(targets, replies) if not ok]
            if failed:
                raise AdminError(f"copy of {pid} failed: {'; '.join(failed)}")
            # A target that is also a member of the source RG already holds the
            # partition, kept up to date by every write: no copy, no session.
            self.sessions = {t: int(r["session"]) for t, (_, r) in zip(targets, replies)
                             if r.get("session") is not None}
            total = sum(int(r["bytes"]) for _, r in replies)
            if self.progress:
                self.progress(total, total)
            await self._step("copied", sessions=self.sessions, bytes=total)
        # The cancel point and the two records (read now, so that the record changes
        # under the fence need no lookup first).
        cancel, from_rec, to_rec = await self._all([
            self.job.cancel_requested(), self.record(p["from_rg"]), self.record(p["to_rg"])])
        if cancel:
            await self.rollback("cancelled by dds-admin cancel")
            raise AdminError(f"move {self.job.id} cancelled and rolled back")
        await self.switch(from_rec, to_rec)

    async def switch(self, from_rec: RGRecord, to_rec: RGRecord) -> None:
        """Fence, last delta, cut-over.  Writes are paused from the fence to the end of
        the target RG's record change; nothing is journaled in between (see ``resume``
        for a move stopped in here)."""
        first = next(iter(self.sessions.values()), None)
        if first is None:
            await self._switch(None, from_rec, to_rec)
            return
        # The source's fence lives only while this tool does (dds.fencerenew).
        keeper = FenceKeeper(self.reactor, self.send, [
            (self.plan["source"], CopyFenceRenew(session=first, lapse_ms=LAPSE_MS))])
        await keeper.start()
        try:
            await self._switch(first, from_rec, to_rec)
        finally:
            keeper.stop()

    async def _switch(self, first: int | None, from_rec: RGRecord, to_rec: RGRecord) -> None:
        p = self.plan
        pid, source, targets = p["pid"], p["source"], p["targets"]
        self._fenced_at = self.reactor.seconds()
        if first is not None:
            await self.send(source, CopyFence(session=first))
        self._passed("fenced")

        async def finish(t: str) -> None:
            try:
                await self.send(t, MoveFinish(pid=pid))
            except DDSError as e:
                raise AdminError(f"last delta of {pid} on {t} failed: "
                                 f"{describe_error(e)}") from None

        async def cut_out() -> None:
            # The source RG stops serving it while the targets apply the last delta:
            # writes are fenced, so the order does not matter, and a move stopped in
            # between is settled by ``must_finish``.  The target RG's members must hold
            # the new record (they check that no other RG has the partition active
            # before they vote); the source's fence is checked again, to know that it
            # held until the partition went outgoing.
            new = await self.update(p["from_rg"], lambda r, _: _with(r, pid, "outgoing"),
                                    f"move of {pid} to {p['to_rg']}: outgoing",
                                    known=from_rec, push=False)
            checks = [self.push(new, {m.brick for m in to_rec.members})]
            if first is not None:
                checks.append(self._fence_held(first))
            await self._all(checks)
        await self._all([*(finish(t) for t in targets), cut_out()])
        self._passed("delta")
        self._passed("cutover-out")
        await self.forward(to_rec)

    async def forward(self, to_rec: RGRecord | None = None) -> None:
        """From the cut-over on there is no way back: finish."""
        p = self.plan
        pid = p["pid"]
        await self.update(p["to_rg"], lambda r, _: _with(r, pid, "active"),
                          f"move of {pid} from {p['from_rg']}: active", known=to_rec,
                          wait_push=())
        if self._fenced_at is not None:     # writes go on from here (step 6)
            self.fence_s = self.reactor.seconds() - self._fenced_at
        for result in await gather([self._step("cutover-in"),
                                    self._release(f"move of {pid} done")]):
            if isinstance(result, BaseException):
                raise result
        self._passed("released")
        await self.update(p["from_rg"], lambda r, _: _without(r, pid),
                          f"move of {pid} to {p['to_rg']}: dropped", wait_push=())
        self._passed("dropped")
        await self.job.finish("done")

    async def rollback(self, why: str) -> None:
        """Before the cut-over: undo (lift the fence, forget the incoming copy)."""
        p = self.plan
        pid = p["pid"]
        self.say(f"rolling back the move of {pid}: {why}")
        await self._release(f"move of {pid} rolled back: {why}")
        # If the cut-over began (the source RG has it outgoing): serve it there again.
        # Nobody wrote it since the source's fence.
        await self.update(p["from_rg"],
                          lambda r, _: (_with(r, pid, "active")
                                        if _state(r, pid) == "outgoing" else None),
                          f"move of {pid} rolled back")

        def forget(rec: RGRecord, _: int) -> list[list[str]] | None:
            if _state(rec, pid) == "active":
                raise AdminError(f"{pid} is active in {p['to_rg']} already: the move "
                                 "cannot be rolled back; run dds-admin repair")
            return _without(rec, pid)
        await self.update(p["to_rg"], forget, f"move of {pid} rolled back")
        await self.job.finish("rolled-back")

    async def must_finish(self) -> bool:
        """Whether the move must be finished rather than rolled back (see the module's
        docstring): the partition is active in the target RG; or it is outgoing in the
        source RG, the source's fence still holds and every target has the last delta.
        Raises if the partition is in none of these states nor active in the source
        RG."""
        p = self.plan
        pid = p["pid"]
        from_state = _state(await self.record(p["from_rg"]), pid)
        to_state = _state(await self.record(p["to_rg"]), pid)
        if to_state == "active":
            return True
        if from_state == "outgoing":
            first = next(iter(self.sessions.values()), None)
            checks: list[Any] = [self.send(t, MoveFinish(pid=pid)) for t in p["targets"]]
            if first is not None:
                checks.append(self._fence_held(first))
            try:
                await self._all(checks)
            except (AdminError, DDSError) as e:
                self.say(f"the cut-over of {pid} began but cannot be finished "
                         f"({describe_error(e)}): back to {p['from_rg']}")
                return False
            return True
        if from_state != "active":
            raise AdminError(f"{pid} is {from_state or 'absent'} in {p['from_rg']} and "
                             f"{to_state or 'absent'} in {p['to_rg']}: neither finished "
                             "nor rolled back; check the map (dds-admin status)")
        return False

    async def settle(self, why: str) -> str:
        """Finish or roll back, by the records (see the module's docstring)."""
        if await self.must_finish():
            self.say(f"finishing the move of {self.plan['pid']} ({why})")
            await self.forward()
            return "finished"
        await self.rollback(why)
        return "rolled back"

    async def _step(self, name: str, **data: Any) -> None:
        await self.job.step(name, **data)
        self._passed(name)

    def _passed(self, name: str) -> None:
        if failpoints.ARMED:
            failpoints.fire(f"move.after_{name}")

    async def _release(self, reason: str) -> None:
        source = self.plan["source"]
        await DeferredList([_deferred(self.send(source, CopyCancel(session=s, reason=reason),
                                                5.0))
                            for s in self.sessions.values()], consumeErrors=True)

    async def _fence_held(self, session: int) -> None:
        """Raises unless the source still fences writes for ``session`` (a restart
        would have lost the fence, and the session with it)."""
        try:
            await self.send(self.plan["source"], CopyFence(session=session))
        except DDSError as e:
            raise AdminError(f"the fence of {self.plan['source']} on {self.plan['pid']} "
                             f"was lost: {describe_error(e)}") from None

    @staticmethod
    async def _all(calls: list[Any]) -> list[Any]:
        """Run concurrently; every result once all are done, else the first error."""
        results = await gather(calls)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    async def _cancel_point(self) -> None:
        if await self.job.cancel_requested():
            await self.rollback("cancelled by dds-admin cancel")
            raise AdminError(f"move {self.job.id} cancelled and rolled back")

    async def _with_progress(self, work: Deferred[Any]) -> Any:
        """Await ``work`` (the copies) while the targets' ``status`` (``moves_in``)
        feeds ``self.progress`` with bytes copied over all targets."""
        if self.progress is None:
            return await work
        progress, pid, targets = self.progress, self.plan["pid"], self.plan["targets"]
        finished = [False]
        work.addBoth(lambda r: (finished.__setitem__(0, True), r)[1])

        async def poll() -> None:
            while not finished[0]:
                replies = await DeferredList([_deferred(self.bricks.status(t, 5.0))
                                              for t in targets], consumeErrors=True)
                done = total = 0
                for ok, r in replies:
                    entry = r.moves_in.get(pid) if ok else None
                    if entry:
                        done += int(entry.get("bytes_done") or 0)
                        total += int(entry.get("bytes_total") or 0)
                if total and not finished[0]:
                    progress(done, total)
                await pause(self.reactor, PROGRESS_POLL_S)
        poller = _deferred(poll())
        try:
            return await work
        finally:
            await poller


async def move(reactor: Any, target: Target, pid: str, to_rg: str, say: Say,
               progress: Progress | None = None, rate_mb_s: int | None = None, *,
               dry_run: bool = False, measure: bool = False) -> dict[str, Any]:
    """Run a move (or with ``dry_run`` only plan it: nothing is journaled or changed);
    ``rate_mb_s`` limits each target's copy (None: the source brick's
    ``brick.move_rate_mb_s``, 40 MB/s by default; 0: no limit).  ``measure`` puts the
    partition's key + value bytes in the report (a scan on one member; always done for
    a dry run).  The report is :func:`dds.tools.reorg.report`'s."""
    cmap, _ = await fetch_map(reactor, target)
    plan = plan_move(cmap, pid, to_rg)
    if rate_mb_s is not None:
        plan["rate_mb_s"] = rate_mb_s
    from_bricks = list(cmap.rgs[plan["from_rg"]].active_members)
    data_bytes = None
    if measure or dry_run:
        sizer = RecordEditor(reactor, target, brick_addresses(cmap), say)
        try:
            data_bytes = await reorg.measure(sizer, [plan["pid"]], from_bricks)
        finally:
            await sizer.close()
    if dry_run:
        return _report(plan, None, from_bricks, data_bytes)
    involved = sorted({*from_bricks, *plan["targets"]})
    job = await Job.create(reactor, target, "move", plan, brick_addresses(cmap, involved),
                           warn=say)
    say(f"job {job.id}: move {plan['pid']} from {plan['from_rg']} to {plan['to_rg']}")
    mover = Mover(reactor, target, cmap, job, say, progress)
    t0 = reactor.seconds()
    try:
        await mover.run()
    except (AdminError, DDSError) as e:
        if job.state == "running":
            try:
                if not await mover.must_finish():
                    await mover.rollback(f"failed: {describe_error(e)}")
            except (AdminError, DDSError) as e2:
                say(f"rollback failed too ({describe_error(e2)}); run dds-admin repair")
        raise
    finally:
        await mover.close()
    return _report(plan, job, from_bricks, data_bytes, reactor.seconds() - t0,
                   mover.fence_s)


def _report(plan: dict[str, Any], job: Job | None, from_bricks: list[str],
            data_bytes: int | None, seconds: float = 0.0,
            fence_s: float = 0.0) -> dict[str, Any]:
    copied = job.steps.get("copied", {}).get("bytes", 0) if job is not None else 0
    return reorg.report(
        "move", job=job.id if job is not None else None, pid=plan["pid"],
        sources=[plan["pid"]], targets=[plan["pid"]], from_rg=plan["from_rg"],
        to_rg=plan["to_rg"], from_bricks=from_bricks, to_bricks=plan["targets"],
        data_bytes=data_bytes, seconds=seconds, fence_s=fence_s, source=plan["source"],
        target_bricks=plan["targets"], copied_bytes=copied,
        rate_mb_s=plan.get("rate_mb_s"))


async def resume(reactor: Any, target: Target, view: JobView, say: Say) -> str:
    """``dds-admin repair``: finish a move whose cut-over began, roll back any other.
    Returns what was done."""
    cmap, _ = await fetch_map(reactor, target)
    involved = sorted({*view.plan.get("targets", []), view.plan.get("source", "")} - {""})
    job = Job.resume(reactor, target, view, brick_addresses(cmap, [
        b for b in involved if b in cmap.bricks]), warn=say)
    mover = Mover(reactor, target, cmap, job, say)
    try:
        return await mover.settle("the tool running it stopped")
    finally:
        await mover.close()


def _state(rec: RGRecord, pid: str) -> str | None:
    return rec.partition_state(PartitionId.parse(pid))


def _with(rec: RGRecord, pid: str, state: str) -> list[list[str]] | None:
    entries: dict[str, str] = {str(e.pid): e.state for e in rec.partitions}
    if entries.get(pid) == state:
        return None
    entries[pid] = state
    return [[p, s] for p, s in sorted(entries.items())]


def _incoming(rec: RGRecord, pid: str, targets: list[str]) -> list[list[str]] | None:
    """The ``incoming`` step's change, checked on the record it changes: a member of the
    target RG readmitted since the plan was made would get no copy, yet serve the
    partition after the cut-over.  Once the partition is incoming, no recovery readmits
    anyone into the RG (``bricks/recovery.py``), so this one check suffices."""
    strangers = [b for b in rec.active_members if b not in targets]
    if strangers:
        raise AdminError(f"{', '.join(strangers)} became active in {rec.name} after the "
                         "move was planned: run it again")
    return _with(rec, pid, "incoming")


def _without(rec: RGRecord, pid: str) -> list[list[str]] | None:
    entries = {str(e.pid): e.state for e in rec.partitions}
    if pid not in entries:
        return None
    del entries[pid]
    return [[p, s] for p, s in sorted(entries.items())]


def _deferred(coro: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coro)
