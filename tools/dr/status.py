"""``dds-admin dr status`` (DESIGN §12), against either site: its DR record, and per
primary partition how far the DR site is.

- On the **primary**: the tag each partition's bricks hold (``dr_tags``: the position the
  follower last reported applied, the brick that made it, its safe time).  The lag is
  the brick's clock now minus that safe time: every write the primary committed before
  it is at the DR site.
- On the **DR site** (or on the primary with ``--site-*`` credentials as well): the
  marks stored with the rows (``dr_marks``), per primary partition the oldest over the
  DR partitions, each DR partition counted by its most advanced member.  The lag is the
  DR brick's clock minus the mark's safe time (two sites' clocks: their skew counts).

Lag p50/p99 over the partitions that have a tag (or mark); ``--json`` prints it all.
"""

from __future__ import annotations

from typing import Any

import click

from dds.tools import ui
from dds.tools.cli import cluster_target, fail, reports_errors
from dds.tools.cluster import Target
from dds.tools.dr.site import SiteOptions, parse_site_url, site_options, site_target
from dds.tools.runner import AdminError, run

__all__ = ["status", "collect", "tags_by_partition", "marks_by_partition", "render"]


def tags_by_partition(cmap: Any, replies: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per active partition of ``cmap``, the newest tag its RG's members hold:
    ``{position, maker, safe_ms, lag_s}`` (lag by the holder's clock)."""
    out: dict[str, dict[str, Any]] = {}
    for pid, rg in cmap.partition_rg.items():
        best: dict[str, Any] | None = None
        for brick in rg.active_members:
            reply = replies.get(brick)
            if not isinstance(reply, dict):
                continue
            tag = reply.get("tags", {}).get(str(pid))
            if tag is None:
                continue
            maker, safe_ms, position = tag
            if best is None or safe_ms > best["safe_ms"]:
                best = {"position": position, "maker": maker, "safe_ms": safe_ms,
                        "held_by": brick,
                        "lag_s": max(0.0, (reply["now_ms"] - safe_ms) / 1000.0)}
        out[str(pid)] = best or {}
    return out


def marks_by_partition(cmap: Any, replies: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per primary partition named by a mark: the oldest over the DR partitions (each
    by its most advanced active member): ``{position, safe_ms, lag_s, dr_partitions}``."""
    per_dr: dict[str, dict[str, tuple[str, int, int]]] = {}
    for pid, rg in cmap.partition_rg.items():
        newest: dict[str, tuple[str, int, int]] = {}
        for brick in rg.active_members:
            reply = replies.get(brick)
            if not isinstance(reply, dict):
                continue
            for primary_pid, (position, safe_ms) in reply.get("marks", {}).get(
                    str(pid), {}).items():
                if primary_pid not in newest or newest[primary_pid][1] < safe_ms:
                    newest[primary_pid] = (position, safe_ms, reply["now_ms"])
        per_dr[str(pid)] = newest
    out: dict[str, dict[str, Any]] = {}
    for dr_pid, marks in per_dr.items():
        for primary_pid, (position, safe_ms, now_ms) in marks.items():
            have = out.get(primary_pid)
            if have is None or safe_ms < have["safe_ms"]:
                out[primary_pid] = {"position": position, "safe_ms": safe_ms,
                                    "lag_s": max(0.0, (now_ms - safe_ms) / 1000.0),
                                    "dr_partitions": (have or {}).get("dr_partitions", 0)}
            out[primary_pid]["dr_partitions"] += 1
    return out


async def _ask_all(reactor: Any, view: Any, msg: Any) -> dict[str, Any]:
    from dds.tools.cluster import BrickCaller, describe_error, gather
    calls = BrickCaller(reactor, view.target, view.addresses, reuse=False)
    ids = sorted(view.map.bricks)
    replies = await gather(calls.send(b, msg) for b in ids)
    return {b: (describe_error(r) if isinstance(r, BaseException) else r)
            for b, r in zip(ids, replies)}


def _percentiles(lags: list[float]) -> dict[str, float]:
    from dds.tools.bench.measure import percentile
    lags = sorted(lags)
    return {"lag_p50_s": percentile(lags, 0.5), "lag_p99_s": percentile(lags, 0.99),
            "lag_max_s": lags[-1] if lags else 0.0}


async def collect(reactor: Any, target: Target, site_t: Target | None) -> dict[str, Any]:
    """What ``dr status`` shows, as one dict (its ``--json``)."""
    from dds.drmsgs import DrMarks, DrTags
    from dds.tools.dr.records import view as view_of
    here = await view_of(reactor, target)
    rec = here.dr
    result: dict[str, Any] = {
        "cluster": target.cluster,
        "dr_record": None if rec is None else {
            "version": rec.version, "mode": rec.mode, "epoch": rec.epoch,
            "primary": rec.primary, "site": rec.site, "replay_until_ms": rec.replay_until_ms},
        "role": ("primary" if rec is None or rec.mode == "primary" else "follower"),
        "silent": here.silent}
    lags: list[float] = []
    if result["role"] == "primary":
        tags = tags_by_partition(here.map, await _ask_all(reactor, here, DrTags()))
        result["tags"] = tags
        lags = [t["lag_s"] for t in tags.values() if t]
        result["untagged"] = sorted(p for p, t in tags.items() if not t)
        marks_view = await view_of(reactor, site_t) if site_t is not None else None
    else:
        marks_view = here
    if marks_view is not None:
        marks = marks_by_partition(marks_view.map,
                                   await _ask_all(reactor, marks_view, DrMarks()))
        result["marks"] = marks
        if result["role"] == "follower":
            lags = [m["lag_s"] for m in marks.values()]
    result.update(_percentiles(lags))
    return result


def _short(position: str) -> str:
    return position if len(position) <= 16 else position[:12] + "…"


def _clock(ms: int) -> str:
    """``HH:MM:SS.mmm`` in UTC."""
    import time
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}"


def render(result: dict[str, Any], console: Any) -> None:
    from rich.table import Table
    rec = result["dr_record"]
    if rec is None:
        console.print(f"{result['cluster']}: no DR record (a primary without a DR site)")
    elif rec["mode"] == "follower":
        console.print(f"{result['cluster']}: DR site following {rec['primary']!r} "
                      f"(record v{rec['version']})")
    else:
        site = rec["site"] or "no DR site attached"
        promoted = (f", promoted from {rec['primary']!r} at epoch {rec['epoch']}"
                    if rec["epoch"] else "")
        console.print(f"{result['cluster']}: primary{promoted}; DR site: {site} "
                      f"(record v{rec['version']})")
    tags, marks = result.get("tags", {}), result.get("marks", {})
    pids = sorted(set(tags) | set(marks), key=lambda p: tuple(int(x) for x in
                                                                p[1:].split(".")))
    if pids:
        t = Table(title_justify="left")
        t.add_column("partition")
        if tags:
            for col in ("tag position", "made by", "safe time (UTC)", "lag (s)"):
                t.add_column(col)
        if marks:
            for col in ("DR mark position", "DR mark lag (s)"):
                t.add_column(col)
        for pid in pids:
            tag, mark = tags.get(pid) or {}, marks.get(pid) or {}
            cells = [pid]
            if tags:
                cells += [_short(tag.get("position", "-")), tag.get("maker", "-"),
                          _clock(tag["safe_ms"]) if tag else "-",
                          f"{tag['lag_s']:.2f}" if tag else "-"]
            if marks:
                cells += [_short(mark.get("position", "-")),
                          f"{mark['lag_s']:.2f}" if mark else "-"]
            t.add_row(*cells)
        console.print(t)
    console.print(f"lag p50 {result['lag_p50_s']:.2f}s, p99 {result['lag_p99_s']:.2f}s, "
                  f"max {result['lag_max_s']:.2f}s")
    if result.get("untagged"):
        console.print(f"{len(result['untagged'])} partitions without a tag (no follower "
                      "report yet, or a brick restarted since)")
    for brick, why in sorted(result["silent"].items()):
        console.print(f"[yellow]brick {brick} did not answer: {why}[/yellow]")


@click.command("status")
@cluster_target
@click.option("--site", "url", default=None, metavar="dds://HOST:PORT[,...]/CLUSTER",
              help="also read the DR site's marks (default with --site-*: the site the "
                   "primary's DR record names)")
@site_options
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@reports_errors
def status(target: Target, url: str | None, site: SiteOptions, as_json: bool) -> None:
    """The DR record of this cluster (primary or DR site) and, per primary partition,
    how far the DR site is: the primary's tag and/or the DR site's marks, with the lag
    in seconds, and its p50/p99 over the partitions."""
    async def go(reactor: Any) -> dict[str, Any]:
        site_t = None
        if url or site.given:
            from dds.tools.dr.runfollow import resolve_site
            site_t = (site_target(parse_site_url(url), site) if url
                      else await resolve_site(reactor, target, None, site))
        return await collect(reactor, target, site_t)
    try:
        result = run(go)
    except AdminError as e:
        fail(e.lines)
    ui.show(result, render, as_json)
