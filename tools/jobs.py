"""Journaled multi-step admin operations (DESIGN §8): the admin side of the bricks' journal.

Every multi-step operation of ``dds-admin`` (move, split, merge, add/remove brick) runs as
a :class:`Job`.  Before it changes anything it writes its **plan** to the journal of every
brick involved (:meth:`Job.create`); after each step it records the step as **completed**
on all of them (:meth:`Job.step`); at the end it records the outcome
(:meth:`Job.finish`).  Between steps it asks whether an operator requested a cancel
(:meth:`Job.cancel_requested`).  A tool that is killed leaves the job ``running`` in the
journals, and ``dds-admin repair`` finds it with :func:`unfinished_jobs` and resumes it
(:meth:`Job.resume`, then :meth:`Job.done` to skip what was already done) or rolls it
back.  So a step must be safe to redo: it may have been done and not recorded.

Why several bricks: the journal must outlive the loss of any one brick, and the bricks
involved in an operation are the ones repair will look at.  A write is good when at least
one brick took it; a brick that could not be reached is a warning (``Job.warnings``, and
the ``warn`` callback).  Every write carries the plan (creating a job again with the same
plan is a no-op on the brick), so a brick that missed a write holds the job again from
the next one on, with the steps it missed supplied by the others when merging.
A brick that *refuses* a write is different: its journal disagrees with this tool (a cancel
turned the job around, repair finished it, a step is recorded with other data), and
:class:`JobConflict` stops the tool.

Merging (:func:`unfinished_jobs`): the same job held by several bricks is one
:class:`JobView`: the union of their steps by name, and the most advanced state (a final
state over ``cancel-requested`` over ``running``; the newest among equals), so a brick
that missed the last writes does not make a finished job look unfinished.

``dds-admin jobs`` (:func:`collect`, :func:`render`) and ``dds-admin cancel``
(:func:`cancel`) are built on the same pieces.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

import attrs
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dds.bricks.journal import FINAL, STATES, UNFINISHED
from dds.errors import InvalidRequest
from dds.maps import ClusterMap
from dds.messages import JournalRead, JournalWrite, Message

from dds.tools.cluster import (CALL_TIMEOUT_S, BrickCaller, Target, describe_error,
                               fetch_map, gather)
from dds.tools.runner import AdminError

__all__ = ["Job", "JobView", "JobScan", "JobConflict", "BrickCall", "brick_caller",
           "brick_addresses", "new_job_id", "unfinished_jobs", "merge", "collect",
           "render", "cancel", "render_cancel", "FINAL", "UNFINISHED", "STATES"]

#: ``call(brick id, request) -> reply``: how a job reaches its bricks.
BrickCall = Callable[[str, Message], Coroutine[Any, Any, dict[str, Any]]]
Warn = Callable[[str], None]
Addresses = Mapping[str, tuple[str, int]]
_RANK = {"running": 0, "cancel-requested": 1}


class JobConflict(AdminError):
    """A brick refused a journal write: its journal disagrees with this tool (the job
    was cancelled or finished by someone else, or a step differs).  The tool must stop."""


def new_job_id(kind: str) -> str:
    """``{kind}-{yyyymmddThhmmss}-{4 hex}``, the time in UTC: sortable by start, unique
    enough for operations an operator starts by hand, and short enough to type."""
    return f"{kind}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def brick_addresses(cmap: ClusterMap, bricks: Iterable[str] | None = None,
                    extra: Addresses | None = None) -> dict[str, tuple[str, int]]:
    """``{brick id: (host, port)}`` for ``bricks`` (every brick of the map by default),
    plus ``extra`` for bricks not in the map yet (one being added)."""
    ids = list(cmap.bricks) if bricks is None else list(bricks)
    out: dict[str, tuple[str, int]] = {}
    for b in ids:
        if b in cmap.bricks:
            rec = cmap.bricks[b]
            out[b] = (rec.address, rec.port)
        elif extra is None or b not in extra:
            raise AdminError(f"brick {b!r} is not in the map and no address was given")
    out.update(extra or {})
    return out


def brick_caller(reactor: Any, target: Target, addresses: Addresses,
                 timeout: float = CALL_TIMEOUT_S) -> BrickCall:
    """A :data:`BrickCall` opening one admin connection per request (as every admin
    command does): journal writes are few, and a fresh connection never carries a stale
    peer over a brick restart.  ``timeout`` for connecting and for each request."""
    return BrickCaller(reactor, target, dict(addresses), timeout=timeout,
                       connect_timeout=timeout, reuse=False).send


def _strip(step: dict[str, Any]) -> dict[str, Any]:
    """A step as the tool wrote it (without the journal's ``seq`` and ``at``)."""
    return {k: v for k, v in step.items() if k not in ("seq", "at")}


class Job:
    """One journaled operation, as the tool running it sees it.

    Build it with :meth:`create` (a new operation) or :meth:`resume` (one found by
    :func:`unfinished_jobs`); not with the constructor, which writes nothing."""

    def __init__(self, call: BrickCall, job: str, kind: str, plan: dict[str, Any],
                 bricks: Sequence[str], *, steps: Iterable[dict[str, Any]] = (),
                 state: str = "running", warn: Warn | None = None) -> None:
        self.call = call
        self.id = job
        self.kind = kind
        self.plan = plan
        self.bricks = list(bricks)
        self.state = state
        #: Completed steps by name, in the order they were recorded.
        self.steps: dict[str, dict[str, Any]] = {s["name"]: _strip(s) for s in steps}
        #: Bricks that took at least one write of this tool.
        self.holders: set[str] = set()
        self.warnings: list[str] = []
        self._warn = warn

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.state} steps={list(self.steps)}>"

    # -- building ------------------------------------------------------------------------

    @classmethod
    async def create(cls, reactor: Any, target: Target, kind: str, plan: dict[str, Any],
                     bricks: Addresses, *, timeout: float = 5.0, warn: Warn | None = None,
                     job_id: str | None = None, call: BrickCall | None = None) -> Job:
        """Write the plan to the journal of every brick in ``bricks`` (``{id: (host,
        port)}``, see :func:`brick_addresses`) before anything is done.  Raises
        :class:`AdminError` unless at least one took it; the others are warnings."""
        if not bricks:
            raise AdminError(f"{kind}: a job needs at least one brick to journal on")
        job = cls(call or brick_caller(reactor, target, bricks, timeout),
                  job_id or new_job_id(kind), kind, plan, sorted(bricks), warn=warn)
        await job._write({}, "plan")
        return job

    @classmethod
    def resume(cls, reactor: Any, target: Target, view: JobView, bricks: Addresses, *,
               timeout: float = 5.0, warn: Warn | None = None,
               call: BrickCall | None = None) -> Job:
        """Take over a job found by :func:`unfinished_jobs` (``dds-admin repair``):
        its recorded steps count as done; ``bricks`` are where to journal from now on
        (the bricks that hold it, and any others involved)."""
        return cls(call or brick_caller(reactor, target, bricks, timeout), view.job,
                   view.kind, view.plan, sorted(bricks), steps=view.steps, state=view.state,
                   warn=warn)

    # -- recording -----------------------------------------------------------------------

    def done(self, name: str) -> bool:
        """Whether step ``name`` is recorded as completed (skip it when resuming)."""
        return name in self.steps

    async def step(self, name: str, **data: Any) -> None:
        """Record that step ``name`` is completed (with ``data``, JSON values) on every
        brick of the job.  Recording a done step again with the same data is harmless."""
        for key in ("at", "seq"):
            if key in data:
                raise ValueError(f"step {name!r}: {key!r} is reserved by the journal")
        step = {"name": name, **data}
        await self._write({"step": step}, f"step {name}")
        self.steps[name] = step

    async def finish(self, state: str = "done") -> None:
        """Record the outcome: ``done``, ``failed``, ``cancelled`` or ``rolled-back``."""
        if state not in FINAL:
            raise ValueError(f"not a final job state: {state!r} (one of {', '.join(FINAL)})")
        await self._write({"state": state}, state)
        self.state = state

    async def cancel_requested(self) -> bool:
        """Whether any brick of the job holds a cancel request (``dds-admin cancel``).
        Ask between steps; unreachable bricks are ignored here (the next write warns)."""
        results = await gather(self.call(b, JournalRead(job=self.id))
                               for b in self.bricks)
        return any(j.get("state") == "cancel-requested"
                   for r in results if not isinstance(r, BaseException)
                   for j in r.get("jobs", []))

    async def _write(self, body: dict[str, Any], what: str) -> None:
        """One journal write on every brick.  The plan goes with every write (creating
        the job again with the same plan is a no-op), so a brick that missed earlier
        writes, or lost its journal, holds the job again from this one on.  At least one
        brick must take it; a refusal is a conflict."""
        request = JournalWrite(job=self.id, kind=self.kind, plan=self.plan, **body)
        results = await gather(self.call(b, request) for b in self.bricks)
        refused: list[str] = []
        failed: list[str] = []
        for brick, r in zip(self.bricks, results):
            if isinstance(r, InvalidRequest):
                refused.append(f"{brick} refused {what} of job {self.id}: {r.message}")
            elif isinstance(r, BaseException):
                failed.append(f"journal of {brick} not written ({what} of job {self.id}): "
                              f"{describe_error(r)}")
            else:
                self.holders.add(brick)
        if refused:
            raise JobConflict(*refused, *failed)
        if len(failed) == len(self.bricks):
            raise AdminError(f"job {self.id}: {what} could not be journaled on any "
                             "brick; nothing was done after it", *failed)
        for line in failed:
            self.warnings.append(line)
            if self._warn is not None:
                self._warn(line)


# -- reading every brick's journal ---------------------------------------------------------

@attrs.frozen
class JobView:
    """One job as every brick holding it reports it, merged (see :func:`merge`)."""

    job: str
    kind: str
    plan: dict[str, Any]
    state: str
    #: Completed steps, the union over the bricks by name (each with the ``at`` of the
    #: first brick that reported it).
    steps: tuple[dict[str, Any], ...]
    created: float
    updated: float
    #: Seconds since creation, by the clock of the brick that holds it longest.
    age_s: float
    #: The state each brick holding it has.
    bricks: dict[str, str]
    #: Disagreements between the bricks (should not happen; shown to the operator).
    problems: tuple[str, ...] = ()

    @property
    def unfinished(self) -> bool:
        return self.state in UNFINISHED

    def done(self, name: str) -> bool:
        return any(s["name"] == name for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "kind": self.kind, "plan": self.plan, "state": self.state,
                "steps": list(self.steps), "created": self.created,
                "updated": self.updated, "age_s": round(self.age_s, 3),
                "bricks": dict(sorted(self.bricks.items())),
                "problems": list(self.problems)}


@attrs.frozen
class JobScan:
    """What :func:`unfinished_jobs` found: the merged jobs (newest first) and the bricks
    whose journal could not be read (their jobs may be missing or incomplete)."""

    jobs: list[JobView]
    unreachable: dict[str, str]
    addresses: dict[str, tuple[str, int]]
    cluster: str | None = None
    seed: str | None = None


def _state_key(entry: dict[str, Any]) -> tuple[int, float]:
    return (_RANK.get(entry["state"], 2), entry["updated"])


def merge(held: Mapping[str, tuple[dict[str, Any], float]]) -> JobView:
    """One job from the copies of several bricks: ``{brick: (its journal entry, its
    clock now)}``.  Most advanced state wins (final > cancel-requested > running, then
    newest); steps are the union by name."""
    entries = sorted(held.items(), key=lambda kv: _state_key(kv[1][0]), reverse=True)
    first = entries[0][1][0]
    problems = []
    finals = {e["state"] for e, _ in held.values() if e["state"] in FINAL}
    if len(finals) > 1:
        problems.append(f"bricks disagree on the outcome: {', '.join(sorted(finals))}")
    for brick, (e, _now) in entries[1:]:
        if (e["kind"], e["plan"]) != (first["kind"], first["plan"]):
            problems.append(f"{brick} holds another plan than {entries[0][0]}")
    # The most complete copy gives the order; steps only others have follow by time.
    by_steps = sorted(held.values(), key=lambda v: len(v[0]["steps"]), reverse=True)
    steps: dict[str, dict[str, Any]] = {}
    for s in by_steps[0][0]["steps"]:
        steps.setdefault(s["name"], s)
    rest = sorted((s for e, _ in by_steps[1:] for s in e["steps"]),
                  key=lambda s: s.get("at", 0.0))
    for s in rest:
        steps.setdefault(s["name"], s)
    return JobView(
        job=first["job"], kind=first["kind"], plan=first["plan"], state=first["state"],
        steps=tuple({k: v for k, v in s.items() if k != "seq"} for s in steps.values()),
        created=min(e["created"] for e, _ in held.values()),
        updated=max(e["updated"] for e, _ in held.values()),
        age_s=max(max(0.0, now - e["created"]) for e, now in held.values()),
        bricks={b: e["state"] for b, (e, _now) in held.items()},
        problems=tuple(problems))


async def unfinished_jobs(reactor: Any, target: Target, *, timeout: float = 5.0,
                          include_finished: bool = False, job: str | None = None,
                          extra: Addresses | None = None,
                          call: BrickCall | None = None) -> JobScan:
    """The jobs in the journals of every brick of the map (and ``extra`` bricks not in
    it), merged across bricks: unfinished ones, or all with ``include_finished``, or the
    one ``job`` whatever its state.  A job counts as unfinished only if its merged state
    is: a brick that recorded ``done`` outweighs one still saying ``running``."""
    cmap, seed = await fetch_map(reactor, target, timeout)
    addresses = brick_addresses(cmap, extra=extra)
    call = call or brick_caller(reactor, target, addresses, timeout)
    read = (JournalRead(job=job) if job is not None
            else JournalRead(unfinished=not include_finished))
    ids = sorted(addresses, key=lambda b: (len(b), b))
    replies = await gather(call(b, read) for b in ids)
    unreachable: dict[str, str] = {}
    held: dict[str, dict[str, tuple[dict[str, Any], float]]] = {}
    for brick, r in zip(ids, replies):
        if isinstance(r, BaseException):
            rec = cmap.bricks.get(brick)
            if rec is None or not rec.host.startswith("retired:"):
                unreachable[brick] = describe_error(r)   # a retired one holds no job
            continue
        now = float(r.get("now", time.time()))
        for entry in r.get("jobs", []):
            held.setdefault(entry["job"], {})[brick] = (entry, now)
    views = [merge(h) for h in held.values()]
    if job is None and not include_finished:
        # Each brick listed only its unfinished copies; one that finished the job may
        # not have said so: ask again for the full picture of every job found.
        views = await _complete(views, ids, call, unreachable)
        views = [v for v in views if v.unfinished]
    views.sort(key=lambda v: (v.created, v.job), reverse=True)
    cluster = cmap.cluster.name if cmap.cluster is not None else None
    return JobScan(views, unreachable, addresses, cluster, seed)


async def _complete(views: list[JobView], ids: list[str], call: BrickCall,
                    unreachable: Mapping[str, str]) -> list[JobView]:
    """Re-read each found job from every reachable brick, whatever its state there."""
    out = []
    asked = [b for b in ids if b not in unreachable]
    for v in views:
        replies = await gather(call(b, JournalRead(job=v.job)) for b in asked)
        held: dict[str, tuple[dict[str, Any], float]] = {}
        for brick, r in zip(asked, replies):
            if isinstance(r, BaseException):
                continue
            for entry in r.get("jobs", []):
                held[brick] = (entry, float(r.get("now", time.time())))
        out.append(merge(held) if held else v)
    return out


# -- dds-admin jobs ------------------------------------------------------------------------

async def collect(reactor: Any, target: Target, timeout: float = 5.0,
                  show_all: bool = False) -> dict[str, Any]:
    """The ``jobs`` report (what ``--json`` prints): unfinished jobs (every job kept
    with ``show_all``), merged across bricks, and the bricks that could not be read."""
    scan = await unfinished_jobs(reactor, target, timeout=timeout,
                                 include_finished=show_all)
    return {"cluster": scan.cluster, "seed": scan.seed, "all": show_all,
            "jobs": [v.to_json() for v in scan.jobs],
            "unfinished": sum(1 for v in scan.jobs if v.unfinished),
            "unreachable": scan.unreachable}


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _value(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)}]"
    if isinstance(value, dict):
        return f"{{{len(value)}}}"
    return str(value)


def plan_summary(plan: dict[str, Any], width: int = 60) -> str:
    """The plan's top-level items on one line: scalars as they are, lists and maps as
    their size (``--json`` has the whole plan)."""
    text = ", ".join(f"{k}={_value(v)}" for k, v in plan.items())
    return text if len(text) <= width else text[:width - 1] + "…"


def progress_text(job: dict[str, Any]) -> str:
    """``done/planned`` when the plan lists its steps (``plan["steps"]``), else the
    number done; then the last step recorded."""
    steps = job["steps"]
    planned = job["plan"].get("steps")
    count = f"{len(steps)}/{len(planned)}" if isinstance(planned, list) else str(len(steps))
    return count + (f" (last: {steps[-1]['name']})" if steps else "")


_STATE_STYLE = {"running": "yellow", "cancel-requested": "magenta", "done": "green",
                "failed": "red", "cancelled": "dim", "rolled-back": "dim"}


def render(report: dict[str, Any], console: Console) -> None:
    jobs = report["jobs"]
    if jobs:
        t = Table(title="jobs" if report["all"] else "unfinished jobs", title_justify="left")
        for col in ("job", "kind", "state", "steps done", "plan", "age", "bricks"):
            t.add_column(col, justify="right" if col == "age" else "left")
        for j in jobs:
            style = _STATE_STYLE.get(j["state"], "")
            t.add_row(escape(j["job"]), escape(j["kind"]),
                      f"[{style}]{j['state']}[/{style}]" if style else j["state"],
                      escape(progress_text(j)), escape(plan_summary(j["plan"])),
                      _age(j["age_s"]), " ".join(j["bricks"]))
        console.print(t)
        for j in jobs:
            for p in j["problems"]:
                console.print(f"[red]{escape(j['job'])}: {escape(p)}[/red]")
    if report["unfinished"]:
        console.print(f"{report['unfinished']} unfinished job(s): a running tool finishes "
                      "its own; `dds-admin repair` finishes or rolls back those whose "
                      "tool is gone; `dds-admin cancel JOB` stops one")
    else:
        console.print("no unfinished jobs" + ("" if report["all"] or jobs else
                                              " (--all lists finished ones)"))
    for brick, error in sorted(report["unreachable"].items()):
        console.print(f"[red]{brick}: journal not read: {escape(error)}[/red]")


# -- dds-admin cancel ----------------------------------------------------------------------

async def cancel(reactor: Any, target: Target, job: str, timeout: float = 5.0
                 ) -> dict[str, Any]:
    """Record a cancel request for ``job`` on every brick holding it.  The tool running
    the job stops after its current step and rolls back; if no tool runs it any more,
    ``dds-admin repair`` does.  Raises :class:`AdminError` for an unknown or finished
    job, or when no brick took the request."""
    scan = await unfinished_jobs(reactor, target, timeout=timeout, job=job)
    unreachable = [f"{b} ({e})" for b, e in sorted(scan.unreachable.items())]
    if not scan.jobs:
        raise AdminError(f"no job {job!r} in the journal of any brick"
                         + (f"; not read: {', '.join(unreachable)}" if unreachable else "")
                         + " (`dds-admin jobs --all` lists the jobs)")
    view = scan.jobs[0]
    if view.state in FINAL:
        raise AdminError(f"job {job} is already finished ({view.state}): nothing to "
                         "cancel")
    call = brick_caller(reactor, target, scan.addresses, timeout)
    holders = sorted(view.bricks, key=lambda b: (len(b), b))
    results = await gather(call(b, JournalWrite(job=job, state="cancel-requested"))
                           for b in holders)
    requested: list[str] = []
    errors: dict[str, str] = {}
    for brick, r in zip(holders, results):
        if isinstance(r, BaseException):
            errors[brick] = describe_error(r)
        else:
            requested.append(brick)
    report = {"job": job, "kind": view.kind, "was": view.state,
              "already_requested": view.state == "cancel-requested",
              "requested_on": requested, "errors": errors,
              "unreachable": scan.unreachable, "ok": bool(requested)}
    if not requested:
        raise AdminError(f"cancel of job {job} was not recorded on any brick:",
                         *(f"{b}: {e}" for b, e in errors.items()))
    return report


def render_cancel(report: dict[str, Any], console: Console) -> None:
    job = escape(report["job"])
    again = " (it was already requested)" if report["already_requested"] else ""
    console.print(f"cancel requested for job [bold]{job}[/bold] ({escape(report['kind'])})"
                  f" on {', '.join(report['requested_on'])}{again}")
    for brick, error in sorted(report["errors"].items()):
        console.print(f"[yellow]{brick}: not recorded: {escape(error)}[/yellow]")
    for brick, error in sorted(report["unreachable"].items()):
        console.print(f"[yellow]{brick}: journal not read: {escape(error)}[/yellow]")
    console.print("the tool running it stops after its current step and rolls back; if "
                  "no tool runs it any more, `dds-admin repair` does")
