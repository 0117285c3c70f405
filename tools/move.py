"""``dds-admin move PARTITION --to RG``: move a partition to another replica group, online
(DESIGN §8), as a journaled job.

Steps, each recorded in the journal of every brick involved once done, each safe to redo:

1. ``incoming``: the target RG lists the partition as incoming (record change); its
   members create an empty replica.
2. ``copied``: every target member copies it from one source member (snapshot, chunks,
   catch-up deltas while writes go on).
3. ``fenced`` (not journaled): the source fences writes to the partition (they fail ``Recovering``; the
   library retries) and drains what was prepared.
4. ``delta`` (not journaled): every target member applies the last delta.
5. ``cutover-out``: the source RG marks the partition outgoing: it serves it no more.
6. ``cutover-in``: the target RG marks it active.  Clients with old maps are redirected
   by ``StaleMap``; between 5 and 6 the key range routes nowhere and they retry.
7. ``released``: the source lifts its fence and deletes its snapshot.
8. ``dropped``: the source RG forgets the partition; its members delete their replicas.

Writes to the partition pause from 3 to 7.  ``repair`` resumes a killed move: before
``cutover-out`` it rolls it back (nothing was changed for clients), after it it finishes.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import DeferredList

from dds import failpoints
from dds.errors import DDSError
from dds.maps import ClusterMap
from dds.partition import PartitionId
from dds.records import RGRecord
from dds.tools.cluster import Target, describe_error, fetch_map
from dds.tools.jobs import Job, JobView, brick_addresses
from dds.tools.rgedit import RecordEditor
from dds.tools.runner import AdminError

STEPS = ("incoming", "copied", "fenced", "delta", "cutover-out", "cutover-in", "released",
         "dropped")
#: Steps done under the fence are not journaled (see ``Mover.run``).
Say = Callable[[str], None]
Progress = Callable[[int, int], None]
#: A copy of a large partition takes a while; everything else is quick.
PULL_TIMEOUT_S = 600.0
CALL_TIMEOUT_S = 30.0


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
        super().__init__(reactor, target, brick_addresses(cmap), say)
        self.job = job
        self.plan = job.plan
        self.progress = progress
        self.sessions: dict[str, int] = dict(job.steps.get("copied", {}).get("sessions", {}))

    # -- the steps -----------------------------------------------------------------------

    async def run(self) -> None:
        p = self.plan
        pid, source, targets = p["pid"], p["source"], p["targets"]
        if not self.job.done("incoming"):
            await self.update(p["to_rg"], lambda r, _: _with(r, pid, "incoming"),
                              f"move of {pid} from {p['from_rg']}: incoming")
            await self._step("incoming")
        await self._cancel_point()
        if not self.job.done("copied"):
            self.say(f"copying {pid} from {source} to {', '.join(targets)}")
            replies = await DeferredList(
                [_deferred(self.call(t, "move_pull", {"pid": pid, "source": source,
                                                      "from_rg": p["from_rg"],
                                                      "rate_mb_s": p.get("rate_mb_s")},
                                     PULL_TIMEOUT_S)) for t in targets],
                consumeErrors=True)
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
        await self._cancel_point()
        # Writes are paused from here to the cut-over: nothing is journaled in between
        # (each journal write is an fsync on every brick).  A move stopped in here is
        # rolled back by repair, which needs no record of these two steps.
        if self.sessions:
            first = next(iter(self.sessions.values()))
            await self.call(source, "copy_fence", {"session": first})
        self._passed("fenced")
        replies = await DeferredList([_deferred(self.call(t, "move_finish", {"pid": pid}))
                                      for t in targets], consumeErrors=True)
        failed = [f"{t}: {describe_error(r.value)}" for t, (ok, r) in
                  zip(targets, replies) if not ok]
        if failed:
            raise AdminError(f"last delta of {pid} failed: {'; '.join(failed)}")
        self._passed("delta")
        await self.forward()

    async def forward(self) -> None:
        """From the cut-over on there is no way back: finish."""
        p = self.plan
        pid = p["pid"]
        if not self.job.done("cutover-out"):
            await self.update(p["from_rg"], lambda r, _: _with(r, pid, "outgoing"),
                              f"move of {pid} to {p['to_rg']}: outgoing")
            await self._step("cutover-out")
        if not self.job.done("cutover-in"):
            await self.update(p["to_rg"], lambda r, _: _with(r, pid, "active"),
                              f"move of {pid} from {p['from_rg']}: active")
            await self._step("cutover-in")
        if not self.job.done("released"):
            await self._release(f"move of {pid} done")
            await self._step("released")
        if not self.job.done("dropped"):
            await self.update(p["from_rg"], lambda r, _: _without(r, pid),
                              f"move of {pid} to {p['to_rg']}: dropped")
            await self._step("dropped")
        await self.job.finish("done")

    async def rollback(self, why: str) -> None:
        """Before the cut-over: undo (lift the fence, forget the incoming copy)."""
        p = self.plan
        pid = p["pid"]
        self.say(f"rolling back the move of {pid}: {why}")
        await self._release(f"move of {pid} rolled back: {why}")
        await self.update(p["to_rg"], lambda r, _: _without(r, pid),
                          f"move of {pid} rolled back")
        await self.job.finish("rolled-back")

    async def _step(self, name: str, **data: Any) -> None:
        await self.job.step(name, **data)
        self._passed(name)

    def _passed(self, name: str) -> None:
        if failpoints.ARMED:
            failpoints.fire(f"move.after_{name}")

    async def _release(self, reason: str) -> None:
        source = self.plan["source"]
        await DeferredList([_deferred(self.call(source, "copy_cancel",
                                                {"session": s, "reason": reason}, 5.0))
                            for s in self.sessions.values()], consumeErrors=True)

    async def _cancel_point(self) -> None:
        if await self.job.cancel_requested():
            await self.rollback("cancelled by dds-admin cancel")
            raise AdminError(f"move {self.job.id} cancelled and rolled back")


async def move(reactor: Any, target: Target, pid: str, to_rg: str, say: Say,
               progress: Progress | None = None,
               rate_mb_s: int | None = None) -> dict[str, Any]:
    """Run a move; ``rate_mb_s`` limits each target's copy (None: the source brick's
    ``brick.copy_rate_mb_s``)."""
    cmap, _ = await fetch_map(reactor, target)
    plan = plan_move(cmap, pid, to_rg)
    if rate_mb_s is not None:
        plan["rate_mb_s"] = rate_mb_s
    involved = sorted({*cmap.rgs[plan["from_rg"]].active_members, *plan["targets"]})
    job = await Job.create(reactor, target, "move", plan, brick_addresses(cmap, involved),
                           warn=say)
    say(f"job {job.id}: move {plan['pid']} from {plan['from_rg']} to {plan['to_rg']}")
    mover = Mover(reactor, target, cmap, job, say, progress)
    t0 = reactor.seconds()
    try:
        await mover.run()
    except (AdminError, DDSError) as e:
        if job.state == "running" and not job.done("cutover-out"):
            try:
                await mover.rollback(f"failed: {describe_error(e)}")
            except (AdminError, DDSError) as e2:
                say(f"rollback failed too ({describe_error(e2)}); run dds-admin repair")
        raise
    return {"job": job.id, **plan, "seconds": reactor.seconds() - t0,
            "bytes": job.steps.get("copied", {}).get("bytes", 0)}


async def resume(reactor: Any, target: Target, view: JobView, say: Say) -> str:
    """``dds-admin repair``: roll back a move killed before its cut-over, finish one
    killed after.  Returns what was done."""
    cmap, _ = await fetch_map(reactor, target)
    involved = sorted({*view.plan.get("targets", []), view.plan.get("source", "")} - {""})
    job = Job.resume(reactor, target, view, brick_addresses(cmap, [
        b for b in involved if b in cmap.bricks]), warn=say)
    mover = Mover(reactor, target, cmap, job, say)
    if job.done("cutover-out"):
        await mover.forward()
        return "finished"
    await mover.rollback("the tool running it stopped before the cut-over")
    return "rolled back"


def _with(rec: RGRecord, pid: str, state: str) -> list[list[str]] | None:
    entries: dict[str, str] = {str(e.pid): e.state for e in rec.partitions}
    if entries.get(pid) == state:
        return None
    entries[pid] = state
    return [[p, s] for p, s in sorted(entries.items())]


def _without(rec: RGRecord, pid: str) -> list[list[str]] | None:
    entries = {str(e.pid): e.state for e in rec.partitions}
    if pid not in entries:
        return None
    del entries[pid]
    return [[p, s] for p, s in sorted(entries.items())]


def _deferred(coro: Any) -> Any:
    from twisted.internet.defer import Deferred
    return Deferred.fromCoroutine(coro)
