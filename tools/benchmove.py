"""``dds-admin bench move``: how long moving a large partition to another replica group
takes, and what the clients writing to it see meanwhile (DESIGN §8).

The command builds its own throwaway cluster in a temporary directory (``--dir`` keeps
it somewhere else and ``--keep`` keeps it afterwards): 6 bricks in two replica groups
with disjoint members, ``rg0`` = b1, b2, b3 and ``rg1`` = b4, b5, b6, four partitions
(``p2.0`` and ``p2.2`` in ``rg0``, ``p2.1`` and ``p2.3`` in ``rg1``), ``disk``
durability; ``p2.0`` moves.  Disjoint members make the copy real: a target brick that is
also a member of the source RG copies nothing.  Each group keeps a partition besides the
moved one because a brick whose groups list no partition at all keeps every replica it
has on disk (``Brick._open_my_partitions``): with one partition per group the source
would never drop the moved one, and the cost of dropping it would not be measured.
Then:

1. **preload**: ``p2.0``'s SQLite file is written directly before any brick starts, the
   way ``bench recovery`` does it: ``--keys`` rows of ``--value-bytes`` random bytes, every
   key one that routes to ``p2.0`` (:func:`move_key`), identical on b1, b2, b3.  The
   default, 550,000 keys of 100 bytes, makes the issue's 100 MB partition (a 99.3 MB
   file; ``partition_bytes`` gives it).
2. the bricks start; the map records are built here (not by the placement code, which
   would choose the groups itself) and pushed to every brick; the bench waits until both
   groups serve and the source holds every key.
3. **writers**: ``--clients`` ``DDSClient``\\ s in ``--workers`` processes (the writer
   worker of ``bench recovery``, here writing keys of ``p2.0`` only), sequential puts of
   random preloaded keys, each put's end time and latency recorded.
4. ``--baseline-s`` seconds of steady writes (the floor, measured in this run), then
   :func:`dds.tools.move.move` moves ``p2.0`` to ``rg1`` (the same code as
   ``dds-admin move``), then the writers go on for ``after_s`` (1 s).

Figures:

- ``move_s``: wall time of the move call (plan, journal, copy to the three members of
  ``rg1``, fence, last delta, cut-over, release, drop);
- ``max_write_pause_ms``: per writer, the longest time between two consecutive successful
  puts from the last one before the move began until the first one after the move
  returned plus ``after_s`` (a pause that began inside counts whole); the maximum over
  the writers.  ``max_write_pause_end_s`` says when it ended (seconds after the start);
- ``throughput_ratio``: successful puts per second while the move ran, divided by the same
  in the ``--baseline-s`` before it; ``after_put_ops_s`` is the rate once it is done
  (clients now write to ``rg1``);
- ``p99_put_ms``, ``max_put_ms``: latencies of the puts during the move;
- ``source_fence_s``: how long the source member refused writes (its copy session's
  report); ``steps``: when each journaled step of the move was recorded (seconds after
  the start) and ``phases`` how long each took;
- ``baseline_*``: the same figures for the floor window;
- ``by_phase``: per phase (``copy`` until the ``copied`` record, ``switch`` until
  ``cutover-in``, ``drop`` until the call returned) and for the floor and the second
  after: puts/s and its ratio to the floor, longest pause, p99, and the CPU (cores in
  use) of the source brick, the other source members, the targets and the writers.

Every process this command starts (bricks, writer workers) is stopped at the end, also
on an error or Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dds.partition import PartitionId
from dds.tools import benchrecovery as br

__all__ = ["MoveParams", "TARGETS", "bench_move", "move_key", "render", "main"]

#: The issue's targets: longest write pause in ms, throughput during the move as a
#: fraction of the throughput before it.
TARGETS = {"max_write_pause_ms": 100.0, "throughput_ratio": 0.7}
HOST = br.HOST
CLUSTER = br.CLUSTER
SOURCE_RG, TARGET_RG = "rg0", "rg1"
SOURCE_BRICKS = ("b1", "b2", "b3")
TARGET_BRICKS = ("b4", "b5", "b6")
MOVED = PartitionId(2, 0)
#: The partitions each group keeps.
KEPT = {"rg0": (PartitionId(2, 2),), "rg1": (PartitionId(2, 1), PartitionId(2, 3))}
READY_TIMEOUT_S = 60.0
#: Log lines of these namespaces make up the timeline.
_TIMELINE_NS = ("bricks.copy.", "rgchange", "journal", "storage", "server", "gossip",
                "bricks.admin")


@attrs.frozen
class MoveParams:
    #: 550,000 keys of 100-byte values make the issue's 100 MB partition (99.3 MB file).
    keys: int = 550_000
    value_bytes: int = 100
    clients: int = 16
    workers: int = 2
    lease_ms: int = 1000
    baseline_s: float = 2.0
    after_s: float = 1.0
    timeout_s: float = 600.0
    dir: Path | None = None
    keep: bool = False
    #: Bandwidth limit of each target's copy, MB/s (None: the bricks' default
    #: ``brick.move_rate_mb_s``, as for ``dds-admin move``; 0: unlimited).
    rate_mb_s: int | None = None


def move_key(i: int, pid: PartitionId = MOVED) -> bytes:
    """The ``i``-th key of the bench: ``bench-<i>``, or ``bench-<i>.<n>`` with the
    smallest ``n`` that makes it route to ``pid`` (``2 ** depth`` hashes on average)."""
    key = b"bench-%010d" % i
    n = 0
    while not pid.owns(key):
        key = b"bench-%010d.%d" % (i, n)
        n += 1
    return key


# -- the orchestrator ------------------------------------------------------------------------

def bench_move(params: MoveParams) -> dict[str, Any]:
    """Run the whole benchmark; the result is what ``--json`` prints."""
    from dds.tools import ui
    from dds.tools.runner import AdminError, run

    made_dir = params.dir is None
    root = Path(tempfile.mkdtemp(prefix="dds-bench-move-")) if params.dir is None \
        else params.dir.absolute()
    if not made_dir:
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise AdminError(f"{root} is not empty; give an empty or new --dir")
    r = br._Run(root)
    try:
        ui.say(f"cluster directory {root}")
        preload = root / "preload.sqlite"
        t0 = time.monotonic()
        size = br._preload(preload, str(MOVED), params.keys, params.value_bytes, r,
                           key=move_key)
        ui.say(f"preloaded {params.keys:,} keys into {MOVED}: {size / 1e6:,.1f} MB in "
               f"{time.monotonic() - t0:.1f}s")
        for bid in SOURCE_BRICKS:
            data = r.layout.brick_dir(bid) / "data"
            data.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(preload, data / f"{MOVED}.sqlite")
        preload.unlink()
        _spawn_bricks(r, params)
        result = run(lambda reactor: _orchestrate(reactor, r, params, size))
    finally:
        r.cleanup()
        if made_dir and not params.keep:
            shutil.rmtree(root, ignore_errors=True)
    result["dir"] = str(root) if params.keep or not made_dir else None
    return result


def _spawn_bricks(r: br._Run, params: MoveParams) -> None:
    import subprocess

    from dds.tools import procs
    from dds.tools.local import BrickProc

    for bid in (*SOURCE_BRICKS, *TARGET_BRICKS):
        bdir = r.layout.brick_dir(bid)
        (bdir / "data").mkdir(parents=True, exist_ok=True)
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


def cluster_records(bricks: list[Any]) -> list[Any]:
    """The map: two RGs with disjoint members, ``MOVED`` and others in the first, the
    rest in the second (checked to be a complete map)."""
    from dds.maps import ClusterMap
    from dds.records import BrickRecord, ClusterRecord, Member, PartitionEntry, RGRecord

    records: list[Any] = [ClusterRecord(CLUSTER, 1, len(SOURCE_BRICKS))]
    records += [BrickRecord(b.id, 1, HOST, b.port, b.id) for b in bricks]
    records.append(RGRecord(SOURCE_RG, 1, [Member(b) for b in SOURCE_BRICKS],
                            [PartitionEntry(p) for p in (MOVED, *KEPT[SOURCE_RG])]))
    records.append(RGRecord(TARGET_RG, 1, [Member(b) for b in TARGET_BRICKS],
                            [PartitionEntry(p) for p in KEPT[TARGET_RG]]))
    # The trie raises if the partitions do not cover every key exactly once.
    if ClusterMap.of(records).route(move_key(0))[1].name != SOURCE_RG:
        raise ValueError(f"the bench's keys do not route to {SOURCE_RG}")
    return records


async def _orchestrate(reactor: Any, r: br._Run, params: MoveParams,
                       size: int) -> dict[str, Any]:
    from dds.tools import ui
    from dds.tools.cluster import Target, connect_brick
    from dds.tools.local import wait_ready
    from dds.tools.runner import AdminError

    await wait_ready(reactor, r.layout, r.bricks, Target(((HOST, 0),), r.admin_secret(),
                                                         CLUSTER, None),
                     timeout=READY_TIMEOUT_S)
    target = Target(tuple((HOST, b.port) for b in r.bricks), r.admin_secret(), CLUSTER,
                    None)
    conns = {b.id: await connect_brick(reactor, HOST, b.port, target, timeout=5.0)
             for b in r.bricks}
    try:
        wire = [rec.canonical() for rec in cluster_records(r.bricks)]
        for bid, conn in conns.items():
            reply = await conn.call("map_push", {"records": wire}, timeout=10.0)
            if reply.get("conflicts"):
                raise AdminError(f"{bid} refused the map: {reply['conflicts']}")
        for rg, members in ((SOURCE_RG, SOURCE_BRICKS), (TARGET_RG, TARGET_BRICKS)):
            await br._wait_serving(reactor, {b: conns[b] for b in members}, rg,
                                   READY_TIMEOUT_S)
        count = (await conns[SOURCE_BRICKS[0]].call("checksum", {"pid": str(MOVED)},
                                                    timeout=60.0))["count"]
        if count != params.keys:
            raise AdminError(f"{SOURCE_BRICKS[0]} holds {count} keys of {MOVED}, "
                             f"expected {params.keys}")
        ui.say(f"cluster serving: {MOVED} ({count:,} keys) in {SOURCE_RG} on "
               f"{', '.join(SOURCE_BRICKS)}; {TARGET_RG} on {', '.join(TARGET_BRICKS)}")

        writers = await _start_writers(reactor, r, params)
        for w in writers:
            w.send({"cmd": "go"})
        await br._pause(reactor, 1.0)          # connections warm, maps settled
        sampler = _CPUSampler(reactor, {**{b.id: b.pid for b in r.bricks},
                                        **{f"w{i}": w.pid for i, w in enumerate(writers)}})
        try:
            await br._pause(reactor, params.baseline_s)
            rnd = await _move_once(reactor, r, target, conns, params.rate_mb_s)
            await br._pause(reactor, params.after_s)
        finally:
            await sampler.stop()
        windows = _windows(rnd, params)
        stats = await br._stop_writers(reactor, r, writers, windows)
        rnd["windows"] = windows
        rnd["cpu_samples"] = sampler.samples
        ui.say("comparing the new replicas' checksums")
        sums: dict[str, int] = {}
        for bid in TARGET_BRICKS:
            reply = await conns[bid].call("checksum", {"pid": str(MOVED)}, timeout=60.0)
            sums[bid] = reply["checksum"]
            if reply["count"] != params.keys:
                raise AdminError(f"{bid} holds {reply['count']} keys of {MOVED} after the "
                                 f"move, expected {params.keys}")
        held = {bid: str(MOVED) in (await br._status(conns[bid]))["partitions"]
                for bid in SOURCE_BRICKS}
        cpu = _cpu_between(sampler.samples, rnd["t_request"], rnd["t_done"])
        rnd["cpu_s"] = {b.id: round(cpu.get(b.id, 0.0), 3) for b in r.bricks}
    finally:
        for conn in conns.values():
            conn.close()
    for b in r.bricks:
        rnd["timeline"] += _timeline(r.layout.brick_dir(b.id) / "brick.log", b.id,
                                     rnd["wall_request"], rnd["wall_done"])
    rnd["timeline"].sort(key=lambda e: e["at_s"])
    return _result(params, size, rnd, stats, sums, held)


async def _move_once(reactor: Any, r: br._Run, target: Any, conns: dict[str, Any],
                     rate_mb_s: int | None = None) -> dict[str, Any]:
    """Move ``MOVED`` to ``TARGET_RG`` with the code of ``dds-admin move``, timed."""
    from twisted.internet.defer import Deferred

    from dds.tools import ui
    from dds.tools.move import move

    said: list[dict[str, Any]] = []
    t_request, wall_request = time.monotonic(), time.time()

    def say(text: str) -> None:
        said.append({"at_s": round(time.monotonic() - t_request, 3), "brick": "admin",
                     "msg": text[:200]})
        ui.say(f"move: {text}")

    done = [False]
    with ui.progress() as bar:
        r.progress = bar
        task = bar.add_task(f"move {MOVED} to {TARGET_RG}", total=None)
        watcher = None
        if not bar.disable:     # a live display: follow the copy on one target brick
            watcher = Deferred.fromCoroutine(_watch(reactor, conns[TARGET_BRICKS[0]],
                                                    bar, task, done))
        try:
            result = await move(reactor, target, str(MOVED), TARGET_RG, say,
                                rate_mb_s=rate_mb_s)
        finally:
            done[0] = True
            if watcher is not None:
                await watcher
        r.progress = None
    t_done, wall_done = time.monotonic(), time.time()
    ui.say(f"moved {MOVED} ({result['copied_bytes'] / 1e6:,.1f} MB copied) in "
           f"{t_done - t_request:.2f}s")
    source = result["source"]
    sessions = [c for c in (await br._status(conns[source])).get("copies", [])
                if c["target"] in TARGET_BRICKS and set(c["pids"]) == {str(MOVED)}]
    steps = await _steps(conns[source], result["job"], wall_request)
    return {"t_request": t_request, "t_done": t_done, "wall_request": wall_request,
            "wall_done": wall_done, "result": result, "sessions": sessions,
            "steps": steps, "timeline": said}


class _CPUSampler:
    """CPU seconds used so far by each process, every ``interval`` (a /proc read each)."""

    def __init__(self, reactor: Any, pids: dict[str, int], interval: float = 0.1) -> None:
        from twisted.internet.defer import Deferred
        self.reactor = reactor
        self.pids = pids
        self.interval = interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.running = True
        self._loop = Deferred.fromCoroutine(self._run())

    def sample(self) -> None:
        from dds.tools import procs
        self.samples.append((time.monotonic(), {name: procs.cpu_seconds(pid) or 0.0
                                                for name, pid in self.pids.items()}))

    async def _run(self) -> None:
        while self.running:
            self.sample()
            await br._pause(self.reactor, self.interval)

    async def stop(self) -> None:
        self.running = False
        await self._loop
        self.sample()


def _cpu_between(samples: list[tuple[float, dict[str, float]]], a: float,
                 b: float) -> dict[str, float]:
    """CPU seconds per process from the sample nearest ``a`` to the one nearest ``b``."""
    if not samples:
        return {}
    times = [t for t, _ in samples]
    i = min(range(len(times)), key=lambda k: abs(times[k] - a))
    j = min(range(len(times)), key=lambda k: abs(times[k] - b))
    return {name: samples[j][1][name] - samples[i][1][name] for name in samples[i][1]}


def _windows(rnd: dict[str, Any], params: MoveParams) -> dict[str, list[float]]:
    """The writers' windows (monotonic seconds): the floor before the move, the move as a
    whole and with ``after_s`` of aftermath, and the move's phases split at the journal
    records: ``copy`` (until ``copied``), ``switch`` (records read, fence, last delta,
    cut-over; until ``cutover-in``) and ``drop`` (release, the source RG's record, the
    outcome; until the move returned), then ``after``."""
    t0, t1 = rnd["t_request"], rnd["t_done"]
    at = {s["step"]: t0 + s["at_s"] for s in rnd["steps"]}
    out = {"baseline": [t0 - params.baseline_s, t0], "move": [t0, t1],
           "settle": [t0, t1 + params.after_s], "after": [t1, t1 + params.after_s]}
    if "copied" in at and "cutover-in" in at:
        out["phase_copy"] = [t0, at["copied"]]
        out["phase_switch"] = [at["copied"], at["cutover-in"]]
        out["phase_drop"] = [at["cutover-in"], t1]
    return out


async def _watch(reactor: Any, conn: Any, bar: Any, task: Any, done: list[bool]) -> None:
    """The copy's progress on one target brick, for the live display only."""
    while not done[0]:
        try:
            pulls = (await br._status(conn)).get("moves_in", {})
        except Exception:    # noqa: BLE001 -- only a display
            pulls = {}
        pull = pulls.get(str(MOVED))
        if pull and pull.get("bytes_total"):
            bar.update(task, total=pull["bytes_total"], completed=pull["bytes_done"],
                       description=f"move {MOVED} to {TARGET_RG}: copy")
        elif not pulls:
            bar.update(task, description=f"move {MOVED} to {TARGET_RG}")
        await br._pause(reactor, 0.2)


async def _steps(conn: Any, job: str, wall_request: float) -> list[dict[str, Any]]:
    """When each step of the move's job was recorded in the source's journal."""
    reply = await conn.call("journal_read", {"job": job}, timeout=10.0)
    jobs = reply.get("jobs", [])
    if not jobs:
        return []
    return [{"step": s["name"], "at_s": round(float(s["at"]) - wall_request, 3)}
            for s in sorted(jobs[0]["steps"], key=lambda s: s["seq"])]


def _timeline(log: Path, brick: str, wall_a: float, wall_b: float) -> list[dict[str, Any]]:
    """The move-related log lines of one brick between two wall-clock times."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if not isinstance(e, dict) or not any(n in str(e.get("ns", "")) for n in _TIMELINE_NS):
            continue
        t = float(e.get("t", 0))
        if wall_a <= t <= wall_b:
            out.append({"at_s": round(t - wall_a, 3), "brick": brick,
                        "msg": str(e.get("msg", ""))[:200]})
    return out


# -- the writer workers ----------------------------------------------------------------------

async def _start_writers(reactor: Any, r: br._Run, params: MoveParams) -> list[Any]:
    from dds.tools import ui
    from dds.tools.children import Child

    workers = max(1, min(params.workers, params.clients))
    seeds = ",".join(b.address for b in r.bricks)
    for i in range(workers):
        share = params.clients // workers + (1 if i < params.clients % workers else 0)
        r.workers.append(Child(f"writer worker {i}", "dds.tools.benchmove",
                               ["worker", "--pid", str(MOVED), "--seeds", seeds,
                                "--cluster", CLUSTER, "--index", str(i), "--clients",
                                str(share), "--keys", str(params.keys), "--value-bytes",
                                str(params.value_bytes)],
                               r.events, env=r.role_env()))
    deadline = time.monotonic() + READY_TIMEOUT_S
    ready = 0
    while ready < len(r.workers):
        _child, event = await br._next_event(reactor, r.events, deadline,
                                             "the writer workers to connect")
        ready += event.get("event") == "ready"
    ui.say(f"{params.clients} writers connected in {len(r.workers)} processes")
    return list(r.workers)


# -- results -------------------------------------------------------------------------------

def _phases(steps: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per journaled step: from the previous step's record (or the start)."""
    out: dict[str, float] = {}
    last = 0.0
    for s in steps:
        out[s["step"]] = round(s["at_s"] - last, 3)
        last = s["at_s"]
    return out


def _by_phase(windows: dict[str, list[float]], stats: list[dict[str, Any]],
              samples: list[tuple[float, dict[str, float]]], base_ops: float,
              source: str) -> dict[str, dict[str, Any]]:
    """Per window: length, puts/s and its ratio to the floor, the longest pause, and the
    CPU (cores in use on average) of the source brick, the other source members, the
    target members and the writer processes."""
    others = tuple(b for b in SOURCE_BRICKS if b != source)
    writers = tuple(n for n in (samples[0][1] if samples else {}) if n.startswith("w"))
    out: dict[str, dict[str, Any]] = {}
    for name in ("baseline", "phase_copy", "phase_switch", "phase_drop", "after"):
        if name not in windows:
            continue
        a, b = windows[name]
        m = br._merge(stats, name)
        cpu = _cpu_between(samples, a, b)
        length = max(b - a, 1e-9)

        def cores(names: tuple[str, ...], cpu: dict[str, float] = cpu,
                  length: float = length) -> float:
            return round(sum(cpu.get(n, 0.0) for n in names) / length, 2)
        out[name.removeprefix("phase_")] = {
            "seconds": round(b - a, 3), "put_ops_s": round(m["put_ops_s"], 1),
            "ratio": round(m["put_ops_s"] / base_ops, 3) if base_ops else 0.0,
            "max_write_pause_ms": round(m["max_write_pause_ms"], 1),
            "p99_put_ms": round(m["p99_put_ms"], 1),
            "cpu_cores": {
                "source": cores((source,)), "other_source": cores(others),
                "targets": cores(TARGET_BRICKS), "writers": cores(writers)}}
    return out


def _rate(params: MoveParams) -> int:
    """The bandwidth limit of each target's copy in effect (0: none)."""
    if params.rate_mb_s is not None:
        return params.rate_mb_s
    from dds.config import BrickSection
    default = attrs.fields(BrickSection).move_rate_mb_s.default
    return int(default or 0)


def _result(params: MoveParams, size: int, rnd: dict[str, Any], stats: list[dict[str, Any]],
            sums: dict[str, int], held: dict[str, bool]) -> dict[str, Any]:
    windows: dict[str, list[float]] = rnd["windows"]
    move = br._merge(stats, "move")
    settle = br._merge(stats, "settle")
    base = br._merge(stats, "baseline")
    after = br._merge(stats, "after")
    fences = [s["fenced_s"] for s in rnd["sessions"] if s.get("fenced_s") is not None]
    move_s = rnd["t_done"] - rnd["t_request"]
    out: dict[str, Any] = {
        "keys": params.keys, "value_bytes": params.value_bytes, "clients": params.clients,
        "workers": len(stats), "bricks": len(SOURCE_BRICKS) + len(TARGET_BRICKS),
        "replication": len(SOURCE_BRICKS), "partition": str(MOVED), "from_rg": SOURCE_RG,
        "to_rg": TARGET_RG, "durability": "disk", "lease_ms": params.lease_ms,
        "partition_bytes": size, "baseline_s": params.baseline_s, "after_s": params.after_s,
        "copy_rate_mb_s": _rate(params),
        "job": rnd["result"]["job"], "source": rnd["result"]["source"],
        "bytes_copied": rnd["result"]["copied_bytes"],
        "move_s": move_s,
        "copy_mb_s": rnd["result"]["copied_bytes"] / 1e6 / move_s if move_s else 0.0,
        "max_write_pause_ms": settle["max_write_pause_ms"],
        "max_write_pause_end_s": settle["max_write_pause_end_s"],
        "throughput_ratio": (move["put_ops_s"] / base["put_ops_s"]
                             if base["put_ops_s"] else 0.0),
        "put_ops_s": move["put_ops_s"], "p50_put_ms": move["p50_put_ms"],
        "p99_put_ms": move["p99_put_ms"], "max_put_ms": move["max_put_ms"],
        "write_errors": sum(settle["write_errors"].values()),
        "write_error_codes": settle["write_errors"],
        "source_fence_s": max(fences) if fences else None,
        "after_put_ops_s": after["put_ops_s"],
        "after_max_write_pause_ms": after["max_write_pause_ms"],
        "baseline_put_ops_s": base["put_ops_s"],
        "baseline_max_write_pause_ms": base["max_write_pause_ms"],
        "baseline_p99_put_ms": base["p99_put_ms"],
        "baseline_max_put_ms": base["max_put_ms"],
        "steps": rnd["steps"], "phases": _phases(rnd["steps"]),
        "by_phase": _by_phase(windows, stats, rnd["cpu_samples"], base["put_ops_s"],
                              rnd["result"]["source"]),
        "copy_sessions": rnd["sessions"], "cpu_s": rnd["cpu_s"],
        "replicas_identical": len(set(sums.values())) == 1,
        "source_dropped": not any(held.values()),
        "source_still_holds": sorted(b for b, h in held.items() if h),
        "layout": {SOURCE_RG: [str(MOVED), *map(str, KEPT[SOURCE_RG])],
                   TARGET_RG: list(map(str, KEPT[TARGET_RG]))},
        "targets": dict(TARGETS),
        "client_counters": dict(sum((Counter(s.get("counters", {})) for s in stats),
                                    Counter())),
        "timeline": rnd["timeline"],
    }
    out["pause_target_met"] = out["max_write_pause_ms"] <= TARGETS["max_write_pause_ms"]
    out["throughput_target_met"] = out["throughput_ratio"] >= TARGETS["throughput_ratio"]
    return out


def _rate_text(rate: int) -> str:
    return f"at most {rate} MB/s per target" if rate else "full speed"


def render(r: dict[str, Any], console: Console) -> None:
    console.print(f"bench move: {r['partition']} ({r['keys']:,} keys x {r['value_bytes']} B "
                  f"= {r['partition_bytes'] / 1e6:,.1f} MB file) from {r['from_rg']} "
                  f"(b1-b3) to {r['to_rg']} (b4-b6), replication {r['replication']}, "
                  f"durability {r['durability']}, lease {r['lease_ms']} ms; "
                  f"{r['clients']} writers in {r['workers']} processes; copies "
                  f"{_rate_text(r['copy_rate_mb_s'])}")
    t = Table(title_justify="left")
    for col in ("", "during the move", "floor: before", "after", "target", "met"):
        t.add_column(col, justify="left" if not col else "right")

    def met(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[red]no[/red]"

    t.add_row("move s", f"{r['move_s']:.2f}", "", "", "", "")
    t.add_row("copied MB (all targets)", f"{r['bytes_copied'] / 1e6:,.1f}", "", "", "", "")
    t.add_row("writes fenced at the source s", br._num(r["source_fence_s"], ".3f"), "", "",
              "", "")
    t.add_row("longest write pause ms", f"{r['max_write_pause_ms']:,.0f}",
              f"{r['baseline_max_write_pause_ms']:,.0f}",
              f"{r['after_max_write_pause_ms']:,.0f}",
              f"<= {TARGETS['max_write_pause_ms']:g}", met(r["pause_target_met"]))
    t.add_row("puts/s", f"{r['put_ops_s']:,.0f}", f"{r['baseline_put_ops_s']:,.0f}",
              f"{r['after_put_ops_s']:,.0f}", "", "")
    t.add_row("throughput ratio (during / before)", f"{r['throughput_ratio']:.2f}", "", "",
              f">= {TARGETS['throughput_ratio']:g}", met(r["throughput_target_met"]))
    t.add_row("p99 put ms", f"{r['p99_put_ms']:,.1f}", f"{r['baseline_p99_put_ms']:,.1f}",
              "", "", "")
    t.add_row("longest put ms", f"{r['max_put_ms']:,.0f}", f"{r['baseline_max_put_ms']:,.0f}",
              "", "", "")
    t.add_row("write errors", str(r["write_errors"]), "", "", "", "")
    console.print(t)
    if r["by_phase"]:
        p = Table(title="by phase (CPU: cores in use on average, of 2)", title_justify="left")
        for col in ("phase", "s", "puts/s", "x floor", "longest pause ms", "p99 put ms",
                    f"CPU {r['source']}", "CPU other sources", "CPU targets",
                    "CPU writers"):
            p.add_column(col, justify="left" if col == "phase" else "right")
        for name, ph in r["by_phase"].items():
            c = ph["cpu_cores"]
            p.add_row(name, f"{ph['seconds']:.2f}", f"{ph['put_ops_s']:,.0f}",
                      f"{ph['ratio']:.2f}", f"{ph['max_write_pause_ms']:,.0f}",
                      f"{ph['p99_put_ms']:,.1f}", f"{c['source']:.2f}",
                      f"{c['other_source']:.2f}", f"{c['targets']:.2f}",
                      f"{c['writers']:.2f}")
        console.print(p)
    phases = ", ".join(f"{name} {s:.2f}s" for name, s in r["phases"].items())
    console.print(f"steps (time to each journal record): {phases or 'none'}")
    cpu = ", ".join(f"{b} {s:.1f}" for b, s in sorted(r["cpu_s"].items()))
    console.print(f"CPU s during the move: {cpu}; longest pause ended "
                  f"{r['max_write_pause_end_s']:.2f}s after the start")
    if r["write_errors"]:
        console.print(f"[red]write errors: {escape(str(r['write_error_codes']))}[/red]")
    if not r["replicas_identical"]:
        console.print("[red]the new replicas' checksums differ after the move[/red]")
    if not r["source_dropped"]:
        console.print("[red]a source brick still holds the moved partition[/red]")


# -- the worker process ----------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    """``python -m dds.tools.benchmove worker --pid P ...``: the writer worker of ``bench
    recovery``, its keys being :func:`move_key` of ``P``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "worker" or args[1] != "--pid":
        sys.exit("usage: python -m dds.tools.benchmove worker --pid PID [options of "
                 "python -m dds.tools.benchrecovery worker]")
    pid = PartitionId.parse(args[2])
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # The recovery worker picks key_of(random index); this process writes only keys of pid.
    br.key_of = lambda i: move_key(i, pid)
    br.main(["worker", *args[3:]])


if __name__ == "__main__":
    main()
