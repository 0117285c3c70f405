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
3. **writers**: ``--clients`` ``DDSClient``\\ s, split over ``--workers`` processes (this
   module run as ``python -m dds.tools.benchrecovery worker``), each doing sequential
   puts of random preloaded keys and recording when each put started and ended.
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

import argparse
import bisect
import json
import os
import queue
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import attrs
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

__all__ = ["RecoveryParams", "TARGETS", "bench_recovery", "render", "main"]

#: The issue's targets: copy time in seconds, longest write pause (default mode) in ms.
TARGETS = {"copy_s": 2.0, "max_write_pause_ms": 100.0}
MODES = (("default", False), ("full_lease", True))
HOST = "127.0.0.1"
CLUSTER = "dds"
BRICKS = ("b1", "b2", "b3")
RECOVERING = "b3"
READY_TIMEOUT_S = 60.0
#: After the recovering brick serves again, writes go on this long before the window ends
#: (the clients repair their map on the first StaleMap from the new record).
POST_S = 0.5
STATUS_POLL_S = 0.1
#: Log lines of these namespaces make up the timeline.
_TIMELINE_NS = ("recovery", "bricks.copy.", "rgchange")


@attrs.frozen
class RecoveryParams:
    keys: int = 1_000_000
    value_bytes: int = 100
    clients: int = 16
    workers: int = 2
    lease_ms: int = 1000
    baseline_s: float = 2.0
    timeout_s: float = 600.0
    dir: Path | None = None
    keep: bool = False


def key_of(i: int) -> bytes:
    return b"bench-%010d" % i


# -- the orchestrator ------------------------------------------------------------------------

class _Run:
    """What one run started, so that it can be stopped whatever happens."""

    def __init__(self, root: Path) -> None:
        from dds.tools.local import Layout
        self.root = root
        self.layout = Layout(root)
        from dds.tools import credfiles
        root.mkdir(parents=True, exist_ok=True)
        credfiles.write_role_secrets(root)
        self.bricks: list[Any] = []          # local.BrickProc
        self.workers: list[Any] = []         # children.Child
        self.progress: Progress | None = None
        self.events: queue.Queue[Any] = queue.Queue()     # from the writer workers

    def role_env(self) -> dict[str, str]:
        """Each role's secret as DDS_<ROLE>_SECRET: bricks read all three from there."""
        from dds.tools import credfiles
        return credfiles.role_env(self.root)

    def admin_secret(self) -> bytes:
        return self.role_env()["DDS_ADMIN_SECRET"].encode()

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.role_env()}

    def cleanup(self) -> None:
        from dds.tools.local import stop
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        for w in self.workers:
            try:
                w.stop(timeout=3.0)
            except Exception:    # noqa: BLE001 -- keep stopping the others
                pass
        self.workers = []
        if self.bricks:
            stop(self.bricks)
            self.bricks = []


def bench_recovery(params: RecoveryParams) -> dict[str, Any]:
    """Run the whole benchmark; the result is what ``--json`` prints."""
    from dds.partition import initial_partitions
    from dds.tools import ui
    from dds.tools.runner import run

    made_dir = params.dir is None
    root = Path(tempfile.mkdtemp(prefix="dds-bench-recovery-")) if params.dir is None \
        else params.dir.absolute()
    if not made_dir:
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            from dds.tools.runner import AdminError
            raise AdminError(f"{root} is not empty; give an empty or new --dir")
    r = _Run(root)
    pid = str(initial_partitions(1)[0])
    try:
        ui.say(f"cluster directory {root}")
        preload = root / "preload.sqlite"
        t0 = time.monotonic()
        size = _preload(preload, pid, params.keys, params.value_bytes, r)
        ui.say(f"preloaded {params.keys:,} keys into {pid}: {size / 1e6:,.1f} MB in "
               f"{time.monotonic() - t0:.1f}s")
        for bid in BRICKS:
            data = r.layout.brick_dir(bid) / "data"
            data.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(preload, data / f"{pid}.sqlite")
        preload.unlink()
        _spawn_bricks(r, params)
        result = run(lambda reactor: _orchestrate(reactor, r, params, pid, size))
    finally:
        r.cleanup()
        if made_dir and not params.keep:
            shutil.rmtree(root, ignore_errors=True)
    result["dir"] = str(root) if params.keep or not made_dir else None
    return result


def _preload(path: Path, pid: str, keys: int, value_bytes: int, r: _Run,
             key: Callable[[int], bytes] | None = None) -> int:
    """Write ``keys`` rows (the ``i``-th key ``key(i)``, :func:`key_of` by default) into
    a new partition file of ``pid``, written directly (loading through the library
    would take minutes); return its size."""
    key = key or key_of
    from dds.bricks.partstore import PartitionStore
    from dds.partition import PartitionId
    from dds.tools import ui

    owner = PartitionId.parse(pid)
    if owner.depth != 0 and not all(owner.owns(key(i)) for i in range(keys)):
        raise ValueError(f"the preloaded keys do not all belong to {pid}")
    PartitionStore(path, pid, "disk").close()       # the schema, exactly as bricks make it
    rng = random.Random(0x5EED)
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        batch = 20000
        with ui.progress() as bar:
            r.progress = bar
            task = bar.add_task("preload (rows)", total=keys)
            for start in range(0, keys, batch):
                stop = min(keys, start + batch)
                conn.executemany(
                    "INSERT INTO kv (key, value, version, lsn) VALUES (?, ?, 1, ?)",
                    ((key(i), rng.randbytes(value_bytes), i + 1)
                     for i in range(start, stop)))
                bar.update(task, completed=stop)
            r.progress = None
        conn.execute("UPDATE meta SET value = ? WHERE name = 'last_lsn'", (keys,))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return path.stat().st_size


def _spawn_bricks(r: _Run, params: RecoveryParams) -> None:
    from dds.tools import procs
    from dds.tools.local import BrickProc

    for bid in BRICKS:
        bdir = r.layout.brick_dir(bid)
        config = bdir / "brick.toml"
        config.write_text(
            f'[brick]\nid = "{bid}"\nhost = "{HOST}"\nport = 0\ndata_dir = "data"\n'
            f'durability = "disk"\nhttp_port = -1\nstream_port = 0\n\n'
            f'[cluster]\nname = "{CLUSTER}"\n\n'
            f'[timeouts]\nlease_ms = {params.lease_ms}\n\n'
            f'[log]\nfile = "brick.log"\nformat = "json"\n')
        with open(bdir / "brick.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "dds.bricks.main", "--config",
                                     str(config)], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=bdir, close_fds=True, env=r.env())
        r.bricks.append(BrickProc(bid, proc.pid, procs.start_time(proc.pid) or 0))


async def _orchestrate(reactor: Any, r: _Run, params: RecoveryParams, pid: str,
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
        await _wait_serving(reactor, conns, rg, READY_TIMEOUT_S)
        count = (await conns[RECOVERING].call("checksum", {"pid": pid}, timeout=60.0))["count"]
        if count != params.keys:
            raise AdminError(f"{RECOVERING} holds {count} keys of {pid}, expected "
                             f"{params.keys}")
        ui.say(f"cluster serving: {rg} on {', '.join(BRICKS)}, {count:,} keys")

        writers = await _start_writers(reactor, r, params)
        for w in writers:
            w.send({"cmd": "go"})
        await _pause(reactor, 1.0)          # connections warm, maps settled
        rounds: dict[str, dict[str, Any]] = {}
        windows: dict[str, list[float]] = {}
        for mode, full_lease in MODES:
            await _pause(reactor, params.baseline_s)
            rnd = await _recover_once(reactor, r, conns, brick_of, rg, full_lease, mode,
                                      params.timeout_s)
            windows[f"baseline_{mode}"] = [rnd["t_request"] - params.baseline_s,
                                           rnd["t_request"]]
            windows[mode] = [rnd["t_request"], rnd["t_serving"] + POST_S]
            rounds[mode] = rnd
            await _pause(reactor, POST_S)
        stats = await _stop_writers(reactor, r, writers, windows)
        ui.say("comparing the replicas' checksums")
        sums = {}
        for bid, conn in conns.items():
            sums[bid] = (await conn.call("checksum", {"pid": pid}, timeout=60.0))["checksum"]
    finally:
        for conn in conns.values():
            conn.close()
    for b in r.bricks:
        _timeline_into(rounds, r.layout.brick_dir(b.id) / "brick.log", b.id)
    return _result(params, size, pid, rg, rounds, stats, sums)


async def _pause(reactor: Any, seconds: float) -> None:
    from dds.tools.runner import pause
    await pause(reactor, seconds)


async def _status(conn: Any) -> dict[str, Any]:
    reply: dict[str, Any] = await conn.call("status", {}, timeout=30.0)
    return reply


def _serves(status: dict[str, Any], rg: str) -> bool:
    lease = status.get("leases", {}).get(rg) or {}
    return (status.get("members", {}).get(rg) == "active" and rg not in status["blocked"]
            and lease.get("state") == "valid")


async def _wait_serving(reactor: Any, conns: dict[str, Any], rg: str, timeout: float,
                        only: str | None = None) -> None:
    from dds.tools.runner import AdminError, poll_until

    last: dict[str, Any] = {}

    async def serving() -> bool:
        for bid, conn in conns.items():
            if only is not None and bid != only:
                continue
            last[bid] = s = await _status(conn)
            if not _serves(s, rg):
                return False
        return True
    if not await poll_until(reactor, serving, timeout, interval=STATUS_POLL_S):
        raise AdminError(f"bricks do not all serve {rg} after {timeout:g}s: " + "; ".join(
            f"{bid}: member {s.get('members', {}).get(rg)}, blocked {s.get('blocked')}, "
            f"lease {(s.get('leases', {}).get(rg) or {}).get('state')}"
            for bid, s in last.items()))


async def _recover_once(reactor: Any, r: _Run, conns: dict[str, Any],
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
            status = await _status(conn)
            rec = status["recovery"].get(rg) or {}
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
            await _pause(reactor, STATUS_POLL_S)
        r.progress = None
    t_done = time.monotonic()
    await _wait_serving(reactor, conns, rg, 60.0, only=RECOVERING)
    t_serving, wall_serving = time.monotonic(), time.time()
    cpu = {bid: round((procs.cpu_seconds(b.pid) or 0.0) - cpu_before[bid], 3)
           for bid, b in brick_of.items()}
    source = rec.get("source")
    session: dict[str, Any] = {}
    if source in conns:
        copies = (await _status(conns[source])).get("copies", [])
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


# -- the writer workers ----------------------------------------------------------------------

async def _next_event(reactor: Any, events: "queue.Queue[Any]", deadline: float,
                      what: str) -> tuple[Any, dict[str, Any]]:
    """The next event of any writer worker, without blocking the reactor (the queue is
    filled by :class:`~dds.tools.children.Child`'s reader threads)."""
    from dds.tools.runner import AdminError
    while True:
        try:
            child, event = events.get_nowait()
        except queue.Empty:
            if time.monotonic() >= deadline:
                raise AdminError(f"timed out waiting for {what}") from None
            await _pause(reactor, 0.02)
            continue
        if event.get("event") == "exit":
            raise child.failure(f"exited while {what} (exit status {child.proc.poll()})")
        return child, event


async def _start_writers(reactor: Any, r: _Run, params: RecoveryParams) -> list[Any]:
    from dds.tools import ui
    from dds.tools.children import Child

    events = r.events
    workers = max(1, min(params.workers, params.clients))
    seeds = ",".join(b.address for b in r.bricks)
    for i in range(workers):
        share = params.clients // workers + (1 if i < params.clients % workers else 0)
        r.workers.append(Child(f"writer worker {i}", "dds.tools.benchrecovery",
                               ["worker", "--seeds", seeds, "--cluster", CLUSTER,
                                "--index", str(i), "--clients", str(share), "--keys",
                                str(params.keys), "--value-bytes", str(params.value_bytes)],
                               events, env=r.role_env()))
    deadline = time.monotonic() + READY_TIMEOUT_S
    ready = 0
    while ready < len(r.workers):
        _child, event = await _next_event(reactor, events, deadline,
                                          "the writer workers to connect")
        ready += event.get("event") == "ready"
    ui.say(f"{params.clients} writers connected in {len(r.workers)} processes")
    return list(r.workers)


async def _stop_writers(reactor: Any, r: _Run, writers: list[Any],
                        windows: dict[str, list[float]]) -> list[dict[str, Any]]:
    events = r.events
    for w in writers:
        w.send({"cmd": "stop", "windows": windows})
    deadline = time.monotonic() + 120.0
    done: dict[str, dict[str, Any]] = {}
    while len(done) < len(writers):
        child, event = await _next_event(reactor, events, deadline,
                                         "the writer workers to report")
        if event.get("event") == "done":
            done[child.name] = event
    for w in writers:
        w.send({"cmd": "quit"})
    return [done[w.name] for w in writers]


# -- results -------------------------------------------------------------------------------

def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _merge(stats: list[dict[str, Any]], window: str) -> dict[str, Any]:
    parts = [s["windows"][window] for s in stats]
    lat = [v for p in parts for v in p["lat_s"]]
    errors: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
    length = parts[0]["length_s"] if parts else 0.0
    ops = sum(p["ops"] for p in parts)
    worst = max(parts, key=lambda p: p["max_gap_s"]) if parts else {}
    return {"max_write_pause_ms": worst.get("max_gap_s", 0.0) * 1e3,
            #: When the longest pause ended, in seconds after the recovery request.
            "max_write_pause_end_s": worst.get("max_gap_end_s", 0.0),
            "max_put_ms": max(lat, default=0.0) * 1e3,
            "p50_put_ms": _percentile(lat, 0.50) * 1e3,
            "p99_put_ms": _percentile(lat, 0.99) * 1e3,
            "puts": ops, "put_ops_s": ops / length if length > 0 else 0.0,
            "write_errors": dict(errors)}


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


def _timeline_into(rounds: dict[str, dict[str, Any]], log: Path, brick: str) -> None:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return
    events = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and any(n in str(e.get("ns", "")) for n in _TIMELINE_NS):
            events.append(e)
    for rnd in rounds.values():
        tl = rnd.setdefault("timeline", [])
        for e in events:
            if rnd["wall_request"] <= float(e.get("t", 0)) <= rnd["wall_serving"]:
                tl.append({"at_s": round(float(e["t"]) - rnd["wall_request"], 3),
                           "brick": brick, "msg": str(e.get("msg", ""))[:200]})
        tl.sort(key=lambda x: x["at_s"])


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
            **_merge(stats, mode),
            "baseline": _merge(stats, f"baseline_{mode}"),
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
    t = Table(title_justify="left")
    for col in ("", "default", "--full-lease", "floor: before (default / full)", "target",
                "met"):
        t.add_column(col, justify="left" if not col else "right")

    def met(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[red]no[/red]"

    def both(key: str, fmt: str) -> str:
        return f"{format(d['baseline'][key], fmt)} / {format(f['baseline'][key], fmt)}"

    t.add_row("copy s (snapshot, transfer, install)", f"{d['copy_s']:.2f}",
              f"{f['copy_s']:.2f}", "", f"<= {TARGETS['copy_s']:g}",
              met(r["copy_target_met"]))
    t.add_row("copy MB/s", f"{d['copy_mb_s']:,.1f}", f"{f['copy_mb_s']:,.1f}", "", "", "")
    t.add_row("request to done s", f"{d['total_s']:.2f}", f"{f['total_s']:.2f}", "", "", "")
    t.add_row("writes fenced at the source s", _num(d["source_fence_s"], ".3f"),
              _num(f["source_fence_s"], ".3f"), "", "", "")
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
        cpu = ", ".join(f"{b} {s:.1f}" for b, s in sorted(m["cpu_s"].items()))
        console.print(f"{mode}: {', '.join(parts) or 'no timeline'}; CPU s: {cpu}; "
                      f"source {m['source']}, attempts {m['attempts']}")
        if m["write_errors"]:
            console.print(f"[red]{mode} write errors: {escape(str(m['write_errors']))}[/red]")
    if not r["replicas_identical"]:
        console.print("[red]the replicas' checksums differ after the run[/red]")


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


# -- the worker process ----------------------------------------------------------------------

def _emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class _Writer:
    """One client's sequential puts: when each successful one ended, and its latency."""

    def __init__(self, client: Any, rng: random.Random, keys: int, value: bytes) -> None:
        self.client = client
        self.rng = rng
        self.keys = keys
        self.value = value
        self.ended: list[float] = []
        self.lat: list[float] = []
        self.errors: list[tuple[float, str]] = []
        self.first_error = ""
        self.started = 0.0
        self.stopped = 0.0

    async def loop(self, running: list[bool]) -> None:
        from dds.errors import DDSError
        clock = time.monotonic
        self.started = clock()
        while running[0]:
            key = key_of(self.rng.randrange(self.keys))
            t0 = clock()
            try:
                await self.client.put(key, self.value)
            except DDSError as e:
                self.errors.append((clock(), e.code))
                self.first_error = self.first_error or f"{e.code}: {e.message}"
                continue
            t1 = clock()
            self.ended.append(t1)
            self.lat.append(t1 - t0)
        self.stopped = clock()

    def window(self, a: float, b: float, extend: bool) -> dict[str, Any]:
        """Puts around [a, b]: the longest gap between consecutive successful puts from
        the last one ending before ``a`` to the first one ending after ``b`` (``extend``:
        a pause that began inside the window counts whole) or to ``b`` itself, and the
        latencies of the puts ending in between (with ``extend``, that one included)."""
        i = bisect.bisect_right(self.ended, a)
        j = bisect.bisect_right(self.ended, b)
        points = [self.ended[i - 1] if i else self.started, *self.ended[i:j]]
        if not extend:
            points.append(b)
        else:
            points.append(self.ended[j] if j < len(self.ended) else self.stopped)
        gaps = [(y - x, y) for x, y in zip(points, points[1:])]
        gap, gap_end = max(gaps, default=(0.0, a))
        last = min(j + 1, len(self.ended)) if extend else j
        return {"max_gap_s": gap, "max_gap_end_s": gap_end - a, "lat": self.lat[i:last], "ops": j - i,
                "errors": Counter(code for t, code in self.errors if a <= t <= b)}


async def _work(reactor: Any, args: argparse.Namespace) -> None:
    from twisted.internet import threads
    from twisted.internet.defer import Deferred, DeferredList

    from dds.lib import DDSClient

    secret = os.environ["DDS_CLIENT_SECRET"].encode()
    clients = [await DDSClient.connect(reactor, seeds=args.seeds.split(","),
                                       cluster=args.cluster, secret=secret, timeout=120.0,
                                       node_id=f"bench-recovery-{args.index}-{n}-{os.getpid()}")
               for n in range(args.clients)]
    writers = [_Writer(c, random.Random(os.urandom(8)), args.keys,
                       os.urandom(args.value_bytes)) for c in clients]
    running = [False]
    loops: Any = None
    _emit(event="ready")
    try:
        while True:
            line = await threads.deferToThread(sys.stdin.readline)
            if not line:
                return
            cmd = json.loads(line)
            if cmd["cmd"] == "go":
                running[0] = True
                loops = DeferredList([Deferred.fromCoroutine(w.loop(running))
                                      for w in writers], consumeErrors=True)
            elif cmd["cmd"] == "stop":
                running[0] = False
                results = await loops if loops is not None else []
                crashed = [f.getErrorMessage() for ok, f in results if not ok]
                out: dict[str, Any] = {}
                for name, (a, b) in cmd["windows"].items():
                    parts = [w.window(a, b, extend=not name.startswith("baseline"))
                             for w in writers]
                    errors: Counter[str] = Counter()
                    for p in parts:
                        errors.update(p["errors"])
                    worst = max(parts, key=lambda p: p["max_gap_s"])
                    out[name] = {"max_gap_s": worst["max_gap_s"],
                                 "max_gap_end_s": worst["max_gap_end_s"],
                                 "lat_s": [round(v, 6) for p in parts for v in p["lat"]],
                                 "ops": sum(p["ops"] for p in parts), "length_s": b - a,
                                 "errors": dict(errors)}
                # The process's clients count in one registry (the global one).
                counters = {k: v for k, v in clients[0].metrics.counters.items()
                            if v} if clients else {}
                _emit(event="done", windows=out, crashed=crashed, counters=counters,
                      puts=sum(len(w.ended) for w in writers),
                      first_error=next((w.first_error for w in writers if w.first_error),
                                       ""))
            elif cmd["cmd"] == "quit":
                return
    finally:
        running[0] = False
        for c in clients:
            await c.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m dds.tools.benchrecovery worker ...``: one writer process."""
    p = argparse.ArgumentParser(prog="python -m dds.tools.benchrecovery")
    sub = p.add_subparsers(dest="what", required=True)
    w = sub.add_parser("worker", help="writer clients driven by `dds-admin bench recovery`")
    w.add_argument("--seeds", required=True)
    w.add_argument("--cluster", default=CLUSTER)
    w.add_argument("--index", type=int, default=0)
    w.add_argument("--clients", type=int, default=8)
    w.add_argument("--keys", type=int, default=1_000_000)
    w.add_argument("--value-bytes", type=int, default=100)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # the parent stops us; no traceback
    from twisted.internet import task
    from twisted.internet.defer import Deferred
    task.react(lambda reactor: Deferred.fromCoroutine(_work(reactor, args)))


if __name__ == "__main__":
    main()
