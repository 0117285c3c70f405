"""Faults for the simulation, drawn from a seeded RNG.

Each fault starts at a random time (exponential gaps of mean ``interval`` simulated
seconds) and, unless it is instantaneous, is undone after a random duration.  Kinds:

``delay``
    A slow link: extra latency (5 ms – 3 s) on every connection between two nodes for a
    while.  Bytes keep their order per connection (TCP); across connections they reorder.
``cut``
    One open connection breaks; both ends see it (a dropped TCP connection).
``partition``
    The nodes (bricks and clients) split in two; connections across break and new ones are
    refused until it heals.  One partition at a time.
``pause``
    A brick is stopped (``kill -STOP``): no timer of it runs and nothing is delivered to
    it; when it resumes, its due timers run, then the bytes held for it, in order.
``stall``
    A brick reads nothing, but its timers run (what ``MemoryNetwork.pause`` alone does).
``pause_client``
    A client process is stopped, like ``pause``.
``crash``
    A brick is killed (``kill -9``) and restarted on its data directory.  **Off by
    default**: without membership leases and recovery (issue 3) a restarted brick has lost
    its prepared transactions and serves what it had, so the checker finds violations.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence

import attrs

from tests.sim.world import SimWorld

__all__ = ["ALL_FAULTS", "DEFAULT_FAULTS", "Fault", "Nemesis"]

ALL_FAULTS: tuple[str, ...] = ("delay", "cut", "partition", "pause", "stall",
                               "pause_client", "crash")
DEFAULT_FAULTS: tuple[str, ...] = tuple(k for k in ALL_FAULTS if k != "crash")


@attrs.define
class Fault:
    kind: str
    start: float
    end: float
    text: str
    undo: Callable[[], None] | None = None
    #: Nodes this fault holds (at most one pause/stall/crash per node at a time).
    nodes: tuple[str, ...] = ()
    #: The two ends of a slowed link.
    link: frozenset[str] = frozenset()


class Nemesis:
    """Injects faults into ``world`` among ``bricks`` and ``clients`` (node names)."""

    def __init__(self, world: SimWorld, bricks: Sequence[str], clients: Sequence[str],
                 rng: random.Random, kinds: Sequence[str] = DEFAULT_FAULTS,
                 interval: float = 1.0, max_duration: float = 5.0) -> None:
        unknown = set(kinds) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {ALL_FAULTS}")
        self.world = world
        self.bricks = list(bricks)
        self.clients = list(clients)
        self.rng = rng
        self.kinds = list(kinds)
        self.interval = interval
        self.max_duration = max_duration
        self.active: list[Fault] = []
        self.counts: Counter[str] = Counter()
        #: (simulated time, what happened), for replaying a seed by eye.
        self.log: list[tuple[float, str]] = []
        self.next_at = self._gap(world.clock.seconds())

    @property
    def injected(self) -> int:
        return sum(self.counts.values())

    def _gap(self, now: float) -> float:
        return now + self.rng.expovariate(1.0 / self.interval) if self.kinds else float("inf")

    def _duration(self) -> float:
        return self.rng.uniform(0.1, self.max_duration)

    def due(self) -> float:
        """When :meth:`step` next has something to do."""
        return min([self.next_at, *(f.end for f in self.active)])

    def step(self) -> None:
        """Undo the faults whose time is up, then inject the next one if it is due."""
        now = self.world.clock.seconds()
        for fault in [f for f in self.active if f.end <= now]:
            self._undo(fault)
        if self.next_at <= now:
            kind = self.rng.choice(self.kinds)
            self.inject(kind)
            self.next_at = self._gap(now)

    def _undo(self, fault: Fault) -> None:
        self.active.remove(fault)
        if fault.undo is not None:
            fault.undo()
        self.log.append((self.world.clock.seconds(), f"end {fault.text}"))

    def heal_all(self) -> None:
        """Undo every active fault (in the order they started) and stop injecting."""
        for fault in list(self.active):
            self._undo(fault)
        self.world.net.heal()
        self.next_at = float("inf")

    # -- kinds ---------------------------------------------------------------------------

    def _busy(self) -> set[str]:
        return {n for f in self.active for n in f.nodes}

    def inject(self, kind: str) -> bool:
        """Inject one fault of ``kind`` now; False if none applies at the moment."""
        w = self.world
        now = w.clock.seconds()
        busy = self._busy()
        rng = self.rng
        fault: Fault | None = None
        if kind == "delay":
            a = rng.choice(self.bricks)
            b = rng.choice([n for n in self.bricks + self.clients if n != a])
            if any(f.link == {a, b} for f in self.active):
                return False
            extra = rng.choice((rng.uniform(0.005, 0.05), rng.uniform(0.2, 3.0)))
            w.net.set_delay(a, b, extra)
            fault = Fault(kind, now, now + self._duration(),
                          f"delay {a}<->{b} +{extra * 1000:.0f}ms",
                          lambda: w.net.set_delay(a, b, 0.0), link=frozenset((a, b)))
        elif kind == "cut":
            conns = list(w.net.connections)
            if not conns:
                return False
            conn = rng.choice(conns)
            w.net.cut(conn)
            fault = Fault(kind, now, now, f"cut {conn.names[0]}->{conn.names[1]}")
        elif kind == "partition":
            if any(f.kind == "partition" for f in self.active):
                return False
            side = rng.sample(self.bricks, rng.randint(1, len(self.bricks) - 1))
            side += [c for c in self.clients if rng.random() < 0.5]
            rest = [n for n in self.bricks + self.clients if n not in side]
            w.net.partition(side, rest)
            fault = Fault(kind, now, now + self._duration(),
                          f"partition {sorted(side)} | {sorted(rest)}", w.net.heal)
        elif kind in ("pause", "stall", "crash", "pause_client"):
            pool = self.clients if kind == "pause_client" else self.bricks
            free = [n for n in pool if n not in busy]
            if kind == "crash" and any(f.kind == "crash" for f in self.active):
                return False        # one brick down at a time
            if not free:
                return False
            node = rng.choice(free)
            if kind in ("pause", "pause_client"):
                w.freeze(node)
                undo: Callable[[], None] = lambda: w.thaw(node)
            elif kind == "stall":
                w.stall(node)
                undo = lambda: w.unstall(node)
            else:
                w.kill(node)
                undo = lambda: self._restart(node)
            fault = Fault(kind, now, now + self._duration(), f"{kind} {node}", undo,
                          (node,))
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.counts[kind] += 1
        self.log.append((now, fault.text))
        if fault.end > now:
            self.active.append(fault)
        return True

    def _restart(self, node: str) -> None:
        self.world.restart(node)
