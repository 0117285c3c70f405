"""CPU time of the processes a bench measures (user + system, ``/proc/PID/stat``): read
before and after a phase, or sampled through a run and read between two instants."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from dds.tools import procs

__all__ = ["CPUSampler", "cpu_between", "cpu_delta", "cpu_seconds"]


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """PID -> CPU seconds so far, for the processes this machine can read."""
    return {pid: s for pid in pids if (s := procs.cpu_seconds(pid)) is not None}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two :func:`cpu_seconds` readings, over the processes
    read both times."""
    return sum(after[p] - before[p] for p in before if p in after)


class CPUSampler:
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
        self.samples.append((time.monotonic(), {name: procs.cpu_seconds(pid) or 0.0
                                                for name, pid in self.pids.items()}))

    async def _run(self) -> None:
        from dds.tools.runner import pause
        while self.running:
            self.sample()
            await pause(self.reactor, self.interval)

    async def stop(self) -> None:
        self.running = False
        await self._loop
        self.sample()


def cpu_between(samples: list[tuple[float, dict[str, float]]], a: float,
                b: float) -> dict[str, float]:
    """CPU seconds per process from the sample nearest ``a`` to the one nearest ``b``."""
    if not samples:
        return {}
    times = [t for t, _ in samples]
    i = min(range(len(times)), key=lambda k: abs(times[k] - a))
    j = min(range(len(times)), key=lambda k: abs(times[k] - b))
    return {name: samples[j][1][name] - samples[i][1][name] for name in samples[i][1]}
