"""``dds-admin status``: the map as one seed holds it, and every brick's own view.

The report is a plain dict (what ``--json`` prints); :func:`render` draws it as tables.
Divergence is flagged, in red: bricks that report different map fingerprints, and any
record for which two bricks hold the same version with different fingerprints (which
only ``dds-admin repair`` can resolve).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dds.tools.cluster import Target, brick_statuses, describe_error, fetch_map

__all__ = ["collect", "render", "divergence"]


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
        r = replies[bid]
        entry: dict[str, Any] = {"id": bid, "address": f"{host}:{port}",
                                 "host": cmap.bricks[bid].host, "up": False}
        if isinstance(r, BaseException):
            entry["error"] = describe_error(r)
        else:
            entry.update(up=True, map_version=r.get("map_version"), map_fp=r.get("map_fp"),
                         partitions=len(r.get("partitions", [])),
                         partition_ids=list(r.get("partitions", [])),
                         prepared=r.get("prepared", 0), in_doubt=len(r.get("in_doubt", [])),
                         uptime_s=round(float(r.get("uptime_s", 0.0)), 1),
                         durability=r.get("durability"), pid=r.get("pid"),
                         digest=r.get("digest", []))
            if r.get("_peer_id") != bid:
                entry["error"] = f"answers as {r.get('_peer_id')!r}"
        bricks.append(entry)
    up = {b["id"] for b in bricks if b["up"]}
    rgs = [{"name": rg.name, "version": rg.version, "fp": rg.fp,
            "members": [{"brick": m.brick, "state": m.state, "up": m.brick in up}
                        for m in rg.members],
            "partitions": len(rg.partitions),
            "partition_states": {str(e.pid): e.state for e in rg.partitions}}
           for rg in sorted(cmap.rgs.values(), key=lambda g: (len(g.name), g.name))]
    problems = divergence(bricks)
    cluster = cmap.cluster
    return {
        "cluster": cluster.name if cluster else None,
        "replication": cluster.replication if cluster else None,
        "seed": seed, "map_fp": cmap.fp, "map_version": cmap.version,
        "partitions": len(cmap.partition_rg),
        "bricks": bricks, "rgs": rgs, "divergence": problems,
        "ok": not problems and len(up) == len(bricks),
    }


def render(report: dict[str, Any], console: Console) -> None:
    console.print(f"cluster [bold]{report['cluster']}[/bold]: replication "
                  f"{report['replication']}, {report['partitions']} partitions, map fp "
                  f"{_fp(report['map_fp'])} (version {report['map_version']}) from seed "
                  f"{report['seed']}")
    fps = {b["map_fp"] for b in report["bricks"] if b["up"]}
    t = Table(title="bricks", title_justify="left")
    for col in ("brick", "address", "host", "state", "map version", "map fp", "partitions",
                "prepared", "uptime s"):
        t.add_column(col, justify="right" if col in ("partitions", "prepared",
                                                       "uptime s") else "left")
    for b in report["bricks"]:
        if not b["up"]:
            t.add_row(b["id"], b["address"], b["host"], "[red]down[/red]", "-", "-", "-",
                      "-", f"[red]{escape(b.get('error', ''))}[/red]")
            continue
        fp = _fp(b["map_fp"])
        if len(fps) > 1:
            fp = f"[red]{fp}[/red]" if b["map_fp"] != report["map_fp"] else f"[yellow]{fp}[/yellow]"
        t.add_row(b["id"], b["address"], b["host"], "[green]up[/green]",
                  str(b["map_version"]), fp, str(b["partitions"]), str(b["prepared"]),
                  str(b["uptime_s"]))
    console.print(t)
    g = Table(title="replica groups", title_justify="left")
    for col in ("group", "version", "fp", "members", "partitions"):
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
        g.add_row(rg["name"], str(rg["version"]), _fp(rg["fp"]), " ".join(members), parts)
    console.print(g)
    for problem in report["divergence"]:
        console.print(f"[bold red]{escape(problem)}[/bold red]")
    down = [b["id"] for b in report["bricks"] if not b["up"]]
    if down:
        console.print(f"[red]{len(down)} brick(s) down: {', '.join(down)}[/red]")
    if report["ok"]:
        console.print("[green]all bricks up, one map fingerprint[/green]")
