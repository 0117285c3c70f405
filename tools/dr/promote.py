"""``dds-admin dr promote``: the primary site is gone; open the DR site (DESIGN §12).

Run against the DR site.  Refused unless the site follows a primary and the operator
says ``--yes`` (the primary is gone; with ``--primary URL`` the command also checks that
none of its addresses accepts a connection).  Then, each step shown as it runs:

a. every replica of every DR partition made to agree, the newest version of each key
   winning (``agree.py``);
b. the follower's marks read (``dr_marks``): per primary partition, the cut-off after
   which acknowledged writes may be missing unless a client replays them
   (``promoteplan.py``);
c. the DR record ``primary`` at ``epoch + 1`` (``primary`` = the lost cluster's name,
   ``site`` empty, ``replay_until_ms`` = now + ``--window``) pushed to every brick, and
   each checked to hold it: from then on ``dr_apply`` is refused (a follower still
   running does no harm), clients replay their journals, and new writes wait for the
   window's end;
d. the report: cut-offs, the loss window (promotion time − the oldest cut-off) and,
   with ``--wait``, the replays the site took once the window has closed.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import click
from twisted.internet.defer import DeferredSemaphore
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from dds.config import ConfigError, parse_address
from dds.drmsgs import DrMarks
from dds.maps import ClusterMap
from dds.messages import MapGet, MapPush, Status
from dds.records import DRRecord

from dds.tools import ui
from dds.tools.cli import cluster_target
from dds.tools.cluster import BrickCaller, Target, describe_error, fetch_map, gather
from dds.tools.dr.agree import Agreement, agree_partition
from dds.tools.dr.promoteplan import (cutoffs, loss_window_ms, partition_marks, render,
                                      replays)
from dds.tools.runner import AdminError, pause, poll_until, run

__all__ = ["promote", "Options", "run_promote"]

#: Partitions made to agree at once.
PARALLEL = 4
#: Seconds to wait for every brick to hold the new DR record (gossip helps the push).
ADOPT_S = 20.0


@attrs.frozen
class Options:
    window_s: float = 60.0
    primary_url: str | None = None
    wait: bool = False


def _url_addresses(url: str) -> list[tuple[str, int]]:
    """The addresses of ``dds://host:port[,host:port...]/CLUSTER``."""
    if not url.startswith("dds://") or "/" not in url[6:]:
        raise AdminError(f"--primary {url!r}: expected dds://HOST:PORT[,HOST:PORT...]/"
                         "CLUSTER")
    try:
        return [parse_address(h) for h in url[6:].split("/", 1)[0].split(",") if h]
    except ConfigError as e:
        raise AdminError(f"--primary: {e.message}") from None


async def _answers(reactor: Any, host: str, port: int) -> bool:
    """Whether anything accepts a TCP connection at the address (within 3 s)."""
    try:
        proto = await connectProtocol(HostnameEndpoint(reactor, host, port, timeout=3),
                                      Protocol())
    except Exception:
        return False
    if proto.transport is not None:
        proto.transport.loseConnection()
    return True


async def _maps(reactor: Any, calls: BrickCaller, bricks: list[str]
                ) -> dict[str, ClusterMap | BaseException]:
    replies = await gather(calls.send(b, MapGet()) for b in bricks)
    return {b: r if isinstance(r, BaseException) else ClusterMap.from_wire(r["map"])
            for b, r in zip(bricks, replies)}


def _follower(cmap: ClusterMap, maps: dict[str, ClusterMap | BaseException]) -> DRRecord:
    """The site's DR record (the newest any brick holds); refused unless a follower."""
    held = [m.dr for m in [cmap, *maps.values()] if isinstance(m, ClusterMap)]
    rec = max((r for r in held if r is not None), key=lambda r: r.version, default=None)
    if rec is None or rec.mode != "follower":
        what = ("has no DR record: it is a primary, not a DR site" if rec is None
                else f"is a primary promoted at epoch {rec.epoch} (from {rec.primary!r})"
                if rec.promoted else "is a primary (mode primary), not a DR site")
        raise AdminError(f"refusing to promote: this cluster {what}; only a DR site "
                         "that follows a primary (dds-admin dr attach) can be promoted")
    return rec


async def run_promote(reactor: Any, target: Target, options: Options) -> dict[str, Any]:
    """The promotion; the report (what ``--json`` prints)."""
    cmap, _seed = await fetch_map(reactor, target)
    addresses = {b.id: (b.address, b.port) for b in cmap.bricks.values()}
    calls = BrickCaller(reactor, target, addresses, timeout=60.0, name_unreachable=True)
    try:
        return await _promote(reactor, target, options, cmap, calls)
    finally:
        calls.close()


async def _promote(reactor: Any, target: Target, options: Options, cmap: ClusterMap,
                   calls: BrickCaller) -> dict[str, Any]:
    bricks = sorted(cmap.bricks)
    maps = await _maps(reactor, calls, bricks)
    old = _follower(cmap, maps)
    if options.primary_url:
        ui.say(f"checking that the primary ({options.primary_url}) is unreachable")
        for host, port in _url_addresses(options.primary_url):
            if await _answers(reactor, host, port):
                raise AdminError(f"refusing to promote: the primary answers at "
                                 f"{host}:{port}; promote only when it is gone")

    # (a) the replicas agree
    items = sorted(cmap.partition_rg.items())
    ui.say(f"step 1/4: making the replicas of {len(items)} DR partition(s) agree (the "
           "newest version of each key wins)")
    limit = DeferredSemaphore(PARALLEL)
    with ui.progress() as bar:
        task = bar.add_task("agreement", total=len(items))

        async def one(pid: Any, rec: Any) -> Agreement:
            try:
                return await agree_partition(calls, pid, rec)
            finally:
                bar.advance(task)
        results = await gather(limit.run(one, pid, rec) for pid, rec in items)
    errors = [line for r in results if isinstance(r, BaseException)
              for line in (r.lines if isinstance(r, AdminError) else [describe_error(r)])]
    if errors:
        raise AdminError(*errors, "nothing was promoted: fix the DR site's replicas (or "
                         "stop the follower) and run dr promote again")
    agreed = [r for r in results if isinstance(r, Agreement)]
    copied = sum(a.keys_copied for a in agreed)
    ui.say(f"  {copied} key(s) copied to replicas that lacked them")

    # (b) the marks, the cut-offs
    ui.say("step 2/4: reading the follower's marks (dr_marks)")
    replies = await gather(calls.send(b, DrMarks()) for b in bricks)
    marks_of = {b: r["marks"] for b, r in zip(bricks, replies)
                if not isinstance(r, BaseException)}
    members = {str(p): list(rec.active_members) for p, rec in items}
    missing = sorted(b for b in {m for ms in members.values() for m in ms}
                     if b not in marks_of)
    if missing:
        raise AdminError(f"dr_marks: no answer from {', '.join(missing)}; nothing was "
                         "promoted")
    cuts = cutoffs(partition_marks(marks_of, members))

    # (c) the record
    now_ms = int(time.time() * 1000)
    versions = [m.dr.version for m in maps.values()
                if isinstance(m, ClusterMap) and m.dr is not None]
    new = DRRecord(max(versions + [old.version]) + 1, "primary", old.epoch + 1,
                   primary=old.primary, site="",
                   replay_until_ms=now_ms + int(options.window_s * 1000))
    ui.say(f"step 3/4: pushing the DR record (primary, epoch {new.epoch}, replay window "
           f"{options.window_s:g} s) to {len(bricks)} brick(s)")
    await gather(calls.send(b, MapPush(records=[new.canonical()])) for b in bricks)
    holding: set[str] = set()

    async def adopted() -> bool:
        now = await _maps(reactor, calls, [b for b in bricks if b not in holding])
        holding.update(b for b, m in now.items()
                       if isinstance(m, ClusterMap) and m.dr == new)
        return len(holding) == len(bricks)
    await poll_until(reactor, adopted, ADOPT_S, interval=0.2)
    not_adopted = [b for b in bricks if b not in holding]

    # (d) the report
    ui.say("step 4/4: the report")
    report: dict[str, Any] = {
        "ok": not not_adopted, "site": target.cluster, "primary": old.primary,
        "epoch": new.epoch, "record_version": new.version, "promoted_at_ms": now_ms,
        "window_s": options.window_s, "replay_until_ms": new.replay_until_ms,
        "agreement": {"partitions": len(agreed), "keys_copied": copied,
                      "rows_written": sum(a.rows_written for a in agreed),
                      "divergent": [k.hex() for a in agreed for k in a.divergent],
                      "per_partition": [a.to_wire() for a in agreed
                                        if a.keys_copied or a.divergent]},
        "cutoffs": {p: {"safe_ms": s, "age_ms": None if s is None else now_ms - s}
                    for p, s in cuts.items()},
        "oldest_cutoff_ms": min((s for s in cuts.values() if s is not None), default=None),
        "loss_window_ms": loss_window_ms(cuts, now_ms),
        "adopted": sorted(holding), "not_adopted": not_adopted, "replays": None}
    if options.wait:
        wait_s = max(0.0, new.replay_until_ms / 1000 - time.time()) + 1.0
        ui.say(f"waiting {wait_s:.1f} s for the replay window to close")
        await pause(reactor, wait_s)
        statuses = await gather(calls.send(b, Status()) for b in bricks)
        metrics = {b: s.get("metrics", {}) for b, s in zip(bricks, statuses)
                   if not isinstance(s, BaseException)}
        report["replays"] = replays(metrics, {name: rec.active_members
                                              for name, rec in cmap.rgs.items()})
    return report


@click.command("promote")
@cluster_target
@click.option("--yes", is_flag=True,
              help="the primary site is gone: promote this DR site (required)")
@click.option("--primary", "primary_url", default=None, metavar="dds://HOST:PORT,.../NAME",
              help="the lost primary's URL: refuse if any of its addresses answers")
@click.option("--window", "window_s", type=click.FloatRange(min=0.0), default=60.0,
              show_default=True,
              help="seconds of the replay window: clients replay their journals, new "
                   "writes wait")
@click.option("--wait", is_flag=True,
              help="after the window closes, report the replays the site took")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def promote(target: Target, yes: bool, primary_url: str | None, window_s: float,
            wait: bool, as_json: bool) -> None:
    """Make this DR site the primary at a new epoch (run against the DR site, once the
    primary is gone): its replicas made to agree, the cut-offs read, the DR record
    pushed; clients replay their journals during --window seconds."""
    if not yes:
        raise AdminError("refusing to promote without --yes: promoting while the primary "
                         "still takes writes splits the data between two primaries; give "
                         "--yes once the primary site is gone (and --primary URL to have "
                         "it checked)")
    report = run(lambda reactor: run_promote(reactor, target,
                                             Options(window_s, primary_url, wait)))
    ui.show(report, render, as_json)
    if not report["ok"]:
        raise AdminError(f"the DR record was not adopted by "
                         f"{', '.join(report['not_adopted'])}: gossip may still bring it; "
                         "check with dds-admin dr status")
