"""What a fault cost the clients: the longest wait for a write, and reads' latency.

A key's *write gap* is the time between two successful writes of it (by completion).
The fault workers write every key back to back, so with no fault a gap is a few
operations long; a fault that blocks a key's RG stretches it.  Issue 15's targets are
about *single* faults (one brick killed or paused): a gap is charged to a fault only when
it overlaps that fault's window and no other's, and a fault counts only when its window
overlaps no other fault's.  A window runs from the fault's start to its heal plus
``SETTLE_S``: what follows a heal (a restarted brick's re-copy and readmission fence)
is the fault's cost too.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

import attrs

from tests.faults.nemesis import Fault
from tests.verify.history import Op

__all__ = ["FaultWindow", "SETTLE_S", "SingleFaultCost", "single_fault_costs", "summary_by_kind",
           "windows", "write_gaps"]

#: Seconds after a heal that still belong to the fault.
SETTLE_S = 5.0


@attrs.frozen
class FaultWindow:
    index: int
    kind: str
    start: float
    end: float

    def overlaps(self, a: float, b: float) -> bool:
        return a < self.end and b > self.start


@attrs.frozen
class SingleFaultCost:
    window: FaultWindow
    #: the longest write gap charged to this fault, in seconds (0: no write was blocked)
    write_gap_s: float
    #: 99th percentile of the gets invoked during the fault (None: there were none)
    read_p99_s: float | None


def windows(started: Iterable[tuple[float, Fault]], settle_s: float = SETTLE_S
            ) -> list[FaultWindow]:
    """Each started fault's window, by its monotonic start and planned duration."""
    return [FaultWindow(f.index, f.kind, t, t + f.duration + settle_s) for t, f in started]


def write_gaps(ops: Sequence[Op]) -> list[tuple[float, float]]:
    """Every (previous, next) completion pair of successful writes of one key."""
    by_key: dict[bytes, list[float]] = {}
    for o in ops:
        if o.is_write and o.status == "ok" and o.complete_t is not None:
            by_key.setdefault(o.key, []).append(o.complete_t)
    gaps = []
    for times in by_key.values():
        times.sort()
        gaps.extend(zip(times, times[1:]))
    return gaps


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    values.sort()
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def single_fault_costs(ops: Sequence[Op], wins: Sequence[FaultWindow]
                       ) -> list[SingleFaultCost]:
    """The cost of every fault whose window overlaps no other's."""
    singles = [w for w in wins
               if not any(o is not w and o.overlaps(w.start, w.end) for o in wins)]
    gaps = write_gaps(ops)
    gets = [(o.invoke_t, o.complete_t - o.invoke_t) for o in ops
            if o.kind == "get" and o.status == "ok" and o.complete_t is not None]
    out = []
    for w in singles:
        longest = 0.0
        for a, b in gaps:
            if w.overlaps(a, b) and not any(o is not w and o.overlaps(a, b) for o in wins):
                longest = max(longest, b - a)
        during = [lat for t, lat in gets if w.start <= t < w.end]
        out.append(SingleFaultCost(w, longest, _p99(during)))
    return out


def summary_by_kind(costs: Sequence[SingleFaultCost]) -> dict[str, dict[str, float]]:
    """Per fault kind: how many single faults, the median and longest write gap (ms),
    and the worst p99 of the gets during one (ms)."""
    kinds: dict[str, list[SingleFaultCost]] = {}
    for c in costs:
        kinds.setdefault(c.window.kind, []).append(c)
    out = {}
    for kind, cs in sorted(kinds.items()):
        gaps = [c.write_gap_s * 1000 for c in cs]
        reads = [c.read_p99_s * 1000 for c in cs if c.read_p99_s is not None]
        out[kind] = {"n": len(cs), "gap_median_ms": statistics.median(gaps),
                     "gap_max_ms": max(gaps), "read_p99_max_ms": max(reads, default=0.0)}
    return out
