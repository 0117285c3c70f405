"""``dds-admin split PARTITION`` and ``dds-admin merge PARTITION``: reshape partitions in
place, inside their replica group, online (DESIGN §8), as journaled jobs.

A split replaces a partition by its two children (one hash bit deeper); a merge replaces
two sibling partitions of one RG by their parent.  Every member builds the new replicas
from its own (``dds.bricks.split``): nothing is copied between bricks.  Steps, each
recorded in the journal of every member of the RG once done, each safe to redo:

1. ``incoming``: the RG lists the targets as incoming (record change); no client routes
   to them, and their members keep their files.
2. ``prepared``: every member builds the targets from a snapshot of the sources and
   catches up with the writes made meanwhile (progress bar: rows routed).
3. ``fenced``: one member, the leader, fences writes to the sources (they fail
   ``Recovering`` and the library retries) and drains what was prepared.  Write-all: that
   stops every write to the sources.
4. ``delta``: every member fences locally, applies the last rows and installs the
   targets; their live key counts must agree.
5. ``cutover``: the leader, if its fence held without a break, changes the RG record:
   sources gone, targets active.  Clients with old maps get ``StaleMap`` and follow.
6. ``released``: the fences are lifted; the members delete the sources' replicas on
   their own (no RG lists them any more).

Writes to the sources pause from 3 to 6 (usually well under a second).  Before the
cut-over a failure, or ``dds-admin cancel``, rolls the job back: the leader is told first
(no cut-over can start after that; one in flight is waited for), then the fences and
staged files go and the RG stops listing the targets.  After the cut-over the job is
finished.  ``repair`` applies the same rule to a job whose tool was killed, by what the
RG record says, not only by the journal: a cut-over that happened but was not journaled
is finished, not undone.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList

from dds import failpoints
from dds.errors import DDSError
from dds.fencerenew import LAPSE_MS, RENEW_TIMEOUT_S, FenceKeeper, SplitFenceRenew
from dds.maps import ClusterMap
from dds.messages import (Message, SplitAbort, SplitCutover, SplitFence, SplitFinish,
                          SplitPrepare, SplitRelease, SplitStatus)
from dds.partition import PartitionId
from dds.records import RGRecord, record_from_wire
from dds.tools import reorg
from dds.tools.cluster import BrickCaller, Target, describe_error, fetch_map
from dds.tools.jobs import Job, JobView, brick_addresses
from dds.tools.rgedit import RecordEditor
from dds.tools.runner import AdminError, pause

STEPS = ("incoming", "prepared", "fenced", "delta", "cutover", "released")
KINDS = ("split", "merge")
Say = Callable[[str], None]
#: ``progress(done, total)``: rows routed into the targets, over every member.
Progress = Callable[[int, int], None]
#: Building the targets of a large partition takes a while; everything else is quick.
PREPARE_TIMEOUT_S = 600.0
CALL_TIMEOUT_S = 30.0
#: Fencing and the last delta drain transactions for up to the bricks' fence lapse.
FENCE_CALL_TIMEOUT_S = 45.0
#: A cut-over refused while the leader's fence holds (the record moved under it) is
#: tried again for this long at most.
CUTOVER_WAIT_S = 30.0


class CutOver(Exception):
    """The record shows the job's cut-over done: go forward, not back."""


class NotOurs(AdminError):
    """The targets were listed by someone else: a rollback must not unlist them."""


def plan(cmap: ClusterMap, kind: str, pid_text: str) -> dict[str, Any]:
    """The job's plan, checked against the map.  ``split``: ``pid`` is an active
    partition.  ``merge``: ``pid`` is either one of two active siblings of one RG, or
    their parent.  The job's members are the RG's active members; one that is
    recovering or excluded is left out: it is not readmitted while the targets are
    incoming, nor with a copy that began before the cut-over (``bricks/recovery.py``),
    so it copies the new partitions afterwards."""
    if kind not in KINDS:
        raise AdminError(f"unknown job kind {kind!r}")
    try:
        pid = PartitionId.parse(pid_text)
    except ValueError as e:
        raise AdminError(f"bad partition id {pid_text!r}: {e}") from None
    active = cmap.partition_rg
    if kind == "split":
        rec = active.get(pid)
        if rec is None:
            raise AdminError(f"partition {pid} is not active in any replica group")
        try:
            sources, targets = [pid], list(pid.children())
        except ValueError as e:
            raise AdminError(str(e)) from None
    else:
        if pid in active:
            if pid.depth == 0:
                raise AdminError(f"{pid} is the whole key space: nothing to merge it with")
            sib = pid.sibling()
            sources = sorted([pid, sib])
        else:
            if pid.depth >= 32:
                raise AdminError(f"{pid} is neither an active partition nor a parent of two")
            sources = list(pid.children())
        missing = [str(s) for s in sources if s not in active]
        if missing:
            raise AdminError(f"cannot merge {' and '.join(str(s) for s in sources)}: "
                             f"{', '.join(missing)} not active (a partition merges only with "
                             "its sibling, both leaves)")
        rgs = {active[s].name for s in sources}
        if len(rgs) != 1:
            raise AdminError(f"{' and '.join(str(s) for s in sources)} are in different "
                             f"replica groups ({', '.join(sorted(rgs))}): move one first")
        rec = active[sources[0]]
        targets = [sources[0].parent()]
    listed = {e.pid: e.state for e in rec.partitions}
    busy = [f"{t} ({listed[t]})" for t in targets if t in listed]
    if busy:
        raise AdminError(f"{rec.name} already lists {', '.join(busy)}: another job works on "
                         "it (`dds-admin jobs`; `dds-admin repair` finishes or rolls back one "
                         "whose tool is gone)")
    if not rec.active_members:
        raise AdminError(f"{rec.name} has no active member")
    return {"pid": str(pid), "rg": rec.name, "sources": [str(s) for s in sources],
            "targets": [str(t) for t in targets], "members": list(rec.active_members),
            "leader": rec.active_members[0], "steps": list(STEPS),
            "left_out": [m.brick for m in rec.members if m.state != "active"]}


def cut_state(rec: RGRecord, sources: list[str], targets: list[str]) -> str:
    """``before`` (sources active, targets not), ``after`` (targets active, sources
    gone) or ``other`` (neither: the record was changed by someone else)."""
    entries = {str(e.pid): e.state for e in rec.partitions}
    if all(entries.get(t) == "active" for t in targets) and \
            not any(s in entries for s in sources):
        return "after"
    if all(entries.get(s) == "active" for s in sources) and \
            not any(entries.get(t) == "active" for t in targets):
        return "before"
    return "other"


class Reshaper(RecordEditor):
    """Runs (or resumes) one split or merge job."""

    def __init__(self, reactor: Any, target: Target, cmap: ClusterMap, job: Job,
                 say: Say, progress: Progress | None = None) -> None:
        super().__init__(reactor, target, brick_addresses(cmap), say)
        self.job = job
        self.plan = job.plan
        self.progress = progress
        self.token: int | None = job.steps.get("fenced", {}).get("token")
        self.counts: dict[str, Any] = dict(job.steps.get("delta", {}).get("counts", {}))
        self.fence_held_s = 0.0
        self._fenced_at: float | None = None

    @property
    def what(self) -> str:
        p = self.plan
        return (f"{self.job.kind} of {' + '.join(p['sources'])} into "
                f"{' + '.join(p['targets'])}")

    async def on_members(self, msg: Message,
                         timeout: float = CALL_TIMEOUT_S) -> list[dict[str, Any]]:
        """``msg`` to every member at once; AdminError naming each that failed."""
        members = self.plan["members"]
        replies = await DeferredList([_deferred(self.send(b, msg, timeout))
                                      for b in members], consumeErrors=True)
        failed = [f"{b}: {describe_error(r.value)}" for b, (ok, r) in zip(members, replies)
                  if not ok]
        if failed:
            raise AdminError(f"{msg.TYPE} of job {self.job.id} failed: {'; '.join(failed)}")
        return [r for _, r in replies]

    def _incoming(self, rec: RGRecord, attempt: int) -> list[list[str]] | None:
        p = self.plan
        entries = {str(e.pid): e.state for e in rec.partitions}
        if not all(entries.get(s) == "active" for s in p["sources"]):
            raise AdminError(f"{p['rg']} v{rec.version} no longer lists "
                             f"{', '.join(p['sources'])} active")
        strangers = [b for b in rec.active_members if b not in p["members"]]
        if strangers:       # readmitted since the plan: it would not build the targets
            raise AdminError(f"{', '.join(strangers)} became active in {p['rg']} after "
                             "the job was planned: run it again")
        if all(entries.get(t) == "incoming" for t in p["targets"]):
            if attempt == 0 and not self.job.done("incoming") and not self._resumed:
                self._not_ours = True
                raise NotOurs(f"{p['rg']} already lists {', '.join(p['targets'])} "
                                 "incoming: another job works on it")
            return None
        if any(t in entries for t in p["targets"]):
            self._not_ours = True
            raise NotOurs(f"{p['rg']} v{rec.version} lists "
                             f"{', '.join(t for t in p['targets'] if t in entries)} already")
        for t in p["targets"]:
            entries[t] = "incoming"
        return [[pid, s] for pid, s in sorted(entries.items())]

    def _without_targets(self, rec: RGRecord, attempt: int) -> list[list[str]] | None:
        p = self.plan
        state = cut_state(rec, p["sources"], p["targets"])
        if state == "after":
            raise CutOver()
        entries = {str(e.pid): e.state for e in rec.partitions}
        if not any(t in entries for t in p["targets"]):
            return None
        if any(entries.get(t) == "active" for t in p["targets"]):
            raise AdminError(f"{p['rg']} v{rec.version} lists a target active but not the "
                             "cut-over: changed by someone else; not touching it")
        for t in p["targets"]:
            entries.pop(t, None)
        return [[pid, s] for pid, s in sorted(entries.items())]

    # -- the steps -----------------------------------------------------------------------

    _resumed = False
    #: The targets were found listed by another job: leave the record alone.
    _not_ours = False

    async def run(self) -> None:
        p = self.plan
        job = self.job.id
        if not self.job.done("incoming"):
            await self.update(self.plan["rg"], self._incoming,
                              f"{self.what}: targets incoming")
            await self._step("incoming")
        await self._cancel_point()
        if not self.job.done("prepared"):
            self.say(f"building {', '.join(p['targets'])} on {', '.join(p['members'])}")
            replies = await self._with_progress(self.on_members(
                SplitPrepare(job=job, sources=p["sources"], targets=p["targets"]),
                PREPARE_TIMEOUT_S))
            rows = {b: int(r.get("rows", 0)) for b, r in zip(p["members"], replies)}
            if self.progress is not None:
                total = sum(rows.values())
                self.progress(total, total)
            await self._step("prepared", rows=rows)
        await self._cancel_point()
        # From here to the release the members' fences live only while this tool does.
        # Renewals keep a connection to each member: a new connection (and handshake)
        # per renewal missed the lapse under load and faults.
        renewer = BrickCaller(self.reactor, self.target, self.addresses, reuse=True,
                              connect_timeout=RENEW_TIMEOUT_S)
        keeper = FenceKeeper(self.reactor, renewer.send, [
            (b, SplitFenceRenew(job=job, lapse_ms=LAPSE_MS)) for b in p["members"]])
        await keeper.start()
        try:
            await self._under_fence()
        finally:
            keeper.stop()
            renewer.close()

    async def _under_fence(self) -> None:
        """Fence, last delta, cut-over, release: while ``run`` renews the fences."""
        p = self.plan
        job = self.job.id
        if not self.job.done("fenced"):
            self._fenced_at = self.reactor.seconds()
            reply = await self.send(p["leader"], SplitFence(job=job), FENCE_CALL_TIMEOUT_S)
            self.token = int(reply["token"])
            await self._step("fenced", token=self.token)
        if not self.job.done("delta"):
            replies = await self.on_members(SplitFinish(job=job), FENCE_CALL_TIMEOUT_S)
            counts = {b: r.get("counts", {}) for b, r in zip(p["members"], replies)}
            if len({tuple(sorted(c.items())) for c in counts.values()}) != 1:
                raise AdminError(f"the members' targets differ in live keys: {counts}; "
                                 "their replicas of the sources differed (`dds-admin "
                                 "scrub`)")
            self.counts = counts
            await self._step("delta", counts=counts)
        # No cancel point under the fence: every request here lengthens the write pause.
        await self.forward()

    async def forward(self) -> None:
        """From the cut-over on there is no way back: finish."""
        if not self.job.done("cutover"):
            await self._cutover()
            await self._step("cutover")
        if not self.job.done("released"):
            await self._release()
            await self._step("released")
        await self.job.finish("done")

    async def _cutover(self) -> None:
        p = self.plan
        deadline = self.reactor.seconds() + CUTOVER_WAIT_S
        last = ""
        while True:
            rec = await self.record(self.plan["rg"])
            state = cut_state(rec, p["sources"], p["targets"])
            if state == "after":
                return
            if state != "before" or any(rec.partition_state(PartitionId.parse(t))
                                        != "incoming" for t in p["targets"]):
                raise AdminError(f"{p['rg']} v{rec.version} is not as the job left it "
                                 f"({[[str(e.pid), e.state] for e in rec.partitions]})")
            strangers = [b for b in rec.active_members if b not in p["members"]]
            if strangers:
                raise AdminError(f"{', '.join(strangers)} became active in {p['rg']} "
                                 "without the job's last delta")
            if p["leader"] not in rec.active_members:
                raise AdminError(f"the leader {p['leader']} is no longer active in "
                                 f"{p['rg']}")
            # A member recovering meanwhile is not waited for: it cannot be readmitted
            # while the targets are incoming, nor by a copy that began before this
            # record change (bricks/recovery.py); it copies the targets afterwards.
            entries = {str(e.pid): e.state for e in rec.partitions
                       if str(e.pid) not in p["sources"]}
            entries.update({t: "active" for t in p["targets"]})
            parts = [[pid, s] for pid, s in sorted(entries.items())]
            if self.token is None:
                raise AdminError(f"job {self.job.id} has no fence token: it was not fenced")
            try:
                reply = await self.send(p["leader"], SplitCutover(
                    job=self.job.id, token=self.token, rg=p["rg"], version=rec.version,
                    fp=rec.fp, partitions=parts, reason=f"{self.what}: cut-over"))
                new = record_from_wire(reply["record"])
                assert isinstance(new, RGRecord)
                await self.push(new)
                if self._fenced_at is not None:
                    self.fence_held_s = self.reactor.seconds() - self._fenced_at
                return
            except DDSError as e:
                last = describe_error(e)
                if not await self._fence_held():
                    rec = await self.record(self.plan["rg"])
                    if cut_state(rec, p["sources"], p["targets"]) == "after":
                        return
                    raise AdminError(f"cut-over of job {self.job.id} refused: {last}")
            if self.reactor.seconds() > deadline:
                raise AdminError(f"cut-over of job {self.job.id} not done within "
                                 f"{CUTOVER_WAIT_S:.0f}s: {last}")
            self.say(f"  cut-over: retrying ({last})")
            await pause(self.reactor, 0.2)

    async def _fence_held(self) -> bool:
        """Whether the leader still holds the job's fence (the cut-over may go on)."""
        try:
            reply = await self.send(self.plan["leader"], SplitStatus(job=self.job.id), 5.0)
        except (DDSError, AdminError):
            return False
        job = reply.get("jobs", {}).get(self.job.id)
        fence = job.get("leader_fence") if job else None
        return bool(fence and fence.get("held"))

    async def rollback(self, why: str) -> str:
        """Before the cut-over: undo.  Returns ``rolled back``, or ``finished`` if the
        record shows the cut-over done after all."""
        p = self.plan
        self.say(f"rolling back the {self.what}: {why}")
        abort = SplitAbort(job=self.job.id, reason=f"rolled back: {why}")
        try:        # first the leader: from here on no cut-over can start
            await self.send(p["leader"], abort)
        except (DDSError, AdminError) as e:
            self.say(f"  {p['leader']}: not told ({describe_error(e)}); the record "
                     "decides")
        rec = await self.record(self.plan["rg"])
        if cut_state(rec, p["sources"], p["targets"]) == "after":
            self.say("  the cut-over happened after all: finishing the job")
            await self.forward()
            return "finished"
        others = [b for b in p["members"] if b != p["leader"]]
        replies = await DeferredList([_deferred(self.send(b, abort))
                                      for b in others], consumeErrors=True)
        for b, (ok, r) in zip(others, replies):
            if not ok:
                self.say(f"  {b}: not told ({describe_error(r.value)}); its fence lapses "
                         "and its staged files go when it restarts or expires the job")
        try:
            if not self._not_ours:
                await self.update(self.plan["rg"], self._without_targets,
                                  f"{self.what}: rolled back")
        except CutOver:
            self.say("  the cut-over happened after all: finishing the job")
            await self.forward()
            return "finished"
        await self.job.finish("rolled-back")
        return "rolled back"

    async def _release(self) -> None:
        members = self.plan["members"]
        replies = await DeferredList([_deferred(self.send(b, SplitRelease(job=self.job.id),
                                                          5.0))
                                      for b in members], consumeErrors=True)
        for b, (ok, r) in zip(members, replies):
            if not ok:
                self.say(f"  {b}: release not delivered ({describe_error(r.value)}); its "
                         "fence lapses on its own")

    async def _step(self, name: str, **data: Any) -> None:
        await self.job.step(name, **data)
        if failpoints.ARMED:
            failpoints.fire(f"{self.job.kind}.after_{name}")

    async def _cancel_point(self) -> None:
        if await self.job.cancel_requested():
            await self.rollback("cancelled by dds-admin cancel")
            raise AdminError(f"{self.job.kind} {self.job.id} cancelled and rolled back")

    async def _with_progress(self, work: Any) -> Any:
        """Await ``work`` while polling the members' progress for ``self.progress``."""
        d = _deferred(work)
        if self.progress is None:
            return await d
        progress = self.progress
        finished = [False]
        d.addBoth(lambda r: (finished.__setitem__(0, True), r)[1])

        async def poll() -> None:
            while not finished[0]:
                replies = await DeferredList(
                    [_deferred(self.send(b, SplitStatus(job=self.job.id), 5.0))
                     for b in self.plan["members"]], consumeErrors=True)
                done = total = 0
                for ok, r in replies:
                    j = r.get("jobs", {}).get(self.job.id) if ok else None
                    if j:
                        done += int(j.get("rows_done", 0))
                        total += int(j.get("rows_total", 0))
                if not finished[0]:
                    progress(done, max(total, done))
                await pause(self.reactor, 0.2)
        poller = _deferred(poll())
        try:
            result = await d
        finally:
            await poller
        return result


async def reshape(reactor: Any, target: Target, kind: str, pid: str, say: Say,
                  progress: Progress | None = None, *, dry_run: bool = False,
                  measure: bool = False) -> dict[str, Any]:
    """``dds-admin split|merge``: plan, journal, run; roll back on a failure before the
    cut-over.  With ``dry_run`` only the plan: nothing journaled or changed.  ``measure``
    puts the sources' key + value bytes in the report (always for a dry run).  Returns
    the report (what ``--json`` prints, :func:`dds.tools.reorg.report`'s)."""
    cmap, _ = await fetch_map(reactor, target)
    p = plan(cmap, kind, pid)
    data_bytes = None
    if measure or dry_run:
        sizer = RecordEditor(reactor, target, brick_addresses(cmap), say)
        try:
            data_bytes = await reorg.measure(sizer, p["sources"], p["members"])
        finally:
            await sizer.close()
    if dry_run:
        return _planned(kind, p, data_bytes)
    job = await Job.create(reactor, target, kind, p, brick_addresses(cmap, p["members"]),
                           warn=say)
    runner = Reshaper(reactor, target, cmap, job, say, progress)
    say(f"job {job.id}: {runner.what} in {p['rg']}")
    if p["left_out"]:
        say(f"  without {', '.join(p['left_out'])} (not active): they copy the new "
            "partitions when they recover")
    t0 = reactor.seconds()
    try:
        await runner.run()
    except (AdminError, DDSError) as e:
        if job.state == "running" and not job.done("cutover"):
            try:
                outcome = await runner.rollback(f"failed: {describe_error(e)}")
            except (AdminError, DDSError) as e2:
                say(f"rollback failed too ({describe_error(e2)}); run dds-admin repair")
            else:
                if outcome == "finished":
                    return _report(job, runner, reactor.seconds() - t0, data_bytes)
        raise
    return _report(job, runner, reactor.seconds() - t0, data_bytes)


def _common(kind: str, p: dict[str, Any], job: str | None, data_bytes: int | None,
            seconds: float = 0.0, fence_s: float = 0.0, **extra: Any) -> dict[str, Any]:
    return reorg.report(kind, job=job, pid=p["pid"], sources=p["sources"],
                        targets=p["targets"], from_rg=p["rg"], to_rg=p["rg"],
                        from_bricks=p["members"], to_bricks=p["members"],
                        data_bytes=data_bytes, seconds=seconds, fence_s=fence_s,
                        rg=p["rg"], members=p["members"], leader=p["leader"],
                        left_out=p.get("left_out", []), **extra)


def _planned(kind: str, p: dict[str, Any], data_bytes: int | None) -> dict[str, Any]:
    return _common(kind, p, None, data_bytes, state="planned", rows=0, keys={},
                   warnings=[])


def _report(job: Job, runner: Reshaper, seconds: float,
            data_bytes: int | None) -> dict[str, Any]:
    rows = job.steps.get("prepared", {}).get("rows", {})
    counts: dict[str, Any] = next(iter(runner.counts.values()), {})
    return _common(job.kind, job.plan, job.id, data_bytes, seconds, runner.fence_held_s,
                   state=job.state, rows=max(rows.values(), default=0), keys=counts,
                   warnings=list(job.warnings))


async def resume(reactor: Any, target: Target, view: JobView, say: Say) -> str:
    """``dds-admin repair``: finish a job whose cut-over is done (journaled or not, the
    RG record says), roll back any other.  Returns what was done."""
    cmap, _ = await fetch_map(reactor, target)
    involved = [b for b in view.plan.get("members", []) if b in cmap.bricks]
    job = Job.resume(reactor, target, view, brick_addresses(cmap, involved), warn=say)
    runner = Reshaper(reactor, target, cmap, job, say)
    runner._resumed = True
    if job.done("cutover"):
        await runner.forward()
        return "finished"
    rec = await runner.record(view.plan["rg"])
    if cut_state(rec, view.plan["sources"], view.plan["targets"]) == "after":
        await runner.forward()
        return "finished"
    return await runner.rollback("the tool running it stopped before the cut-over")


def _deferred(coro: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coro)


__all__ = ["KINDS", "STEPS", "Reshaper", "cut_state", "plan", "reshape", "resume"]
