"""``dds-admin status``: the map as one seed holds it, and every brick's own view.

The report is a plain dict (what ``--json`` prints); :func:`render` draws it as tables.
Divergence is flagged, in red: bricks that report different map fingerprints, and any
record for which two bricks hold the same version with different fingerprints (which
only ``dds-admin repair`` can resolve).

Membership (DESIGN §5–7) is shown per RG and member: the member state the map records
next to the one the brick reports for itself (they differ briefly while a change
spreads, and for good when a brick missed its own exclusion while it was away), the
brick's membership lease, whether it serves the RG, the progress of a recovery, and the
RG's last exclusion.  Exclusions are taken from the change history the bricks keep in
memory (the coordinator's and the voters'), so one surviving member is enough to name
it; a history lost to restarts of every member that saw it is simply not shown.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import Any

from rich.console import Console, RenderableType
from rich.filesize import decimal
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dds.config import format_address
from dds.partition import PartitionId
from dds.tools import ui
from dds.tools.cluster import Target, brick_statuses, describe_error, fetch_map
from dds.tools.runner import run

__all__ = ["collect", "render", "show", "divergence", "last_exclusions", "membership"]

#: The mark remove-brick puts on a retired brick's record (``host``).
RETIRED = "retired:"
#: Member states as the map spells them, and how they are coloured.
STATE_COLOURS = {"active": "green", "recovering": "yellow", "excluded": "red"}
#: Partition ids listed per replica group in the table (a large cluster has thousands).
PARTITION_IDS_SHOWN = 32


def _fp(value: int | None) -> str:
    return "-" if value is None else f"{value:#010x}"


def divergence(bricks: list[dict[str, Any]]) -> list[str]:
    """Problems among the bricks that answered: different map fingerprints, and same
    record version with different fingerprints."""
    up = [b for b in bricks if b["up"]]
    problems = []
    by_fp: dict[int, list[str]] = defaultdict(list)
    for b in up:
        by_fp[b["map_fp"]].append(b["id"])
    if len(by_fp) > 1:
        problems.append("bricks report different map fingerprints: " + "; ".join(
            f"{_fp(fp)} ({', '.join(ids)})" for fp, ids in sorted(by_fp.items())))
    seen: dict[tuple[str, int], dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for b in up:
        for rid, version, fp in b.get("digest", []):
            seen[rid, version][fp].append(b["id"])
    for (rid, version), fps in sorted(seen.items()):
        if len(fps) > 1:
            problems.append(f"DIVERGENCE: {rid} v{version} has different contents: " +
                            "; ".join(f"{_fp(fp)} ({', '.join(ids)})"
                                      for fp, ids in sorted(fps.items())) +
                            " -- run dds-admin repair")
    return problems


async def collect(reactor: Any, target: Target, timeout: float = 5.0) -> dict[str, Any]:
    cmap, seed = await fetch_map(reactor, target, timeout)
    addresses = [(b.id, b.address, b.port) for b in sorted(cmap.bricks.values(),
                                                            key=lambda r: r.id)]
    replies = await brick_statuses(reactor, addresses, target, timeout)
    bricks: list[dict[str, Any]] = []
    for bid, host, port in addresses:
        answer = replies[bid]
        entry: dict[str, Any] = {"id": bid, "address": format_address(host, port),
                                 "host": cmap.bricks[bid].host, "up": False,
                                 "retired": cmap.bricks[bid].host.startswith(RETIRED)}
        if isinstance(answer, BaseException):
            entry["error"] = describe_error(answer)
        else:
            r = answer.reply
            entry.update(up=True, map_version=r.get("map_version"), map_fp=r.get("map_fp"),
                         partitions=len(r.get("partitions", [])),
                         partition_ids=list(r.get("partitions", [])),
                         prepared=r.get("prepared", 0), in_doubt=len(r.get("in_doubt", [])),
                         uptime_s=round(float(r.get("uptime_s", 0.0)), 1),
                         durability=r.get("durability"), pid=r.get("pid"),
                         version=r.get("version"),
                         digest=r.get("digest", []),
                         # Membership, as this brick sees it (absent from older bricks).
                         members=dict(r.get("members", {})),
                         blocked=list(r.get("blocked", [])),
                         leases=dict(r.get("leases", {})),
                         recovery=dict(r.get("recovery", {})),
                         copies=list(r.get("copies", [])),
                         changes=dict(r.get("changes", {})),
                         auth=dict(r.get("auth", {})),
                         scrub=dict(r.get("scrub") or {}))
            if answer.peer != bid:
                entry["error"] = f"answers as {answer.peer!r}"
        bricks.append(entry)
    up = {b["id"] for b in bricks if b["up"]}
    # A retired brick (remove-brick) that is stopped is not down: it left the cluster.
    counted = [b for b in bricks if b["up"] or not b["retired"]]
    rgs: list[dict[str, Any]] = [{"name": rg.name, "version": rg.version, "fp": rg.fp,
            "members": [{"brick": m.brick, "state": m.state, "up": m.brick in up}
                        for m in rg.members],
            "partitions": len(rg.partitions),
            "partition_states": {str(e.pid): e.state for e in rg.partitions}}
           for rg in sorted(cmap.rgs.values(), key=lambda g: (len(g.name), g.name))]
    membership(bricks, rgs)
    problems = divergence(bricks)
    warnings = certificate_warnings(bricks)
    cluster = cmap.cluster
    return {
        "cluster": cluster.name if cluster else None,
        "replication": cluster.replication if cluster else None,
        "seed": seed, "map_fp": cmap.fp, "map_version": cmap.version,
        "partitions": len(cmap.partition_rg),
        "bricks": bricks, "rgs": rgs, "divergence": problems, "warnings": warnings,
        "ok": not problems and len(up) == len(counted),
        # Every member active in the map and serving by its own account.  Kept apart
        # from "ok" (reachability and map agreement), whose meaning scripts rely on.
        "membership_ok": all(m["state"] == "active" and m["serving"]
                             for rg in rgs for m in rg["members"]),
    }


def certificate_warnings(bricks: list[dict[str, Any]]) -> list[str]:
    """Bricks whose TLS certificate (or CA) expires within their ``cert_warn_days``."""
    out = []
    for b in bricks:
        auth = b.get("auth") or {}
        days = auth.get("cert_expires_in_days")
        if isinstance(days, (int, float)) and days < auth.get("warn_days", 30):
            out.append(f"the TLS certificate of {b['id']} (or its CA) expires in "
                       f"{days:.1f} days: issue a new one with dds-admin certs issue")
    return out


def last_exclusions(bricks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per RG, the newest exclusion any answering brick remembers.  Ordered by record
    version, not wall time: the bricks' clocks need not agree, the versions do.  The same
    change is remembered by its coordinator and each voter; the first one wins."""
    newest: dict[str, dict[str, Any]] = {}
    for b in bricks:
        if not b["up"]:
            continue
        for event in b.get("changes", {}).get("history", []):
            if event.get("state") != "excluded" or "rg" not in event:
                continue
            rg = str(event["rg"])
            current = newest.get(rg)
            if current is None or (int(event.get("version", 0)), float(event.get("at", 0))) \
                    > (current["version"], current["at"]):
                newest[rg] = {"rg": rg, "version": int(event.get("version", 0)),
                              "member": event.get("member"), "reason": event.get("reason", ""),
                              "coordinator": event.get("coordinator"),
                              "at": float(event.get("at", 0.0)), "reported_by": b["id"]}
    return newest


def membership(bricks: list[dict[str, Any]], rgs: list[dict[str, Any]]) -> None:
    """Add to each RG of ``rgs`` its last exclusion, and to each of its members what the
    brick itself reports: its own member state, lease, whether it serves, its recovery."""
    by_id = {b["id"]: b for b in bricks}
    excluded = last_exclusions(bricks)
    for rg in rgs:
        name = rg["name"]
        rg["last_exclusion"] = excluded.get(name)
        for m in rg["members"]:
            b = by_id.get(m["brick"], {"up": False})
            lease = b.get("leases", {}).get(name) if b["up"] else None
            own = b.get("members", {}).get(name) if b["up"] else None
            m["own_state"] = own
            m["lease"] = lease["state"] if lease else None
            m["lease_remaining_s"] = lease.get("remaining_s") if lease else None
            m["lease_granted_by"] = list(lease.get("granted_by", [])) if lease else []
            m["blocked"] = bool(b["up"]) and name in b.get("blocked", [])
            m["serving"] = (bool(b["up"]) and own == "active" and not m["blocked"]
                            and m["lease"] == "valid")
            m["recovery"] = b.get("recovery", {}).get(name) if b["up"] else None


def render(report: dict[str, Any], console: Console) -> None:
    console.print(f"cluster [bold]{report['cluster']}[/bold]: replication "
                  f"{report['replication']}, {report['partitions']} partitions, map fp "
                  f"{_fp(report['map_fp'])} (version {report['map_version']}) from seed "
                  f"{report['seed']}")
    fps = {b["map_fp"] for b in report["bricks"] if b["up"]}
    t = Table(title="bricks", title_justify="left")
    for col in ("brick", "address", "host", "state", "map version", "map fp", "partitions",
                "prepared", "uptime s", "error"):
        t.add_column(col, justify="right" if col in ("partitions", "prepared",
                                                       "uptime s") else "left")
    for b in report["bricks"]:
        error = f"[red]{escape(b['error'])}[/red]" if b.get("error") else ""
        if not b["up"] and b.get("retired"):
            t.add_row(b["id"], b["address"], b["host"], "[dim]retired[/dim]", "-", "-", "-",
                      "-", "-", "")
            continue
        if not b["up"]:
            t.add_row(b["id"], b["address"], b["host"], "[red]down[/red]", "-", "-", "-",
                      "-", "-", error)
            continue
        fp = _fp(b["map_fp"])
        if len(fps) > 1:
            fp = f"[red]{fp}[/red]" if b["map_fp"] != report["map_fp"] else f"[yellow]{fp}[/yellow]"
        t.add_row(b["id"], b["address"], b["host"], "[green]up[/green]",
                  str(b["map_version"]), fp, str(b["partitions"]), str(b["prepared"]),
                  str(b["uptime_s"]), error)
    console.print(t)
    g = Table(title="replica groups", title_justify="left")
    for col in ("group", "version", "fp", "members", "partitions", "partition ids"):
        g.add_column(col, justify="right" if col in ("version", "partitions") else "left")
    for rg in report["rgs"]:
        members = []
        for m in rg["members"]:
            colour = "green" if m["up"] and m["state"] == "active" else (
                "yellow" if m["up"] else "red")
            label = m["brick"] + ("" if m["state"] == "active" else f" ({m['state']})")
            members.append(f"[{colour}]{label}[/{colour}]")
        moving = [p for p, s in rg["partition_states"].items() if s != "active"]
        parts = str(rg["partitions"]) + (f" ({len(moving)} moving)" if moving else "")
        g.add_row(rg["name"], str(rg["version"]), _fp(rg["fp"]), " ".join(members), parts,
                  partition_ids(rg["partition_states"]))
    console.print(g)
    console.print(_membership_table(report["rgs"], time.time()))
    scrubs = [f"{b['id']} pass {sc.get('pass', 0)} ({sc.get('bytes_verified', 0) / 1e6:.1f} MB)"
              for b in report["bricks"] if b["up"] and (sc := b.get("scrub"))]
    if scrubs:      # the background scrubber (issue 13)
        console.print("scrub: " + ", ".join(scrubs))
    for problem in report["divergence"]:
        console.print(f"[bold red]{escape(problem)}[/bold red]")
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning: {escape(warning)}[/yellow]")
    down = [b["id"] for b in report["bricks"] if not b["up"] and not b.get("retired")]
    if down:
        console.print(f"[red]{len(down)} brick(s) down: {', '.join(down)}[/red]")
    not_active = [f"{m['brick']} {m['state']} in {rg['name']}" for rg in report["rgs"]
                  for m in rg["members"] if m["state"] != "active"]
    if not_active:
        console.print(f"[yellow]{len(not_active)} member(s) not active: "
                      f"{escape(', '.join(not_active))}[/yellow]")
    if report["ok"]:
        console.print("[green]all bricks up, one map fingerprint[/green]")
    else:
        console.print("[red]not healthy (exit status 1)[/red]")


def partition_ids(states: dict[str, str], limit: int = PARTITION_IDS_SHOWN) -> str:
    """The ids ``move``/``split``/``merge`` take, in key-space order; a partition that is
    not active carries its state (``p3.1 (incoming)``).  Past ``limit`` the rest is
    counted, not listed (``--json`` has them all)."""
    ordered = sorted(states, key=lambda p: (_pid_key(p), p))
    shown = [p if states[p] == "active" else f"{p} ({states[p]})" for p in ordered[:limit]]
    more = len(ordered) - len(shown)
    return escape(" ".join(shown) + (f" … +{more} more (--json lists all)" if more else ""))


def _pid_key(text: str) -> tuple[int, int]:
    try:
        pid = PartitionId.parse(text)
    except ValueError:
        return (1 << 32, 0)
    return (pid.depth, pid.prefix)


# -- the membership table ------------------------------------------------------------------

def _membership_table(rgs: list[dict[str, Any]], now: float) -> Table:
    """One row per RG and member; the RG and its last exclusion on the RG's first row."""
    t = Table(title="membership", title_justify="left")
    for col in ("group", "brick", "member", "lease", "serves", "recovery",
                "last exclusion"):
        t.add_column(col)
    for rg in rgs:
        members = rg["members"]
        for i, m in enumerate(members):
            first = i == 0
            t.add_row(rg["name"] if first else "",
                      m["brick"] if m["up"] else f"[red]{escape(m['brick'])} (down)[/red]",
                      _member_cell(m), _lease_cell(m),
                      ("[green]yes[/green]" if m["serving"] else "[red]no[/red]")
                      if m["up"] else "-",
                      _recovery_cell(m.get("recovery")),
                      _exclusion_cell(rg.get("last_exclusion"), now) if first else "",
                      end_section=i == len(members) - 1)
    return t


def _member_cell(m: dict[str, Any]) -> str:
    """The map's state; the brick's own view beside it when that differs."""
    colour = STATE_COLOURS.get(m["state"], "white")
    text = f"[{colour}]{escape(m['state'])}[/{colour}]"
    own = m.get("own_state")
    if m["up"] and own != m["state"]:
        text += f" [dim](brick says {escape(str(own))})[/dim]"
    if m.get("blocked"):
        text += " [yellow](re-syncing)[/yellow]"
    return text


def _lease_cell(m: dict[str, Any]) -> str:
    lease = m.get("lease")
    if lease is None:
        return "-"
    if lease == "valid":
        remaining = m.get("lease_remaining_s")
        return "[green]valid[/green]" + (f" {remaining:.1f}s" if remaining is not None else "")
    return f"[{'red' if lease == 'expired' else 'yellow'}]{escape(lease)}[/]"


def _recovery_cell(rec: dict[str, Any] | None) -> RenderableType:
    """A bar while a copy runs; the phase (and the last error) otherwise."""
    if not rec:
        return ""
    phase = str(rec.get("phase"))
    if phase == "done":
        fenced = rec.get("fenced_s")
        return Text.from_markup("[dim]done" + (f", writes fenced {fenced:.3f}s"
                                               if fenced is not None else "") + "[/dim]")
    total, done = int(rec.get("bytes_total") or 0), int(rec.get("bytes_done") or 0)
    label = f"{phase}" + (f" from {rec['source']}" if rec.get("source") else "")
    if (rec.get("attempts") or 0) > 1:
        label += f", attempt {rec['attempts']}"
    if rec.get("last_error") and phase == "retrying":
        label += f": {rec['last_error']}"
    if not total:
        return Text(label, style="yellow")
    grid = Table.grid(padding=(0, 1))
    grid.add_row(ProgressBar(total=total, completed=min(done, total), width=20),
                 Text(f"{100 * done // total}% {decimal(done)}/{decimal(total)} {label}",
                      style="yellow"))
    return grid


def _exclusion_cell(event: dict[str, Any] | None, now: float) -> str:
    if not event:
        return ""
    when = time.strftime("%H:%M:%S", time.localtime(event["at"]))
    ago = max(0.0, now - event["at"])
    return (f"[red]{escape(str(event['member']))}[/red] at {when} ({ago:.0f}s ago, "
            f"v{event['version']}, by {escape(str(event['coordinator']))}): "
            f"{escape(str(event['reason']))}")


def show(target: Target, as_json: bool, timeout: float) -> None:
    """``dds-admin status`` (and ``local status``): the report printed, exit status 1
    when the cluster is not healthy."""
    report = run(lambda reactor: collect(reactor, target, timeout))
    ui.show(report, render, as_json)
    if not report["ok"]:
        sys.exit(1)
