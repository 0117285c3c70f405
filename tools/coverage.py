"""``dds-admin repair``, step ``coverage``: is every key in a partition some brick holds?
(issue 13).

A map whose RG records leave part of the key space without an active (or outgoing)
partition cannot route those keys, and bricks refuse to adopt one; but a map damaged
before they did, or by several records at once, may still be one.  Then the replicas of
the partitions it stopped listing are in the bricks' quarantines (``bricks/quarantine.py``)
until their grace period ends.

1. **Detect.** The map (of the first seed) is checked (``ClusterMap.layout_problem``); each
   brick's ``status`` says which replicas it holds and which it has quarantined.  Reported:
   the layout problem, each listed partition that none of its RG's members holds, each
   quarantined replica with the brick and when it expires, and for each partition missing
   from the map, the bricks that have it in quarantine.
2. **Restore** (not with ``--dry-run``), only in the one case that is safe without a copy:
   a missing partition that *every* active member of one RG holds in quarantine.  That RG
   lists it ``incoming`` (no client routes to it; its members create empty replicas), each
   member gets its own newest quarantined file back (``restore_quarantined``, in place of
   the empty replica), then the RG lists it ``active``.  Anything else is reported for the
   operator: which brick holds which copy.
"""

from __future__ import annotations

from typing import Any

from dds.errors import DDSError, Refused
from dds.maps import ClusterMap
from dds.messages import RestoreQuarantined, RGUpdate
from dds.partition import PartitionId
from dds.records import RGRecord
from dds.tools.cluster import (Answer, Target, brick_statuses, call_brick, describe_error,
                               fetch_map)
from dds.tools.runner import pause

#: ``rg_update`` waits for the majority 2PC.
UPDATE_TIMEOUT_S = 30.0
RESTORE_ATTEMPTS = 25


def _missing(cmap: ClusterMap, pid: PartitionId) -> bool:
    """Whether no partition active or outgoing in ``cmap`` holds any key of ``pid``."""
    covering = {e.pid for rg in cmap.rgs.values() for e in rg.partitions
                if e.state in ("active", "outgoing")}
    anc: PartitionId | None = pid
    while anc is not None:
        if anc in covering:
            return False
        anc = anc.parent() if anc.depth > 0 else None
    mask = (1 << pid.depth) - 1
    return not any(p.depth > pid.depth and p.prefix & mask == pid.prefix for p in covering)


def diagnose(cmap: ClusterMap, statuses: dict[str, dict[str, Any] | BaseException]
             ) -> dict[str, Any]:
    """What is wrong with the key space (pure: for tests and ``--dry-run``)."""
    held: dict[str, set[str]] = {}
    quarantined: list[dict[str, Any]] = []
    unreachable = []
    for brick, st in sorted(statuses.items()):
        if isinstance(st, BaseException):
            rec = cmap.bricks.get(brick)
            if rec is None or not rec.host.startswith("retired:"):   # retired: left
                unreachable.append({"brick": brick, "error": describe_error(st)})
            continue
        held[brick] = set(st.get("partitions", []))
        quarantined += [{"brick": brick, **q} for q in st.get("quarantine", [])]
    unheld = []
    for rg in sorted(cmap.rgs.values(), key=lambda r: r.name):
        for e in rg.partitions:
            if e.state == "incoming":
                continue
            holders = [m.brick for m in rg.members if str(e.pid) in held.get(m.brick, set())]
            unknown = [m.brick for m in rg.members if m.brick not in held]
            if not holders and not unknown:
                unheld.append({"pid": str(e.pid), "rg": rg.name})
    lost: dict[str, list[str]] = {}
    for q in quarantined:
        if _missing(cmap, PartitionId.parse(q["pid"])):
            lost.setdefault(q["pid"], []).append(q["brick"])
    return {"problem": cmap.layout_problem(), "unheld": unheld, "quarantined": quarantined,
            "missing": [{"pid": p, "quarantined_on": sorted(set(b))}
                        for p, b in sorted(lost.items())],
            "unreachable": unreachable}


def restorable(cmap: ClusterMap, missing: dict[str, Any]) -> RGRecord | None:
    """The RG whose every active member holds ``missing`` in quarantine, if one does."""
    on = set(missing["quarantined_on"])
    for rg in sorted(cmap.rgs.values(), key=lambda r: r.name):
        if rg.active_members and set(rg.active_members) <= on:
            return rg
    return None


async def _update(reactor: Any, target: Target, cmap: ClusterMap, rg: RGRecord,
                  pid: str, state: str, timeout: float) -> RGRecord:
    entries: dict[str, str] = {str(e.pid): e.state for e in rg.partitions}
    entries[pid] = state
    brick = cmap.bricks[rg.active_members[0]]
    reply = await call_brick(reactor, brick.address, brick.port, target, RGUpdate(
        rg=rg.name, version=rg.version, fp=rg.fp,
        partitions=[[p, s] for p, s in sorted(entries.items())],
        reason=f"repair: {pid} restored from quarantine ({state})"),
        timeout, call_timeout=UPDATE_TIMEOUT_S)
    new = cmap.merge([_rg_from(reply["record"])]).map
    return new.rgs[rg.name]


def _rg_from(wire: Any) -> RGRecord:
    from dds.records import record_from_wire
    rec = record_from_wire(wire)
    assert isinstance(rec, RGRecord)
    return rec


async def restore(reactor: Any, target: Target, cmap: ClusterMap, rg: RGRecord, pid: str,
                  timeout: float) -> list[str]:
    """Incoming, every member's quarantined copy back, active (see the module doc)."""
    rg = await _update(reactor, target, cmap, rg, pid, "incoming", timeout)
    restored = []
    for member in rg.active_members:
        brick = cmap.bricks[member]
        for attempt in range(RESTORE_ATTEMPTS):
            try:
                await call_brick(reactor, brick.address, brick.port, target,
                                 RestoreQuarantined(pid=pid), timeout)
                break
            except Refused:
                # The member has not learnt the incoming record yet (it follows the
                # record change's decision a moment later).
                if attempt == RESTORE_ATTEMPTS - 1:
                    raise
                await pause(reactor, 0.2)
        restored.append(member)
    await _update(reactor, target, cmap, rg, pid, "active", timeout)
    return restored


async def repair_coverage(reactor: Any, target: Target, *, dry_run: bool, timeout: float,
                          say: Any) -> dict[str, Any]:
    cmap, _seed = await fetch_map(reactor, target, timeout)
    addresses = [(b.id, b.address, b.port) for b in cmap.bricks.values()]
    statuses = await brick_statuses(reactor, addresses, target, timeout)
    report = diagnose(cmap, {b: a.reply if isinstance(a, Answer) else a
                             for b, a in statuses.items()})
    report["restored"] = []
    report["left"] = []
    for missing in report["missing"]:
        rg = restorable(cmap, missing)
        if rg is None or dry_run:
            report["left"].append({**missing, "action": (
                f"would restore into {rg.name}" if rg is not None else
                "no RG has every active member holding it: restore by hand "
                "(restore_quarantined) after listing it")})
            continue
        say(f"restoring {missing['pid']} into {rg.name} from quarantine")
        try:
            members = await restore(reactor, target, cmap, rg, missing["pid"], timeout)
        except DDSError as e:
            report["left"].append({**missing, "error": describe_error(e)})
            continue
        report["restored"].append({"pid": missing["pid"], "rg": rg.name,
                                   "members": members})
        cmap, _seed = await fetch_map(reactor, target, timeout)
    problem = cmap.layout_problem()
    report["ok"] = (problem is None and not report["unheld"] and not report["left"]
                    and not report["unreachable"])
    parts = [f"key space: {problem or 'covered'}"]
    if report["unheld"]:
        parts.append("held by no member: " + ", ".join(
            f"{u['pid']} ({u['rg']})" for u in report["unheld"]))
    if report["restored"]:
        parts.append("restored from quarantine: " + ", ".join(
            f"{r['pid']} into {r['rg']}" for r in report["restored"]))
    if report["left"]:
        parts.append("missing: " + ", ".join(
            f"{x['pid']} (quarantined on {', '.join(x['quarantined_on'])}; "
            f"{x.get('error') or x.get('action')})" for x in report["left"]))
    if report["quarantined"]:
        parts.append(f"{len(report['quarantined'])} quarantined replica(s)")
    report["summary"] = "; ".join(parts)
    return report
