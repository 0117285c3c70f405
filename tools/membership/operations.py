"""``add-brick``, ``remove-brick`` and ``rebalance`` as operations on a cluster (measure,
plan, journal, execute; a plain-dict report), and ``resume``, repair's settling of such
a job whose tool stopped."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import attrs

from dds import failpoints
from dds.config import ConfigError, format_address, parse_address
from dds.errors import DDSError
from dds.maps import ClusterMap
from dds.messages import MapGet
from dds.records import BrickRecord

from dds.tools.cluster import Target, connect_brick, describe_error, fetch_map, gather
from dds.tools.jobs import Job, JobView
from dds.tools.membership.calls import Cluster, partition_sizes
from dds.tools.membership.execute import Executor, Options, Say
from dds.tools.membership.plan import (RETIRED, Change, Plan, is_retired, layout_from_map,
                                       plan_changes)
from dds.tools.membership.progress import QuietView, View
from dds.tools.runner import AdminError

__all__ = ["add_brick", "remove_brick", "rebalance", "resume"]


async def _retire(cl: Cluster, job: Job, bricks: Iterable[str], say: Say) -> list[str]:
    """Mark each of ``bricks`` that no RG lists any more as retired (module doc)."""
    await gather(cl.lookup(rg) for rg in list(cl.map.rgs))
    retired = []
    records = []
    for b in sorted(bricks):
        rec = cl.map.bricks.get(b)
        if rec is None or is_retired(rec) or cl.map.rgs_of_brick(b):
            continue
        records.append(attrs.evolve(rec, version=rec.version + 1,
                                    host=RETIRED + rec.failure_domain))
        retired.append(b)
    if records:
        cl.learn(records)
        await cl.push(records)
        say(f"retired {', '.join(retired)}: no replica group lists them; stop them")
    if not job.done("retired"):
        await job.step("retired", bricks=retired)
    return retired


def _involved(cl: Cluster, changes: list[Change], up: set[str],
              extra: Iterable[str] = ()) -> dict[str, tuple[str, int]]:
    """Where the job is journaled: every brick a change touches and every member of the
    RGs it changes, that answered."""
    ids = set(extra)
    for c in changes:
        ids.update(b for b in (c.old, c.new) if b)
        rec = cl.map.rgs.get(c.rg)
        if rec is not None:
            ids.update(m.brick for m in rec.members)
    ids = {b for b in ids if b in up} or set(up)
    return {b: cl.addresses[b] for b in sorted(ids) if b in cl.addresses}


def _report(kind: str, plan: Plan, *, job: str | None, dry_run: bool,
            missing: list[str], ex: Executor | None = None, seconds: float = 0.0,
            **extra: Any) -> dict[str, Any]:
    changes = []
    for i, c in enumerate(plan.changes, 1):
        row = c.to_json()
        if ex is not None:
            row["outcome"] = ex.outcomes.get(i, "not started")
            row["copied_bytes"] = ex.copied.get(i, 0)
        changes.append(row)
    errors = list(ex.errors) if ex is not None else []
    ok = not plan.problems and (ex is None or (not errors and not ex.cancelled))
    return {"kind": kind, "job": job, "dry_run": dry_run, "plan": plan.to_json(),
            "changes": changes, "ok": ok, "errors": errors,
            "cancelled": bool(ex and ex.cancelled), "seconds": round(seconds, 3),
            "copied_bytes": sum(ex.copied.values()) if ex else 0,
            "sizes_unknown": missing, **extra}


async def _execute(cl: Cluster, job: Job, plan: Plan, view: View, say: Say,
                   options: Options) -> Executor:
    ex = Executor(cl, job, plan.changes, view, say, options)
    await ex.run_all()
    if ex.cancelled:
        await job.finish("cancelled")
    elif ex.errors:
        await job.finish("failed")
    return ex


async def _measure(cl: Cluster, up: set[str], say: Say) -> tuple[dict[str, int], list[str]]:
    say("measuring partitions")
    sizes, missing = await partition_sizes(cl, up)
    if missing:
        say(f"size unknown for {len(missing)} partition(s) (no active member answered): "
            "counted as average")
    return sizes, missing



async def add_brick(reactor: Any, target: Target, address: str, *, brick_id: str | None,
                    host: str | None, rebalance: bool, options: Options, view: View,
                    say: Say) -> dict[str, Any]:
    """Register the brick listening at ``address`` (already running with the cluster's
    secret) and, unless ``rebalance`` is False, give it replicas by member replacement."""
    t0 = time.monotonic()
    try:
        addr_host, port = parse_address(address)
    except ConfigError as e:
        raise AdminError(f"bad address {address!r}: {e.message}") from None
    cmap, _seed = await fetch_map(reactor, target)
    try:
        conn = await connect_brick(reactor, addr_host, port, target, 5.0)
    except DDSError as e:
        raise AdminError(f"{address} does not answer: {describe_error(e)}") from None
    try:
        peer = conn.peer_id
        theirs = ClusterMap.from_wire((await conn.send(MapGet(), timeout=5.0))["map"])
    except (DDSError, ValueError, KeyError) as e:
        raise AdminError(f"{address}: map_get failed: {e}") from None
    finally:
        conn.close()
    if not isinstance(peer, str) or not peer:
        raise AdminError(f"{address} did not name itself in the handshake")
    if brick_id is not None and peer != brick_id:
        raise AdminError(f"{address} is brick {peer!r}, not {brick_id!r}")
    mine, other = cmap.cluster, theirs.cluster
    if other is not None and mine is not None and other.fp != mine.fp:
        raise AdminError(f"{address} ({peer}) already belongs to cluster {other.name!r} "
                         "with another cluster record; nothing was changed")
    for b in cmap.bricks.values():
        if b.id != peer and (b.address, b.port) == (addr_host, port) and not is_retired(b):
            raise AdminError(f"{address} is brick {b.id}'s address in the map")
    domain = host or addr_host
    existing = cmap.brick_records.get(peer)     # a forgotten one's tombstone too
    wanted = BrickRecord(peer, 1, addr_host, port, domain)
    if existing is not None:
        same = (existing.address, existing.port, existing.host) == (addr_host, port, domain)
        wanted = existing if same else attrs.evolve(wanted, version=existing.version + 1)
    cl = Cluster(reactor, target, cmap, {peer: (addr_host, port)})
    up = await cl.probe()
    if peer not in up:
        raise AdminError(f"{peer} at {address} stopped answering: {cl.down.get(peer)}")
    hypothetical = cmap.merge([wanted]).map
    sizes, missing = (await _measure(cl, up, say)) if rebalance else ({}, [])
    plan = plan_changes(layout_from_map(hypothetical, reachable=up, sizes=sizes),
                        fill=rebalance, balance=rebalance)
    if options.dry_run:
        return _report("add-brick", plan, job=None, dry_run=True, missing=missing,
                       brick=peer, address=format_address(addr_host, port), host=domain)
    job = await Job.create(reactor, target, "add-brick", {
        "brick": peer, "address": format_address(addr_host, port), "host": domain,
        "record_version": wanted.version, "changes": [c.to_json() for c in plan.changes],
        "mean": round(plan.mean, 3)}, _involved(cl, plan.changes, up, [peer]), warn=say)
    say(f"job {job.id}: add {peer} ({addr_host}:{port}, host {domain}); "
        f"{len(plan.changes)} change(s)")
    # Registration: the whole map to the new brick, its record to everyone.
    replies = await cl.push(list(cmap.merge([wanted]).map), [peer])
    replies.update(await cl.push([wanted]))
    refused = [f"{b}: {describe_error(r)}" if isinstance(r, BaseException) else
               f"{b} holds a different {', '.join(r['conflicts'])}"
               for b, r in replies.items()
               if isinstance(r, BaseException) or r.get("conflicts")]
    if isinstance(replies.get(peer), BaseException) or refused and len(refused) == len(replies):
        await job.finish("failed")
        raise AdminError(f"registering {peer} failed:", *refused)
    for line in refused:
        say(f"warning: {line} (gossip will bring it the record)")
    cl.learn([wanted])
    await job.step("registered")
    if failpoints.ARMED:
        failpoints.fire("membership.after_registered")
    ex = await _execute(cl, job, plan, view, say, options)
    if not ex.errors and not ex.cancelled:
        await job.finish("done")
    return _report("add-brick", plan, job=job.id, dry_run=False, missing=missing, ex=ex,
                   seconds=time.monotonic() - t0, brick=peer,
                   address=format_address(addr_host, port), host=domain)


async def remove_brick(reactor: Any, target: Target, bricks: list[str], *, drain: bool,
                       force: bool, options: Options, view: View,
                       say: Say) -> dict[str, Any]:
    """Take ``bricks`` out of every RG: each replaced by another brick (``drain``), or
    just removed; refused by the rules of :func:`plan_changes` unless ``force``."""
    t0 = time.monotonic()
    cmap, _seed = await fetch_map(reactor, target)
    unknown = [b for b in bricks if b not in cmap.bricks]
    if unknown:
        raise AdminError(f"not in the map: {', '.join(unknown)} (bricks: "
                         f"{', '.join(sorted(cmap.bricks))})")
    cl = Cluster(reactor, target, cmap)
    up = await cl.probe()
    await gather(cl.lookup(rg) for rg in list(cmap.rgs))
    sizes, missing = (await _measure(cl, up, say)) if drain else ({}, [])
    plan = plan_changes(layout_from_map(cl.map, reachable=up, sizes=sizes), remove=bricks,
                        drain=drain, force=force, fill=False, balance=False)
    extra: dict[str, Any] = {"bricks": sorted(bricks), "drain": drain, "force": force}
    if options.dry_run:
        return _report("remove-brick", plan, job=None, dry_run=True, missing=missing,
                       **extra)
    if plan.problems:
        raise AdminError(*plan.problems, "nothing was changed")
    job = await Job.create(reactor, target, "remove-brick", {
        **extra, "changes": [c.to_json() for c in plan.changes]},
        _involved(cl, plan.changes, up), warn=say)
    say(f"job {job.id}: remove {', '.join(sorted(bricks))}; {len(plan.changes)} change(s)")
    ex = await _execute(cl, job, plan, view, say, options)
    retired: list[str] = []
    if not ex.errors and not ex.cancelled:
        retired = await _retire(cl, job, bricks, say)
        await job.finish("done")
    return _report("remove-brick", plan, job=job.id, dry_run=False, missing=missing,
                   ex=ex, seconds=time.monotonic() - t0, retired=retired, **extra)


async def rebalance(reactor: Any, target: Target, *, options: Options, view: View,
                    say: Say) -> dict[str, Any]:
    """Level the partitions per brick (and fill RGs below the replication factor)."""
    t0 = time.monotonic()
    cmap, _seed = await fetch_map(reactor, target)
    cl = Cluster(reactor, target, cmap)
    up = await cl.probe()
    await gather(cl.lookup(rg) for rg in list(cmap.rgs))
    sizes, missing = await _measure(cl, up, say)
    plan = plan_changes(layout_from_map(cl.map, reachable=up, sizes=sizes))
    if options.dry_run or not plan.changes:
        return _report("rebalance", plan, job=None, dry_run=options.dry_run,
                       missing=missing, rate_mb_s=options.rate_mb_s)
    job = await Job.create(reactor, target, "rebalance", {
        "changes": [c.to_json() for c in plan.changes], "mean": round(plan.mean, 3),
        "rate_mb_s": options.rate_mb_s}, _involved(cl, plan.changes, up), warn=say)
    say(f"job {job.id}: rebalance, {len(plan.changes)} change(s)")
    ex = await _execute(cl, job, plan, view, say, options)
    if not ex.errors and not ex.cancelled:
        await job.finish("done")
    return _report("rebalance", plan, job=job.id, dry_run=False, missing=missing, ex=ex,
                   seconds=time.monotonic() - t0, rate_mb_s=options.rate_mb_s)


async def resume(reactor: Any, target: Target, view: JobView, say: Say) -> str:
    """``dds-admin repair`` of an ``add-brick``, ``remove-brick`` or ``rebalance`` job
    whose tool stopped: each change in flight is finished (its new member is active, or
    becomes so while its recovery progresses) or rolled back (cancel requested, or the
    recovery cannot finish); changes not started are not started.  Returns what was done."""
    cmap, _seed = await fetch_map(reactor, target)
    extra: dict[str, tuple[str, int]] = {}
    if view.kind == "add-brick" and view.plan.get("brick") not in cmap.bricks:
        try:
            extra[str(view.plan["brick"])] = parse_address(str(view.plan["address"]))
        except (KeyError, ConfigError):
            pass
    cl = Cluster(reactor, target, cmap, extra)
    changes = [Change.from_json(c) for c in view.plan.get("changes", [])]
    up = await cl.probe()
    journal = {b: cl.addresses[b] for b in {*view.bricks, *_involved(cl, changes, up)}
               if b in cl.addresses and b in up} or {
        b: cl.addresses[b] for b in view.bricks if b in cl.addresses}
    job = Job.resume(reactor, target, view, journal, warn=say)
    ex = Executor(cl, job, changes, QuietView(), say, Options())
    rollback = view.state == "cancel-requested"
    outcomes: list[str] = []
    for n, c in enumerate(changes, 1):
        outcome = await ex.settle(n, c, rollback)
        ex.outcomes[n] = outcome
        outcomes.append(outcome)
        if outcome not in ("done", "not started"):
            say(f"#{n} {c.text()}: {outcome}")
    done = sum(1 for o in outcomes if o == "done")
    if done == len(changes):
        if view.kind == "remove-brick":
            await _retire(cl, job, view.plan.get("bricks", []), say)
        await job.finish("done")
        return "finished"
    await job.finish("cancelled")
    back = sum(1 for o in outcomes if o.startswith("rolled back"))
    if view.kind == "remove-brick":
        again = "remove-brick " + " ".join(view.plan.get("bricks", []))
    elif view.kind == "add-brick" and not job.done("registered"):
        again = f"add-brick {view.plan.get('address')}"
    else:
        again = "rebalance"
    return (f"stopped: {done} of {len(changes)} change(s) done"
            + (f", {back} rolled back" if back else "")
            + f"; run `dds-admin {again}` again to go on")

