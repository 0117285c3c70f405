"""``dds-admin bench recovery``: how long a rejoining brick takes to re-copy a large
partition, and how long the clients writing to it are paused meanwhile (DESIGN §7).

The command builds its own throwaway cluster in a temporary directory (``--dir`` keeps
it somewhere else and ``--keep`` keeps it afterwards): 3 bricks, replication 3, one
partition, ``disk`` durability.  Then:

1. **preload**: the partition's SQLite file is written directly, before any brick starts:
   ``--keys`` rows of ``--value-bytes`` random bytes, version 1, lsn 1..N, in the schema
   that :class:`~dds.bricks.partstore.PartitionStore` creates (it creates the file).  Every
   brick gets an identical copy.  With one partition (``p0.0``, depth 0) every key belongs
   to it.  Loading a million keys through the client would take minutes.
2. the bricks start on those files and ``init`` pushes the map (the same code as
   ``dds-admin init``); the bench waits until every brick serves and holds every key.
3. **writers**: ``--clients`` ``DDSClient``\\ s, split over ``--workers`` processes
   (:mod:`dds.tools.bench.writerproc`), each doing sequential puts of random preloaded
   keys and recording when each put started and ended.
4. per mode (default, then ``full_lease``): ``--baseline-s`` seconds of steady writes
   (the floor this run compares against), then ``recover`` is sent to one brick
   (``b3``) and its ``status`` polled until its recovery of the RG is ``done`` and it
   serves again.

Figures per mode:

- ``copy_s``: the recovering brick's own report: ``copy_begin`` (the source's snapshot)
  until the received file is installed; ``copy_mb_s`` = ``bytes_total`` / ``copy_s``;
- ``total_s``: wall time from the ``recover`` request until the brick reported ``done``;
- ``fenced_s``: the recovering brick's report (fence request until readmitted), and
  ``source_fence_s``: how long the source actually refused writes;
- ``max_write_pause_ms``: per writer, the longest time between two consecutive
  successful puts around the recovery (from the last one before the request to the first
  one after the brick served again); the maximum over the writers.  ``max_put_ms`` and
  ``p99_put_ms``: latencies of the puts that overlap that window;
- ``baseline_*``: the same figures for the ``--baseline-s`` seconds just before the
  request (a pause there ends at the request at the latest): the floor.  A write pause
  is never shorter than a put, and on a loaded machine a steady writer sees gaps of a
  few tens of milliseconds anyway.

``timeline`` lists the recovery-related log lines of the source and the recovering brick
(seconds after the request), and ``phases`` derives from them where the time went: the
source's snapshot, the transfer and install, and the fenced part.

Every process this command starts (bricks, writer workers) is stopped at the end, also
on an error or Ctrl-C.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import attrs
from rich.console import Console
from rich.markup import escape

from dds.tools.bench.measure import merge
from dds.tools.bench.report import cpu_text, met, num, table
from dds.tools.bench.throwaway import (
    CLUSTER, HOST, READY_TIMEOUT_S, ThrowawayCluster, brick_status, log_events,
    throwaway_cluster, wait_serving)
from dds.tools.bench.writers import WriterParams, start_writers, stop_writers
from dds.tools.runner import pause, run

__all__ = ["RecoveryParams", "TARGETS", "bench_recovery", "render"]

#: The issue's targets: copy time in seconds, longest write pause (default mode) in ms.
TARGETS = {"copy_s": 2.0, "max_write_pause_ms": 100.0}
MODES = (("default", False), ("full_lease", True))
BRICKS = ("b1", "b2", "b3")
RECOVERING = "b3"
#: After the recovering brick serves again, writes go on this long before the window ends
#: (the clients repair their map on the first StaleMap from the new record).
POST_S = 0.5
#: The longest the replicas may take to agree after the writers stopped.
SETTLE_S = 10.0
STATUS_POLL_S = 0.1
#: Log lines of these namespaces make up the timeline.
_TIMELINE_NS = ("recovery", "bricks.copy.", "rgchange")


@attrs.frozen
class RecoveryParams(WriterParams):
    """``bench recovery``'s options: those of every writer bench."""


def bench_recovery(params: RecoveryParams) -> dict[str, Any]:
    """Run the whole benchmark; the result is what ``--json`` prints."""
    from dds.partition import initial_partitions

    pid = str(initial_partitions(1)[0])
    with throwaway_cluster(params.dir, params.keep, "dds-bench-recovery-") as r:
        size = r.preload(pid, BRICKS, params.keys, params.value_bytes)
        r.spawn_bricks(BRICKS, params.lease_ms)
        result = run(lambda reactor: _orchestrate(reactor, r, params, pid, size))
    result["dir"] = str(r.root) if r.kept else None
    return result


async def _orchestrate(reactor: Any, r: ThrowawayCluster, params: RecoveryParams, pid: str,
                       size: int) -> dict[str, Any]:
    from dds.config import parse_cluster_config
    from dds.tools import ui
    from dds.tools.cluster import Target, connect_brick
    from dds.tools.initcmd import init_cluster
    from dds.tools.local import wait_ready
    from dds.tools.runner import AdminError

    target = Target(((HOST, 0),), r.admin_secret(), CLUSTER, None)
    await wait_ready(reactor, r.layout, r.bricks, target, timeout=READY_TIMEOUT_S)
    cfg = parse_cluster_config({
        "cluster": {"name": CLUSTER, "replication": len(BRICKS), "partitions": 1},
        "bricks": [{"id": b.id, "address": b.address, "host": b.id} for b in r.bricks]},
        source="bench recovery")
    init = await init_cluster(reactor, cfg, target, say=ui.say)
    [rg] = [rec.name for rec in init.map.rgs.values() if rec.partitions]
    pids = [str(e.pid) for e in init.map.rgs[rg].partitions]
    if pids != [pid]:
        raise AdminError(f"the map puts partitions {pids} in {rg}, expected only {pid}")
    conns = {b.id: await connect_brick(reactor, HOST, b.port, target, timeout=5.0)
             for b in r.bricks}
    brick_of = {b.id: b for b in r.bricks}
    try:
        await wait_serving(reactor, conns, rg, READY_TIMEOUT_S)
        count = (await conns[RECOVERING].call("checksum", {"pid": pid}, timeout=60.0))["count"]
        if count != params.keys:
            raise AdminError(f"{RECOVERING} holds {count} keys of {pid}, expected "
                             f"{params.keys}")
        ui.say(f"cluster serving: {rg} on {', '.join(BRICKS)}, {count:,} keys")

        writers = await start_writers(reactor, r, params)
        for w in writers:
            w.send({"cmd": "go"})
        await pause(reactor, 1.0)          # connections warm, maps settled
        rounds: dict[str, dict[str, Any]] = {}
        windows: dict[str, list[float]] = {}
        for mode, full_lease in MODES:
            await pause(reactor, params.baseline_s)
            rnd = await _recover_once(reactor, r, conns, brick_of, rg, full_lease, mode,
                                      params.timeout_s)
            windows[f"baseline_{mode}"] = [rnd["t_request"] - params.baseline_s,
                                           rnd["t_request"]]
            windows[mode] = [rnd["t_request"], rnd["t_serving"] + POST_S]
            rounds[mode] = rnd
            await pause(reactor, POST_S)
        stats = await stop_writers(reactor, r, writers, windows)
        ui.say("comparing the replicas' checksums")
        # The writers' last COMMITs are one-way (parallel commit): a member may apply
        # them a moment after the writers stopped.  Compared until they agree, for at
        # most SETTLE_S; what still differs then is reported.
        settle_by = time.monotonic() + SETTLE_S
        while True:
            sums = {}
            for bid, conn in conns.items():
                sums[bid] = (await conn.call("checksum", {"pid": pid},
                                             timeout=60.0))["checksum"]
            if len(set(sums.values())) == 1 or time.monotonic() > settle_by:
                break
            await pause(reactor, 0.2)
    finally:
        for conn in conns.values():
            conn.close()
    for rnd in rounds.values():
        rnd["timeline"] = sorted(
            (e for b in r.bricks for e in log_events(
                r.layout.brick_dir(b.id) / "brick.log", b.id, _TIMELINE_NS,
                rnd["wall_request"], rnd["wall_serving"])),
            key=lambda e: e["at_s"])
    return _result(params, size, pid, rg, rounds, stats, sums)


async def _recover_once(reactor: Any, r: ThrowawayCluster, conns: dict[str, Any],
                        brick_of: dict[str, Any], rg: str, full_lease: bool, mode: str,
                        timeout: float) -> dict[str, Any]:
    """Ask the recovering brick to re-sync ``rg`` and follow it until it serves again."""
    from dds.tools import procs, ui
    from dds.tools.runner import AdminError

    conn = conns[RECOVERING]
    cpu_before = {bid: procs.cpu_seconds(b.pid) or 0.0 for bid, b in brick_of.items()}
    t_request, wall_request = time.monotonic(), time.time()
    reply = await conn.call("recover", {"rg": rg, "full_lease": full_lease}, timeout=10.0)
    if rg not in reply.get("started", []):
        raise AdminError(f"{RECOVERING} did not start a recovery of {rg}: {reply}")
    label = f"copy ({mode.replace('_', ' ')})"
    deadline = t_request + timeout
    rec: dict[str, Any] = {}
    phase = ""
    with ui.progress() as bar:
        r.progress = bar
        task = bar.add_task(label, total=None)
        while True:
            st = await brick_status(conn)
            rec = st["recovery"].get(rg) or {}
            if rec.get("phase") != phase:
                phase = rec.get("phase", "")
                if bar.disable:         # no live display: one line per phase instead
                    ui.say(f"{label}: {phase} after {time.monotonic() - t_request:.2f}s")
            if rec.get("bytes_total"):
                bar.update(task, total=rec["bytes_total"], completed=rec["bytes_done"],
                           description=f"{label}: {phase}")
            if phase == "done":
                break
            if time.monotonic() > deadline:
                raise AdminError(f"recovery of {rg} on {RECOVERING} not done after "
                                 f"{timeout:g}s: phase {phase}, attempts "
                                 f"{rec.get('attempts')}, last error {rec.get('last_error')}")
            await pause(reactor, STATUS_POLL_S)
        r.progress = None
    t_done = time.monotonic()
    await wait_serving(reactor, conns, rg, 60.0, only=RECOVERING)
    t_serving, wall_serving = time.monotonic(), time.time()
    cpu = {bid: round((procs.cpu_seconds(b.pid) or 0.0) - cpu_before[bid], 3)
           for bid, b in brick_of.items()}
    source = rec.get("source")
    session: dict[str, Any] = {}
    if source in conns:
        copies = (await brick_status(conns[source])).get("copies", [])
        mine = [c for c in copies if c["target"] == RECOVERING and c["state"] == "done"]
        if mine:
            session = min(mine, key=lambda c: c["age_s"])
    ui.say(f"{label}: {rec.get('bytes_total', 0) / 1e6:,.1f} MB copied in "
           f"{rec.get('copy_s') or 0:.2f}s; done {t_done - t_request:.2f}s after the "
           f"request; writes fenced {session.get('fenced_s') or 0:.3f}s at {source}")
    return {"mode": mode, "full_lease": full_lease, "t_request": t_request,
            "t_done": t_done, "t_serving": t_serving, "wall_request": wall_request,
            "wall_serving": wall_serving, "recovery": rec, "source": source,
            "session": session, "cpu_s": cpu}


def _phases(timeline: list[dict[str, Any]]) -> dict[str, float]:
    """Where the time went, from the log lines (seconds)."""
    def first(text: str) -> float | None:
        return next((e["at_s"] for e in timeline if text in e["msg"]), None)
    out: dict[str, float] = {}
    begin, snap = first("copy session"), first("snapshot of")
    installed, fenced = first("installed a copy"), first("fenced")
    lifted = first("lifted after")
    if begin is not None and snap is not None:
        out["snapshot_s"] = snap - begin
    if snap is not None and installed is not None:
        out["transfer_install_s"] = installed - snap
    if fenced is not None and lifted is not None:
        out["fence_s"] = lifted - fenced
    if installed is not None and lifted is not None and fenced is not None \
            and fenced > installed:
        out["installed_to_fence_s"] = fenced - installed
    return {k: round(v, 3) for k, v in out.items()}


def _result(params: RecoveryParams, size: int, pid: str, rg: str,
            rounds: dict[str, dict[str, Any]], stats: list[dict[str, Any]],
            sums: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "keys": params.keys, "value_bytes": params.value_bytes, "clients": params.clients,
        "workers": len(stats), "bricks": len(BRICKS), "replication": len(BRICKS),
        "partitions": 1, "partition": pid, "rg": rg, "durability": "disk",
        "lease_ms": params.lease_ms, "partition_bytes": size,
        "recovering_brick": RECOVERING, "baseline_s": params.baseline_s,
        "replicas_identical": len(set(sums.values())) == 1,
        "targets": dict(TARGETS), "modes": {},
        #: The writers' library counters over the whole run (retries and their causes).
        "client_counters": dict(sum((Counter(s.get("counters", {})) for s in stats),
                                    Counter())),
    }
    for mode, _full in MODES:
        rnd = rounds[mode]
        rec = rnd["recovery"]
        copy_s = float(rec.get("copy_s") or 0.0)
        m: dict[str, Any] = {
            "copy_s": copy_s,
            "copy_mb_s": rec.get("bytes_total", 0) / 1e6 / copy_s if copy_s else 0.0,
            "bytes_total": rec.get("bytes_total", 0),
            "total_s": rnd["t_done"] - rnd["t_request"],
            "serving_s": rnd["t_serving"] - rnd["t_request"],
            "fenced_s": rec.get("fenced_s"),
            "source": rnd["source"],
            "source_fence_s": rnd["session"].get("fenced_s"),
            "attempts": rec.get("attempts"), "last_error": rec.get("last_error"),
            "cpu_s": rnd["cpu_s"],
            **merge(stats, mode),
            "baseline": merge(stats, f"baseline_{mode}"),
            "timeline": rnd.get("timeline", []),
        }
        m["phases"] = _phases(m["timeline"])
        out["modes"][mode] = m
        prefix = "" if mode == "default" else f"{mode}_"
        for k in ("copy_s", "copy_mb_s", "total_s", "fenced_s", "source_fence_s",
                  "max_write_pause_ms", "max_write_pause_end_s", "max_put_ms",
                  "p99_put_ms", "put_ops_s"):
            out[prefix + k] = m[k]
        out[prefix + "write_errors"] = sum(m["write_errors"].values())
        for k in ("max_write_pause_ms", "p99_put_ms", "max_put_ms", "put_ops_s"):
            out[f"{prefix}baseline_{k}"] = m["baseline"][k]
    out["copy_target_met"] = out["copy_s"] <= TARGETS["copy_s"]
    out["pause_target_met"] = out["max_write_pause_ms"] <= TARGETS["max_write_pause_ms"]
    return out


def render(r: dict[str, Any], console: Console) -> None:
    console.print(f"bench recovery: {r['bricks']} bricks, replication {r['replication']}, "
                  f"one partition ({r['partition']}) of {r['keys']:,} keys x "
                  f"{r['value_bytes']} B = {r['partition_bytes'] / 1e6:,.1f} MB file, "
                  f"durability {r['durability']}, lease {r['lease_ms']} ms; "
                  f"{r['clients']} writers in {r['workers']} processes; "
                  f"{r['recovering_brick']} re-copies it")
    d, f = r["modes"]["default"], r["modes"]["full_lease"]
    t = table("", "default", "--full-lease", "floor: before (default / full)", "target",
              "met")

    def both(key: str, fmt: str) -> str:
        return f"{format(d['baseline'][key], fmt)} / {format(f['baseline'][key], fmt)}"

    t.add_row("copy s (snapshot, transfer, install)", f"{d['copy_s']:.2f}",
              f"{f['copy_s']:.2f}", "", f"<= {TARGETS['copy_s']:g}",
              met(r["copy_target_met"]))
    t.add_row("copy MB/s", f"{d['copy_mb_s']:,.1f}", f"{f['copy_mb_s']:,.1f}", "", "", "")
    t.add_row("request to done s", f"{d['total_s']:.2f}", f"{f['total_s']:.2f}", "", "", "")
    t.add_row("writes fenced at the source s", num(d["source_fence_s"], ".3f"),
              num(f["source_fence_s"], ".3f"), "", "", "")
    t.add_row("longest write pause ms", f"{d['max_write_pause_ms']:,.0f}",
              f"{f['max_write_pause_ms']:,.0f}", both("max_write_pause_ms", ",.0f"),
              f"<= {TARGETS['max_write_pause_ms']:g}", met(r["pause_target_met"]))
    t.add_row("longest put ms", f"{d['max_put_ms']:,.0f}", f"{f['max_put_ms']:,.0f}",
              both("max_put_ms", ",.0f"), "", "")
    t.add_row("p99 put ms", f"{d['p99_put_ms']:,.1f}", f"{f['p99_put_ms']:,.1f}",
              both("p99_put_ms", ",.1f"), "", "")
    t.add_row("puts/s", f"{d['put_ops_s']:,.0f}", f"{f['put_ops_s']:,.0f}",
              both("put_ops_s", ",.0f"), "", "")
    t.add_row("write errors", str(sum(d["write_errors"].values())),
              str(sum(f["write_errors"].values())), "", "", "")
    console.print(t)
    for mode, m in (("default", d), ("--full-lease", f)):
        ph = m["phases"]
        parts = [f"{name} {ph[key]:.2f}s" for key, name in (
            ("snapshot_s", "source snapshot"), ("transfer_install_s", "transfer + install"),
            ("installed_to_fence_s", "install to fence"), ("fence_s", "fenced"))
            if key in ph]
        console.print(f"{mode}: {', '.join(parts) or 'no timeline'}; "
                      f"CPU s: {cpu_text(m['cpu_s'])}; "
                      f"source {m['source']}, attempts {m['attempts']}")
        if m["write_errors"]:
            console.print(f"[red]{mode} write errors: {escape(str(m['write_errors']))}[/red]")
    if not r["replicas_identical"]:
        console.print("[red]the replicas' checksums differ after the run[/red]")
