"""``dds-admin bench --dr``: what a DR site costs the primary's puts, and how far behind
it is under that load (DESIGN §12, issue 17), measured in one run.

Two throwaway local clusters: the primary (the default local shape) and a DR site of 3
bricks and 8 partitions (``local up --name dr``), attached once.  After the echo floor
and the load of the keys, the put phases alternate *without* (the primary detached, no
follower) and *with* (attached, ``dds-admin dr follow`` running) in A-B-B-A order, each
half of ``--seconds``, so a drift of the machine's speed during the run is shared by
both.  Before each *with* phase the follower catches up (untimed): the writes of the
phase before are applied first; before a *without* phase too, so that the clients'
journals empty by the tags before the primary is detached.

- ``dr_put_ratio``: put ops/s with over without (target: 0.9);
- ``dr_lag_p50_ms`` / ``dr_lag_p99_ms``: during the *with* phases, every 0.25 s, each
  partition's tag as its primary bricks hold it (``dr_tags``), its lag = the holder's
  clock minus the tag's safe time;
- ``journal_entries_p99``: the client journal's entries (``lib/drjournal.py``) during
  the *with* phases, sampled by the load processes every 0.2 s (``None``, shown
  ``n/a``, if none was taken).

Both clusters, the follower and the load share the machine: on a small one the DR
site's own work (its bricks, the follower) is part of what the ratio measures.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console
from twisted.internet import threads

from dds.tools import credfiles, ui
from dds.tools.bench.cpu import cpu_delta, cpu_seconds
from dds.tools.bench.harness import READY_TIMEOUT_S, run_phase, start_workers
from dds.tools.bench.measure import percentile
from dds.tools.bench.putget import BenchParams
from dds.tools.bench.report import met, table
from dds.tools.children import Child, Events
from dds.tools.cluster import Target
from dds.tools.runner import AdminError

__all__ = ["bench_dr", "render_dr", "DR_PUT_TARGET"]

#: The issue's target: puts with a DR site attached at 0.9 x those without, or better.
DR_PUT_TARGET = 0.90
#: Seconds between two samples of the tags' lag.
LAG_SAMPLE_S = 0.25
#: The follower has caught up when every partition's lag is below this (seconds).
CAUGHT_UP_S = 1.0
CATCH_UP_TIMEOUT_S = 180.0
_ORDER = (False, True, True, False)


@attrs.define
class _Mode:
    """One mode's puts, summed over its phases."""

    ops: int = 0
    by_phase: list[float] = attrs.Factory(list)
    lat: list[int] = attrs.Factory(list)
    cpu: float = 0.0
    errors: dict[str, int] = attrs.Factory(dict)
    #: The client journal's entries, sampled by the workers every 0.2 s.
    journal: list[int] = attrs.Factory(list)

    def add(self, results: list[dict[str, Any]], cpu: float) -> None:
        self.ops += sum(r["ops"] for r in results)
        self.by_phase.append(sum(r["ops"] / r["elapsed"] for r in results if r["elapsed"]))
        for r in results:
            self.lat.extend(r["lat_us"])
            self.journal.extend(r.get("samples", ()))
            for code, n in r["errors"].items():
                self.errors[code] = self.errors.get(code, 0) + n
        self.cpu += cpu

    def fields(self, name: str) -> dict[str, Any]:
        lat = sorted(self.lat)
        return {f"put_ops_s_{name}": sum(self.by_phase) / max(1, len(self.by_phase)),
                f"put_ops_s_{name}_phases": self.by_phase,
                f"put_p50_ms_{name}": percentile(lat, 0.5) / 1000.0,
                f"put_p99_ms_{name}": percentile(lat, 0.99) / 1000.0,
                f"cpu_us_per_put_{name}": self.cpu * 1e6 / max(1, self.ops),
                f"journal_entries_p99_{name}": percentile(sorted(self.journal), 0.99)
                if self.journal else None,
                f"put_errors_{name}": self.errors}


async def tag_lags_ms(calls: Any, cmap: Any) -> list[float]:
    """Each active partition's lag now, by the newest tag its members hold (ms); a
    partition without a tag counts as infinitely behind."""
    from dds.drmsgs import DrTags
    from dds.tools.cluster import gather
    from dds.tools.dr.status import tags_by_partition
    ids = sorted(cmap.bricks)
    replies = await gather(calls.send(b, DrTags()) for b in ids)
    tags = tags_by_partition(cmap, {b: r for b, r in zip(ids, replies)
                                    if not isinstance(r, BaseException)})
    return [t["lag_s"] * 1000.0 if t else float("inf") for t in tags.values()]


class _Follower:
    """``dds-admin dr follow`` between the two local clusters, as a process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.root / "follower.out", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dds.tools.admin", "dr", "follow", "--dir",
                 str(self.root / "primary"), "--site-dir", str(self.root / "dr"), "--state",
                 str(self.root / "follower.json"), "--log-file",
                 str(self.root / "follower.log"), "--poll-ms", "100"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


async def _start(reactor: Any, root: Path, shape: Any) -> Target:
    from dds.tools import local
    ui.say(f"bench --dr: starting the cluster {shape.name!r} in {root}")
    started, _ = await local.local_up(reactor, local.Layout(root), shape, {})
    return Target(tuple((local.HOST, b.port) for b in started),
                  credfiles.client_credentials(root, shape.name, "admin"), shape.name, root)


async def _caught_up(reactor: Any, calls: Any, cmap: Any) -> None:
    from dds.tools.runner import poll_until

    async def done() -> bool:
        return max(await tag_lags_ms(calls, cmap), default=0.0) < CAUGHT_UP_S * 1000
    if not await poll_until(reactor, done, CATCH_UP_TIMEOUT_S, interval=LAG_SAMPLE_S):
        raise AdminError(f"bench --dr: the follower did not catch up within "
                         f"{CATCH_UP_TIMEOUT_S:g}s (see its log)")


async def _sample(reactor: Any, calls: Any, cmap: Any, out: list[float],
                  running: list[bool]) -> None:
    from dds.tools.runner import pause
    while running[0]:
        out.extend(lag for lag in await tag_lags_ms(calls, cmap) if lag != float("inf"))
        await pause(reactor, LAG_SAMPLE_S)


def _pids(*dirs: Path) -> list[int]:
    from dds.tools.local import Layout, running
    return [b.pid for d in dirs for b in running(Layout(d.absolute()))]


async def bench_dr(reactor: Any, params: BenchParams, work_dir: Path | None = None,
                   keep: bool = False) -> dict[str, Any]:
    from twisted.internet.defer import Deferred

    from dds.tools import local
    from dds.tools.bench.putget import _floor
    from dds.tools.cluster import BrickCaller, fetch_map
    from dds.tools.dr.attach import attach_site, detach_site
    root = work_dir or Path(tempfile.mkdtemp(prefix="dds-bench-dr-"))
    follower = _Follower(root)
    events: Events = queue.Queue()
    workers: list[Child] = []
    modes = {False: _Mode(), True: _Mode()}
    lags: list[float] = []
    try:
        primary = await _start(reactor, root / "primary", local.DEFAULTS)
        site = await _start(reactor, root / "dr", attrs.evolve(
            local.DEFAULTS, bricks=3, partitions=8, name="dr"))
        await attach_site(reactor, primary, site)
        await detach_site(reactor, primary)
        cmap, _ = await fetch_map(reactor, primary)
        calls = BrickCaller(reactor, primary, {b.id: (b.address, b.port)
                                               for b in cmap.bricks.values()})
        result: dict[str, Any] = {"seconds": params.seconds, "keys": params.keys,
                                  "value_size": params.value_size,
                                  "concurrency": params.concurrency,
                                  "primary_bricks": len(cmap.bricks),
                                  "primary_partitions": len(cmap.partition_rg),
                                  "dr_bricks": 3, "dr_partitions": 8}
        result.update(await threads.deferToThread(_floor, params))
        await threads.deferToThread(start_workers, primary, events, workers,
                                    concurrency=params.concurrency, clients=params.clients,
                                    keys=params.keys, value_size=params.value_size)
        await threads.deferToThread(run_phase, workers, events, {"phase": "load"},
                                    "load (untimed)", params.keys, False, 600.0)
        pids = _pids(root / "primary", root / "dr") + [w.pid for w in workers]
        seconds = params.seconds / 2
        for attached in _ORDER:
            if attached:
                await attach_site(reactor, primary, site)
                follower.start()
                ui.say("bench --dr: the follower catches up (untimed)")
                await _caught_up(reactor, calls, cmap)
            else:
                if follower.proc is not None:
                    # Caught up first, so the clients' journals empty by the tags.
                    await _caught_up(reactor, calls, cmap)
                follower.stop()
                await detach_site(reactor, primary)
            running = [attached]
            sampler = Deferred.fromCoroutine(_sample(reactor, calls, cmap, lags, running))
            both = pids + ([follower.proc.pid] if follower.proc is not None else [])
            before = cpu_seconds(both)
            label = "put with the DR site" if attached else "put without"
            results = await threads.deferToThread(
                run_phase, workers, events, {"phase": "put", "seconds": seconds}, label,
                seconds, True, seconds + READY_TIMEOUT_S)
            modes[attached].add(results, cpu_delta(before, cpu_seconds(both)))
            running[0] = False
            await sampler
        calls.close()
    finally:
        for w in workers:
            w.send({"phase": "quit"})
            w.stop()
        follower.stop()
        for name in ("primary", "dr"):
            if (root / name).exists():
                local.local_down(local.Layout(root / name), purge=False)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    result.update(modes[False].fields("without"))
    result.update(modes[True].fields("with"))
    lags.sort()
    ratio = result["put_ops_s_with"] / max(1e-9, result["put_ops_s_without"])
    result.update({"dr_put_ratio": ratio, "dr_put_target": DR_PUT_TARGET,
                   "dr_put_target_met": ratio >= DR_PUT_TARGET,
                   "dr_lag_p50_ms": percentile(lags, 0.5),
                   "dr_lag_p99_ms": percentile(lags, 0.99), "dr_lag_samples": len(lags),
                   "journal_entries_p99": result["journal_entries_p99_with"],
                   "put_ratio_with_to_floor": result["put_ops_s_with"]
                   / max(1e-9, result["floor_rtt_s"]),
                   "put_ratio_without_to_floor": result["put_ops_s_without"]
                   / max(1e-9, result["floor_rtt_s"]),
                   "cpus": os.cpu_count()})
    return result


def _entries(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def render_dr(r: dict[str, Any], console: Console) -> None:
    console.print(f"bench --dr: a primary of {r['primary_bricks']} bricks "
                  f"({r['primary_partitions']} partitions) and a DR site of "
                  f"{r['dr_bricks']} bricks ({r['dr_partitions']} partitions) on this "
                  f"machine ({r['cpus']} CPUs); puts without and with the DR site, A-B-B-A, "
                  f"{r['seconds']:g}s each")
    t = table("", "without", "with DR site", "with / without", "target", "met")
    t.add_row("put ops/s", f"{r['put_ops_s_without']:,.0f}", f"{r['put_ops_s_with']:,.0f}",
              f"{r['dr_put_ratio']:.3f}", f">= {r['dr_put_target']:.2f}",
              met(r["dr_put_target_met"]))
    t.add_row("put ops/s / floor rtt/s", f"{r['put_ratio_without_to_floor']:.3f}",
              f"{r['put_ratio_with_to_floor']:.3f}", "", "", "")
    t.add_row("put p50 / p99 ms",
              f"{r['put_p50_ms_without']:.2f} / {r['put_p99_ms_without']:.2f}",
              f"{r['put_p50_ms_with']:.2f} / {r['put_p99_ms_with']:.2f}", "", "", "")
    t.add_row("CPU us per put (all processes)", f"{r['cpu_us_per_put_without']:,.0f}",
              f"{r['cpu_us_per_put_with']:,.0f}", "", "", "")
    t.add_row("DR lag p50 / p99 ms", "", f"{r['dr_lag_p50_ms']:,.0f} / "
              f"{r['dr_lag_p99_ms']:,.0f}", "", "", "")
    t.add_row("client journal entries p99",
              _entries(r["journal_entries_p99_without"]),
              _entries(r["journal_entries_p99"]), "", "", "")
    console.print(t)
    console.print(f"floor (echo, same run): {r['floor_rtt_s']:,.0f} rtt/s; lag samples: "
                  f"{r['dr_lag_samples']}")
    for name in ("without", "with"):
        if r[f"put_errors_{name}"]:
            console.print(f"[red]put errors {name}: {r[f'put_errors_{name}']}[/red]")
