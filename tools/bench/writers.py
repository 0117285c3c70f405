"""The writer processes of ``bench recovery`` and ``bench move``, driven from the bench
(:mod:`dds.tools.bench.writerproc` is the process): started and connected, told to go,
then stopped with the windows to report on.  The events come through a queue filled by
:class:`~dds.tools.children.Child`'s reader threads, read here without blocking the
reactor."""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import attrs

from dds.tools import ui
from dds.tools.bench.throwaway import CLUSTER, READY_TIMEOUT_S, ThrowawayCluster
from dds.tools.children import Child
from dds.tools.runner import AdminError, pause

__all__ = ["WriterParams", "next_event", "start_writers", "stop_writers"]

#: How long the writers may take to report once told to stop.
REPORT_TIMEOUT_S = 120.0


@attrs.frozen
class WriterParams:
    """The options of the benches that preload a partition and write to it while
    something happens (``bench recovery``, ``bench move``)."""
    keys: int = 1_000_000
    value_bytes: int = 100
    clients: int = 16
    workers: int = 2
    lease_ms: int = 1000
    baseline_s: float = 2.0
    timeout_s: float = 600.0
    dir: Path | None = None
    keep: bool = False


async def next_event(reactor: Any, events: "queue.Queue[Any]", deadline: float,
                     what: str) -> tuple[Any, dict[str, Any]]:
    """The next event of any writer worker; AdminError at ``deadline`` or when a worker's
    output ended."""
    while True:
        try:
            child, event = events.get_nowait()
        except queue.Empty:
            if time.monotonic() >= deadline:
                raise AdminError(f"timed out waiting for {what}") from None
            await pause(reactor, 0.02)
            continue
        if event.get("event") == "exit":
            raise child.failure(f"exited while {what} (exit status {child.proc.poll()})")
        return child, event


async def start_writers(reactor: Any, r: ThrowawayCluster, params: WriterParams,
                        pid: str | None = None) -> list[Any]:
    """``params.clients`` writer clients split over ``params.workers`` processes (kept in
    ``r.workers``, so that the clean-up stops them), each connected; with ``pid``, they
    write only keys of that partition."""
    workers = max(1, min(params.workers, params.clients))
    seeds = ",".join(b.address for b in r.bricks)
    for i in range(workers):
        share = params.clients // workers + (1 if i < params.clients % workers else 0)
        r.workers.append(Child(f"writer worker {i}", "dds.tools.bench.writerproc",
                               (["--pid", pid] if pid is not None else [])
                               + ["--seeds", seeds, "--cluster", CLUSTER, "--index", str(i),
                                  "--clients", str(share), "--keys", str(params.keys),
                                  "--value-bytes", str(params.value_bytes)],
                               r.events, env=r.role_env()))
    deadline = time.monotonic() + READY_TIMEOUT_S
    ready = 0
    while ready < len(r.workers):
        _child, event = await next_event(reactor, r.events, deadline,
                                         "the writer workers to connect")
        ready += event.get("event") == "ready"
    ui.say(f"{params.clients} writers connected in {len(r.workers)} processes")
    return list(r.workers)


async def stop_writers(reactor: Any, r: ThrowawayCluster, writers: list[Any],
                       windows: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Stop the writers' puts; each process's report of ``windows`` (name -> [a, b],
    monotonic seconds; a name starting ``baseline`` ends at ``b``, the others extend to
    the first put after it)."""
    for w in writers:
        w.send({"cmd": "stop", "windows": windows})
    deadline = time.monotonic() + REPORT_TIMEOUT_S
    done: dict[str, dict[str, Any]] = {}
    while len(done) < len(writers):
        child, event = await next_event(reactor, r.events, deadline,
                                        "the writer workers to report")
        if event.get("event") == "done":
            done[child.name] = event
    for w in writers:
        w.send({"cmd": "quit"})
    return [done[w.name] for w in writers]
