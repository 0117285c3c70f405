"""``dds-admin forget-brick``: a retired brick gone for good.

``remove-brick`` leaves the emptied brick's record in the map, marked
``host = "retired:<host>"`` (a map cannot delete a record: gossip would bring back any
record one brick still holds).  Forgetting pushes the record once more, at the next
version, as a tombstone (``host = "forgotten:<host>"``, ``dds.records.FORGOTTEN``) that
``ClusterMap.bricks`` leaves out: ``status``, ``repair``, ``jobs``, the planners, the
bricks' gossip and the library never see the brick again.  ``add-brick`` of the same id
registers it afresh, at a version above the tombstone.

Refused, with nothing changed, for a brick that is not in the map, is not retired, is
still listed by a replica group (in any member state, as the newest record among the
group's members says), or still answers (a running brick may hold replicas and serve;
stop it first).  Forgetting is by hand only: the map does not record when a brick was
retired, and one command after ``remove-brick`` and stopping the brick is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from rich.console import Console
from rich.markup import escape

from dds.config import format_address
from dds.errors import DDSError
from dds.records import FORGOTTEN, RETIRED, BrickRecord

from dds.tools.cluster import Target, describe_error, fetch_map, gather
from dds.tools.membership import Cluster
from dds.tools.runner import AdminError

__all__ = ["forget_bricks", "render", "tombstone"]

Say = Callable[[str], None]


def tombstone(rec: BrickRecord) -> BrickRecord:
    """The next version of a retired brick's record, marked forgotten."""
    host = rec.host[len(RETIRED):] if rec.host.startswith(RETIRED) else rec.host
    return attrs.evolve(rec, version=rec.version + 1, host=FORGOTTEN + host)


async def _problem(cl: Cluster, brick: str, timeout: float) -> str | None:
    """Why ``brick`` must not be forgotten, or None."""
    rec = cl.map.brick_records[brick]
    listed = [f"{rg.name} ({rg.member_state(brick)})" for rg in
              sorted(cl.map.rgs_of_brick(brick), key=lambda g: (len(g.name), g.name))]
    if listed:
        return (f"{brick} is still a member of {', '.join(listed)}: `dds-admin "
                f"remove-brick {brick}` first")
    if not rec.retired:
        return (f"{brick} is not retired: `dds-admin remove-brick {brick}` first (it takes "
                "the brick out of every replica group and marks it retired)")
    try:
        status = await cl.status(brick, timeout)
    except (DDSError, AdminError):
        return None
    held = len(status.partitions)
    return (f"{brick} still runs and answers at {format_address(rec.address, rec.port)} "
            f"(pid {status.pid}, {held} partition replica(s) on disk): stop it "
            "first; only a stopped brick is forgotten")


async def forget_bricks(reactor: Any, target: Target, bricks: list[str], *, dry_run: bool,
                        timeout: float, say: Say) -> dict[str, Any]:
    """Check every one of ``bricks`` (all must pass, or nothing is pushed), then push
    their tombstones to every brick that answers.  Returns the report (``--json``)."""
    cmap, _seed = await fetch_map(reactor, target, timeout)
    unknown = [b for b in bricks if b not in cmap.brick_records]
    if unknown:
        raise AdminError(f"not in the map: {', '.join(unknown)} (bricks: "
                         f"{', '.join(sorted(cmap.bricks)) or 'none'})")
    cl = Cluster(reactor, target, cmap)
    await gather(cl.lookup(rg) for rg in list(cmap.rgs))   # the newest records
    already = [b for b in bricks if cl.map.brick_records[b].forgotten]
    todo = [b for b in bricks if b not in already]
    problems = [p for p in await gather(_problem(cl, b, timeout) for b in todo) if p]
    for p in problems:
        if isinstance(p, BaseException):
            raise p
    if problems:
        raise AdminError(*[str(p) for p in problems], "nothing was changed")
    report: dict[str, Any] = {"bricks": list(bricks), "dry_run": dry_run,
                              "forgotten": [] if dry_run else todo,
                              "would_forget": todo if dry_run else [],
                              "already_forgotten": already, "pushed_to": [], "ok": True}
    if dry_run or not todo:
        return report
    records = [tombstone(cl.map.brick_records[b]) for b in todo]
    up = await cl.probe([b for b in cl.map.bricks if b not in todo])
    replies = await cl.push(records, sorted(up))
    accepted = sorted(b for b, r in replies.items() if not isinstance(r, BaseException))
    if not accepted:
        raise AdminError("no brick took the tombstones: " + "; ".join(
            f"{b}: {describe_error(r)}" for b, r in replies.items()
            if isinstance(r, BaseException)) or "no brick answers")
    for b, r in replies.items():
        if isinstance(r, BaseException):
            say(f"warning: {b}: {describe_error(r)} (gossip brings it the tombstones)")
    report["pushed_to"] = accepted
    return report


def render(report: dict[str, Any], console: Console) -> None:
    if report["already_forgotten"]:
        console.print(f"already forgotten: {escape(', '.join(report['already_forgotten']))}")
    if report["dry_run"]:
        todo = report["would_forget"]
        if todo:
            console.print(f"would forget {escape(', '.join(todo))}: retired, stopped and in "
                          "no replica group. Nothing was changed (--dry-run).")
        return
    if report["forgotten"]:
        console.print(f"forgot {escape(', '.join(report['forgotten']))} (told "
                      f"{len(report['pushed_to'])} brick(s), gossip tells the others): "
                      "gone from status, repair and placement; `dds-admin add-brick` "
                      "registers one afresh")
