"""``dds-admin bench move``: how long moving a large partition to another replica group
takes, and what the clients writing to it see meanwhile (DESIGN §8).

The command builds its own throwaway cluster in a temporary directory (``--dir`` keeps
it somewhere else and ``--keep`` keeps it afterwards): 6 bricks in two replica groups
with disjoint members, ``rg0`` = b1, b2, b3 and ``rg1`` = b4, b5, b6, four partitions
(``p2.0`` and ``p2.2`` in ``rg0``, ``p2.1`` and ``p2.3`` in ``rg1``), ``disk``
durability; ``p2.0`` moves.  Disjoint members make the copy real: a target brick that is
also a member of the source RG copies nothing.  Each group keeps a partition besides the
moved one because a brick whose groups list no partition at all keeps every replica it
has on disk (``LocalReplicas.reconcile``): with one partition per group the source
would never drop the moved one, and the cost of dropping it would not be measured.
Then:

1. **preload**: ``p2.0``'s SQLite file is written directly before any brick starts, the
   way ``bench recovery`` does it: ``--keys`` rows of ``--value-bytes`` random bytes, every
   key one that routes to ``p2.0`` (:func:`~dds.tools.bench.movelayout.move_key`), identical on b1, b2, b3.  The
   default, 550,000 keys of 100 bytes, makes the issue's 100 MB partition (a 99.3 MB
   file; ``partition_bytes`` gives it).
2. the bricks start; the map records are built here (not by the placement code, which
   would choose the groups itself) and pushed to every brick; the bench waits until both
   groups serve and the source holds every key.
3. **writers**: ``--clients`` ``DDSClient``\\ s in ``--workers`` processes (the writer
   processes of ``bench recovery``, :mod:`dds.tools.bench.writerproc`, here writing keys
   of ``p2.0`` only), sequential puts of random preloaded keys, each put's end time and
   latency recorded.
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

import time
from typing import Any

from dds.tools.bench.cpu import CPUSampler, cpu_between
from dds.tools.bench.movelayout import (
    MOVED, SOURCE_BRICKS, SOURCE_RG, TARGET_BRICKS, TARGET_RG, TARGETS, MoveParams,
    cluster_records, move_key)
from dds.tools.bench.movereport import render, result
from dds.tools.bench.throwaway import (
    CLUSTER, HOST, READY_TIMEOUT_S, ThrowawayCluster, brick_status, log_events,
    throwaway_cluster, wait_serving)
from dds.tools.bench.writers import start_writers, stop_writers
from dds.tools.runner import pause, run

__all__ = ["MoveParams", "TARGETS", "bench_move", "cluster_records", "move_key", "render"]

#: Log lines of these namespaces make up the timeline.
_TIMELINE_NS = ("bricks.copy.", "rgchange", "journal", "storage", "server", "gossip",
                "bricks.admin")


def bench_move(params: MoveParams) -> dict[str, Any]:
    """Run the whole benchmark; the result is what ``--json`` prints."""
    with throwaway_cluster(params.dir, params.keep, "dds-bench-move-") as r:
        size = r.preload(str(MOVED), SOURCE_BRICKS, params.keys, params.value_bytes,
                         key=move_key)
        r.spawn_bricks((*SOURCE_BRICKS, *TARGET_BRICKS), params.lease_ms)
        out = run(lambda reactor: _orchestrate(reactor, r, params, size))
    out["dir"] = str(r.root) if r.kept else None
    return out


async def _orchestrate(reactor: Any, r: ThrowawayCluster, params: MoveParams,
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
            await wait_serving(reactor, {b: conns[b] for b in members}, rg,
                               READY_TIMEOUT_S)
        count = (await conns[SOURCE_BRICKS[0]].call("checksum", {"pid": str(MOVED)},
                                                    timeout=60.0))["count"]
        if count != params.keys:
            raise AdminError(f"{SOURCE_BRICKS[0]} holds {count} keys of {MOVED}, "
                             f"expected {params.keys}")
        ui.say(f"cluster serving: {MOVED} ({count:,} keys) in {SOURCE_RG} on "
               f"{', '.join(SOURCE_BRICKS)}; {TARGET_RG} on {', '.join(TARGET_BRICKS)}")

        writers = await start_writers(reactor, r, params, pid=str(MOVED))
        for w in writers:
            w.send({"cmd": "go"})
        await pause(reactor, 1.0)          # connections warm, maps settled
        sampler = CPUSampler(reactor, {**{b.id: b.pid for b in r.bricks},
                                       **{f"w{i}": w.pid for i, w in enumerate(writers)}})
        try:
            await pause(reactor, params.baseline_s)
            rnd = await _move_once(reactor, r, target, conns, params.rate_mb_s)
            await pause(reactor, params.after_s)
        finally:
            await sampler.stop()
        windows = _windows(rnd, params)
        stats = await stop_writers(reactor, r, writers, windows)
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
        held = {bid: str(MOVED) in (await brick_status(conns[bid]))["partitions"]
                for bid in SOURCE_BRICKS}
        cpu = cpu_between(sampler.samples, rnd["t_request"], rnd["t_done"])
        rnd["cpu_s"] = {b.id: round(cpu.get(b.id, 0.0), 3) for b in r.bricks}
    finally:
        for conn in conns.values():
            conn.close()
    for b in r.bricks:
        rnd["timeline"] += log_events(r.layout.brick_dir(b.id) / "brick.log", b.id,
                                      _TIMELINE_NS, rnd["wall_request"], rnd["wall_done"])
    rnd["timeline"].sort(key=lambda e: e["at_s"])
    return result(params, size, rnd, stats, sums, held)


async def _move_once(reactor: Any, r: ThrowawayCluster, target: Any, conns: dict[str, Any],
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
            moved = await move(reactor, target, str(MOVED), TARGET_RG, say,
                               rate_mb_s=rate_mb_s)
        finally:
            done[0] = True
            if watcher is not None:
                await watcher
        r.progress = None
    t_done, wall_done = time.monotonic(), time.time()
    ui.say(f"moved {MOVED} ({moved['copied_bytes'] / 1e6:,.1f} MB copied) in "
           f"{t_done - t_request:.2f}s")
    source = moved["source"]
    sessions = [c for c in (await brick_status(conns[source])).get("copies", [])
                if c["target"] in TARGET_BRICKS and set(c["pids"]) == {str(MOVED)}]
    steps = await _steps(conns[source], moved["job"], wall_request)
    return {"t_request": t_request, "t_done": t_done, "wall_request": wall_request,
            "wall_done": wall_done, "result": moved, "sessions": sessions,
            "steps": steps, "timeline": said}


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
            pulls = (await brick_status(conn)).get("moves_in", {})
        except Exception:    # noqa: BLE001 -- only a display
            pulls = {}
        pull = pulls.get(str(MOVED))
        if pull and pull.get("bytes_total"):
            bar.update(task, total=pull["bytes_total"], completed=pull["bytes_done"],
                       description=f"move {MOVED} to {TARGET_RG}: copy")
        elif not pulls:
            bar.update(task, description=f"move {MOVED} to {TARGET_RG}")
        await pause(reactor, 0.2)


async def _steps(conn: Any, job: str, wall_request: float) -> list[dict[str, Any]]:
    """When each step of the move's job was recorded in the source's journal."""
    reply = await conn.call("journal_read", {"job": job}, timeout=10.0)
    jobs = reply.get("jobs", [])
    if not jobs:
        return []
    return [{"step": s["name"], "at_s": round(float(s["at"]) - wall_request, 3)}
            for s in sorted(jobs[0]["steps"], key=lambda s: s["seq"])]
