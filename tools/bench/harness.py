"""What ``dds-admin bench`` and ``bench contention`` share to drive their load
processes (:mod:`dds.tools.bench.worker`, :mod:`dds.tools.bench.floor`): start them,
send every one a phase, follow their progress on a bar until each reports ``done``."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterator
from typing import Any

from dds.tools import ui
from dds.tools.children import Child, Events, next_event
from dds.tools.cluster import Target

__all__ = ["READY_TIMEOUT_S", "load_workers", "run_phase", "start_workers"]

READY_TIMEOUT_S = 30.0


def run_phase(children: list[Child], events: Events, command: dict[str, Any],
              label: str, total: float, timed: bool, timeout: float
              ) -> list[dict[str, Any]]:
    """Send ``command`` to every child; follow progress until each reports done."""
    for child in children:
        child.send(command)
    done: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    with ui.progress() as bar:
        task = bar.add_task(label, total=total)
        while len(done) < len(children):
            child, event = next_event(events, deadline, f"the {label} phase")
            if event.get("event") == "done":
                done[child.name] = event
                if event.get("crashed"):
                    raise child.failure(f"crashed in the {label} phase: {event['crashed'][0]}")
            counts[child.name] = int(event.get("done", event.get("ops", 0)))
            ops = sum(counts.values())
            bar.update(task, completed=(time.monotonic() - t0) if timed else ops,
                       description=f"{label}: {ops} ops")
    ui.say(f"{label}: {sum(counts.values())} ops in {time.monotonic() - t0:.1f}s")
    return [done[c.name] for c in children]


def start_workers(target: Target, events: Events, workers: list[Child], *,
                  concurrency: int, clients: int, keys: int, value_size: int = 100
                  ) -> None:
    """Start ``clients`` bench worker processes (appended to ``workers`` as they start,
    so that the caller stops them whatever happens) and wait until each is connected;
    the ``concurrency`` requests in flight are shared out among them."""
    clients = max(1, min(clients, concurrency))
    seeds = ",".join(f"{h}:{p}" for h, p in target.seeds)
    for i in range(clients):
        share = concurrency // clients + (1 if i < concurrency % clients else 0)
        workers.append(Child(f"bench worker {i}", "dds.tools.bench.worker",
                             ["--seeds", seeds, "--cluster", target.cluster, "--index",
                              str(i), "--clients", str(clients), "--concurrency",
                              str(share), "--keys", str(keys), "--value-size",
                              str(value_size)]
                             + (["--dir", str(target.local_dir)] if target.local_dir
                                else []), events))
    deadline = time.monotonic() + READY_TIMEOUT_S
    for _ in workers:
        next_event(events, deadline, "the bench workers to connect")


@contextlib.contextmanager
def load_workers(target: Target, *, concurrency: int, clients: int, keys: int,
                 value_size: int = 100) -> Iterator[tuple[list[Child], Events]]:
    """The bench worker processes of :func:`start_workers`, connected, and the queue of
    their events; told to quit when the block ends, stopped whatever happens."""
    events: Events = queue.Queue()
    workers: list[Child] = []
    try:
        start_workers(target, events, workers, concurrency=concurrency, clients=clients,
                      keys=keys, value_size=value_size)
        yield workers, events
        for w in workers:
            w.send({"phase": "quit"})
    finally:
        for w in workers:
            w.stop()
