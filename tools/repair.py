"""``dds-admin repair``: bring a cluster back to a consistent state, step by step.

Repair is a fixed sequence of **steps**, each repairing one kind of damage.  Each step
that exists is listed, and a step that is not implemented yet says so instead of
pretending to have checked anything:

1. ``txns`` — **in-doubt transactions** (implemented): prepared transactions past their
   deadline are resolved by the termination rule (DESIGN §4) on the brick that holds them
   (the brick's ``resolve`` request).  A transaction decided that way is then resolved on
   the other members that still hold it; they follow the decision (a member that is not
   past its deadline only ever follows a decision another member made).
2. ``map`` — **map divergence** (implemented, ``tools/mapcheck.py``): every brick's map
   compared record by record; bricks holding an older version of a record (or none) get
   the newest pushed; a record held at one version with different contents on different
   bricks is made to agree by committing the content a majority holds (of the RG's own
   active members, for an RG record) as a new version, by the normal record change.  No
   safe choice: nothing is changed, and the step fails (``--prefer BRICK`` chooses).
3. ``reorg`` — **half-done reorganizations** (a journaled move whose admin tool died, or
   whose brick crashed): rolled back before its cut-over, finished after it.
4. ``coverage`` — **key space coverage** (``tools/coverage.py``): the map must route every
   key to a partition a brick holds; partitions it lost are reported with the bricks that
   hold them in quarantine, and restored from there when every member of one RG has one.

A later step plugs in by adding a :class:`Step` with a ``run`` coroutine to :data:`STEPS`.
:func:`repair` returns the report (what ``--json`` prints); :func:`render` draws it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dds.errors import DDSError
from dds.messages import Resolve
from dds.tools.cluster import Target, call_brick, describe_error, gather
from dds.tools.txns import brick_txns, cut, is_in_doubt

__all__ = ["Options", "Step", "STEPS", "repair", "render"]


@attrs.frozen
class Options:
    dry_run: bool = False
    #: Also resolve prepared transactions whose deadline has not passed (the operator
    #: knows their coordinators are dead).  Unsafe while a coordinator still runs.
    before_deadline: bool = False
    timeout: float = 5.0
    #: Map step: the brick whose contents win a conflicting record that no majority
    #: holds (pushed as a new version without a vote).  None: such a conflict is refused.
    prefer: str | None = None


#: Time a brick may need for termination beyond the admin tool's own timeout.
RESOLVE_ROOM_S = 60.0
Say = Callable[[str], None]
StepRun = Callable[[Any, Target, Options, Say], Awaitable[dict[str, Any]]]


@attrs.frozen
class Step:
    name: str
    title: str
    #: The step's coroutine; None while it is not implemented.  Its result dict has at
    #: least ``ok`` (nothing it is responsible for is left broken or unchecked) and
    #: ``summary`` (one line).
    run: StepRun | None
    note: str = ""


# -- step 1: in-doubt transactions ---------------------------------------------------------

async def _resolve(reactor: Any, target: Target, brick: dict[str, Any],
                   txid: list[int], force: bool, timeout: float) -> dict[str, Any]:
    host, _, port = brick["address"].rpartition(":")
    # Termination asks the other members one by one, each with its own connect and call
    # timeouts: leave room for that.
    reply = await call_brick(reactor, host, int(port), target,
                             Resolve(txid=txid, force=force), timeout,
                             call_timeout=timeout + RESOLVE_ROOM_S)
    return dict(reply["resolved"][0])


def _outcome(brick: dict[str, Any], txn: dict[str, Any], phase: str,
             result: dict[str, Any] | BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"brick": brick["id"], "txid": txn["txid"],
                           "txid_text": txn["txid_text"], "pid": txn["pid"],
                           "key": txn["key"], "phase": phase}
    if isinstance(result, BaseException):
        out.update(decision="error", members=[], states=[], reason=describe_error(result))
    else:
        out.update(decision=result["decision"], members=result.get("members", []),
                   states=result.get("states", []), reason=result.get("reason", ""))
    return out


async def resolve_txns(reactor: Any, target: Target, options: Options,
                       say: Say) -> dict[str, Any]:
    """Step 1: list every brick's transactions; resolve the in-doubt ones (all prepared
    ones with ``before_deadline``) where they are held; then have the other holders of
    each decided transaction follow the decision."""
    _head, bricks = await brick_txns(reactor, target, options.timeout)
    # A retired brick (remove-brick) that is stopped holds no transaction of the cluster.
    unreachable = [{"brick": b["id"], "error": b.get("error", "")}
                   for b in bricks if not b["up"] and not b.get("retired")]
    holders: dict[tuple[int, int], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    due: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for b in bricks:
        for t in b["txns"]:
            holders.setdefault((t["txid"][0], t["txid"][1]), []).append((b, t))
            if is_in_doubt(t) or (options.before_deadline and t["state"] == "prepared"):
                due.append((b, t))
    candidates = [{"brick": b["id"], **t} for b, t in due]
    report: dict[str, Any] = {"candidates": candidates, "resolved": [],
                              "unreachable": unreachable}
    if options.dry_run or not due:
        n = len(candidates)
        what = "would resolve" if options.dry_run else "resolved"
        report["still_in_doubt"] = n
        report["ok"] = not unreachable and (options.dry_run or n == 0)
        report["summary"] = (f"{what} {n} transaction(s)" if n else
                             "no in-doubt transactions") + _unreachable_note(unreachable)
        return report

    say(f"resolving {len(due)} transaction(s) by the termination rule")
    first = await gather(_resolve(reactor, target, b, t["txid"], options.before_deadline,
                                  options.timeout) for b, t in due)
    outcomes = [_outcome(b, t, "due", r) for (b, t), r in zip(due, first)]
    decided = {(o["txid"][0], o["txid"][1]) for o in outcomes
               if o["decision"] in ("commit", "abort")}
    done = {(o["brick"], o["txid"][0], o["txid"][1]) for o in outcomes
            if o["decision"] in ("commit", "abort")}
    follow = [(b, t) for txid in sorted(decided) for b, t in holders[txid]
              if (b["id"], txid[0], txid[1]) not in done]
    if follow:
        say(f"asking {len(follow)} other holder(s) to follow the decisions")
        second = await gather(_resolve(reactor, target, b, t["txid"], False,
                                       options.timeout) for b, t in follow)
        outcomes += [_outcome(b, t, "follow", r) for (b, t), r in zip(follow, second)]
    final: dict[tuple[str, int, int], str] = {}
    for o in outcomes:
        final[o["brick"], o["txid"][0], o["txid"][1]] = o["decision"]
    left = sum(1 for d in final.values() if d not in ("commit", "abort"))
    report["resolved"] = outcomes
    report["still_in_doubt"] = left
    report["ok"] = left == 0 and not unreachable
    counts: dict[str, int] = {}
    for d in final.values():
        counts[d] = counts.get(d, 0) + 1
    txids = {(o["txid"][0], o["txid"][1]) for o in outcomes}
    report["summary"] = (f"{len(txids)} transaction(s), {len(final)} brick holding(s): "
                         + ", ".join(f"{n} {d}" for d, n in sorted(counts.items()))
                         + _unreachable_note(unreachable))
    return report


def _unreachable_note(unreachable: list[dict[str, Any]]) -> str:
    if not unreachable:
        return ""
    return f"; not reachable, not checked: {', '.join(u['brick'] for u in unreachable)}"


# -- step 2: map divergence -------------------------------------------------------------------

async def resolve_map(reactor: Any, target: Target, options: Options,
                      say: Say) -> dict[str, Any]:
    """Step 2: make every brick hold the same version and contents of every map record
    (``tools/mapcheck.py``)."""
    from dds.tools import mapcheck

    return await mapcheck.repair_map(reactor, target, dry_run=options.dry_run,
                                     prefer=options.prefer, timeout=options.timeout,
                                     say=say)


# -- step 3: half-done reorganizations -------------------------------------------------------

async def resume_jobs(reactor: Any, target: Target, options: Options,
                      say: Say) -> dict[str, Any]:
    """Step 3: every unfinished journaled job (its tool was killed, or a brick crashed
    under it) is finished or rolled back, by the rule of its kind (``tools/move.py``:
    back before the cut-over, forward after it)."""
    from dds.tools import move
    from dds.tools.jobs import unfinished_jobs
    from dds.tools.runner import AdminError

    scan = await unfinished_jobs(reactor, target, timeout=options.timeout)
    handlers = {"move": move.resume}
    from dds.tools import split     # split and merge in place
    handlers.update({"split": split.resume, "merge": split.resume})
    from dds.tools import membership
    handlers.update({kind: membership.resume
                     for kind in ("add-brick", "remove-brick", "rebalance")})
    done: list[dict[str, Any]] = []
    left: list[dict[str, Any]] = []
    for view in scan.jobs:
        names = [str(st.get("name")) for st in view.steps]
        entry = {"job": view.job, "kind": view.kind, "steps": names}
        handler = handlers.get(view.kind)
        if handler is None:
            left.append({**entry, "error": f"no repair for jobs of kind {view.kind!r}"})
            continue
        if options.dry_run:
            left.append({**entry, "action": "would resume"})
            continue
        say(f"resuming {view.kind} job {view.job} (steps done: "
            f"{', '.join(names) or 'none'})")
        try:
            action = await handler(reactor, target, view, say)
        except (AdminError, DDSError) as e:
            left.append({**entry, "error": describe_error(e)})
            continue
        done.append({**entry, "action": action})
    unreachable = [{"brick": b, "error": e} for b, e in scan.unreachable.items()]
    summary = (", ".join(f"{d['job']}: {d['action']}" for d in done) or
               "no half-done reorganizations")
    if left:
        summary += f"; {len(left)} left: " + ", ".join(
            f"{x['job']} ({x.get('error') or x.get('action')})" for x in left)
    return {"resumed": done, "left": left, "unreachable": unreachable,
            "ok": not left and not unreachable,
            "summary": summary + _unreachable_note(unreachable)}


# -- step 4: key space coverage --------------------------------------------------------------

async def resolve_coverage(reactor: Any, target: Target, options: Options,
                           say: Say) -> dict[str, Any]:
    """Step 4: every key in a partition some brick holds; partitions the map lost are
    restored from quarantine where that is safe (``tools/coverage.py``)."""
    from dds.tools import coverage

    return await coverage.repair_coverage(reactor, target, dry_run=options.dry_run,
                                          timeout=options.timeout, say=say)


STEPS: tuple[Step, ...] = (
    Step("txns", "in-doubt transactions", resolve_txns,
         "resolved by the termination rule"),
    Step("map", "map divergence", resolve_map,
         "lagging bricks get the newest records; a conflict is won by the contents a "
         "majority holds, at a new version"),
    Step("reorg", "half-done reorganizations", resume_jobs,
         "journaled moves finished or rolled back"),
    Step("coverage", "key space coverage", resolve_coverage,
         "every key in a partition a brick holds; lost partitions restored from "
         "quarantine"),
)


async def repair(reactor: Any, target: Target, options: Options, only: set[str] | None,
                 say: Say) -> dict[str, Any]:
    """Run the steps in order (only those named in ``only``, when given)."""
    steps: list[dict[str, Any]] = []
    for step in STEPS:
        entry: dict[str, Any] = {"name": step.name, "title": step.title,
                                 "implemented": step.run is not None, "ran": False,
                                 "note": step.note}
        if only is not None and step.name not in only:
            entry["skipped"] = "not selected"
        elif step.run is not None:
            say(f"step {step.name}: {step.title}")
            entry["result"] = await step.run(reactor, target, options, say)
            entry["ran"] = True
        steps.append(entry)
    ran = [s for s in steps if s["ran"]]
    return {"dry_run": options.dry_run, "before_deadline": options.before_deadline,
            "prefer": options.prefer, "steps": steps, "ok": all(s["result"]["ok"] for s in ran)}


def render(report: dict[str, Any], console: Console) -> None:
    console.print("repair steps" + (" (dry run: nothing is changed)"
                                    if report["dry_run"] else "") + ":")
    for i, s in enumerate(report["steps"], 1):
        if s["ran"]:
            state = ("[green]done[/green]" if s["result"]["ok"] else
                     "[red]incomplete[/red]") if not report["dry_run"] else (
                "checked" if s["result"]["ok"] else "[red]checked[/red]")
            line = f"{state}: {escape(s['result']['summary'])}"
        elif not s["implemented"]:
            line = f"[yellow]{escape(s['note'])}[/yellow]"
        else:
            line = f"skipped ({escape(s.get('skipped', ''))})"
        console.print(f"  {i}. {s['name']:<6} {s['title']}: {line}", soft_wrap=True)
    for s in report["steps"]:
        if s["name"] == "txns" and s["ran"]:
            _render_txns(s["result"], report["dry_run"], console)
        if s["name"] == "map" and s["ran"]:
            from dds.tools import mapcheck
            mapcheck.render(s["result"], report["dry_run"], console)


def _render_txns(result: dict[str, Any], dry_run: bool, console: Console) -> None:
    if dry_run and result["candidates"]:
        t = Table(title="in-doubt transactions that repair would resolve",
                  title_justify="left")
        for col in ("brick", "txid", "partition", "key", "state", "age"):
            t.add_column(col)
        for c in result["candidates"]:
            t.add_row(c["brick"], c["txid_text"], c["pid"], escape(cut(c["key"])),
                      c["state"] + (", in doubt" if c["in_doubt"] else ""),
                      f"{c['age_s']:.1f}s")
        console.print(t)
    if result["resolved"]:
        t = Table(title="termination decisions", title_justify="left")
        for col in ("brick", "txid", "partition", "key", "decision", "other members",
                    "why"):
            t.add_column(col)
        for o in result["resolved"]:
            colour = {"commit": "green", "abort": "yellow"}.get(o["decision"], "red")
            members = ", ".join(f"{m}: {s}" for m, s in zip(o["members"], o["states"]))
            t.add_row(o["brick"], o["txid_text"], o["pid"], escape(cut(o["key"])),
                      f"[{colour}]{o['decision']}[/{colour}]", members or "-",
                      escape(o["reason"]))
        console.print(t)
    for u in result["unreachable"]:
        console.print(f"[red]{u['brick']}: not reachable: {escape(u['error'])}[/red]")
