"""What a fault cost the clients: the longest wait for a write, and reads' latency.

A key's *write gap* is the time between two successful writes of it (by completion).
The fault workers write every key back to back, so with no fault a gap is a few
operations long; a fault that blocks a key's RG stretches it.  Issue 15's targets are
about single faults (one brick killed or paused), and the campaigns stack faults, so a
gap is charged to a fault only when that fault is the *only* one that both overlaps the
gap in time and touches the key: a fault on a brick touches the keys whose replica group
holds that brick; a network partition and a whole-cluster restart touch every key.  A
fault's window runs from its start to its heal plus ``SETTLE_S``: what follows a heal (a
restarted brick's re-copy and readmission fence) is the fault's cost too.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence

import attrs

from tests.faults.nemesis import Fault
from tests.verify.history import Op

__all__ = ["FaultWindow", "SETTLE_S", "SingleFaultCost", "single_fault_costs",
           "summary_by_kind", "windows", "write_gaps"]

#: Seconds after a heal that still belong to the fault.
SETTLE_S = 5.0
#: Kinds that touch every key, whichever bricks they name.
EVERYWHERE = frozenset({"partition", "restart"})


@attrs.frozen
class FaultWindow:
    index: int
    kind: str
    start: float
    end: float
    targets: frozenset[str] = frozenset()

    def overlaps(self, a: float, b: float) -> bool:
        return a < self.end and b > self.start

    def touches(self, rg: frozenset[str] | None) -> bool:
        """Whether this fault can delay a key whose RG is ``rg`` (None: not known)."""
        return rg is None or self.kind in EVERYWHERE or bool(self.targets & rg)


@attrs.frozen
class SingleFaultCost:
    window: FaultWindow
    #: the longest write gap charged to this fault alone, in seconds
    write_gap_s: float
    #: 99th percentile of the gets of its keys while it alone ran (None: there were none)
    read_p99_s: float | None


def windows(started: Iterable[tuple[float, Fault]], settle_s: float = SETTLE_S
            ) -> list[FaultWindow]:
    """Each started fault's window, by its monotonic start and planned duration."""
    return [FaultWindow(f.index, f.kind, t, t + f.duration + settle_s, frozenset(f.targets))
            for t, f in started]


def write_gaps(ops: Sequence[Op]) -> dict[bytes, list[tuple[float, float]]]:
    """Per key, every (previous, next) completion pair of its successful writes."""
    by_key: dict[bytes, list[float]] = {}
    for o in ops:
        if o.is_write and o.status == "ok" and o.complete_t is not None:
            by_key.setdefault(o.key, []).append(o.complete_t)
    out = {}
    for key, times in by_key.items():
        times.sort()
        out[key] = list(zip(times, times[1:]))
    return out


def _alone(wins: Sequence[FaultWindow], rg: frozenset[str] | None, a: float, b: float
           ) -> FaultWindow | None:
    """The one fault that overlaps [a, b] and touches the key, if exactly one does."""
    found = [w for w in wins if w.overlaps(a, b) and w.touches(rg)]
    return found[0] if len(found) == 1 else None


def single_fault_costs(ops: Sequence[Op], wins: Sequence[FaultWindow],
                       members: Mapping[bytes, frozenset[str]]) -> list[SingleFaultCost]:
    """The cost of each fault that was, for at least one write gap, the only fault on
    that key (faults never alone on any key are left out: nothing can be said of them)."""
    gap_of: dict[int, float] = {}
    for key, gaps in write_gaps(ops).items():
        rg = members.get(key)
        for a, b in gaps:
            w = _alone(wins, rg, a, b)
            if w is not None:
                gap_of[w.index] = max(gap_of.get(w.index, 0.0), b - a)
    reads: dict[int, list[float]] = {}
    for o in ops:
        if o.kind == "get" and o.status == "ok" and o.complete_t is not None:
            w = _alone(wins, members.get(o.key), o.invoke_t, o.complete_t)
            if w is not None:
                reads.setdefault(w.index, []).append(o.complete_t - o.invoke_t)
    return [SingleFaultCost(w, gap_of[w.index], _p99(reads.get(w.index, [])))
            for w in wins if w.index in gap_of]


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    values.sort()
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def summary_by_kind(costs: Sequence[SingleFaultCost]) -> dict[str, dict[str, float]]:
    """Per fault kind: how many faults were measured alone, the median and longest
    write gap (ms), and the worst p99 of the gets during one (ms)."""
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
