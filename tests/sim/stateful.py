"""Hypothesis drives the simulation: operations, time and faults as rules.

``SimMachine`` is a ``RuleBasedStateMachine`` over one :class:`Simulation` without its
random workload and nemesis: hypothesis chooses every step -- which client starts which
operation on which key, how much simulated time passes, which link slows down, which
connection breaks, which nodes are partitioned, paused or stalled, when the network heals.
The teardown heals everything, lets the clients finish, reads every key back and checks
the history (linearizability, lost writes, replica agreement); a violation fails the
example, and hypothesis shrinks it to a short sequence of steps.

Every step is deterministic (simulated time, seeded RNGs), so the printed steps (or the
``@reproduce_failure`` blob) replay a failing example exactly.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import cast

from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from tests.sim.simulation import SimConfig, SimResult, Simulation, data_root, report
from tests.verify.history import KINDS, OpKind

__all__ = ["CrashMachine", "SimMachine"]

_NODE = st.integers(0, 8)          # an index into bricks + clients, modulo their number


class SimMachine(RuleBasedStateMachine):
    #: Whether bricks may crash (``CrashMachine``).
    crashes = False

    def __init__(self) -> None:
        super().__init__()
        self.sim: Simulation | None = None
        self.dir: str | None = None

    @property
    def s(self) -> Simulation:
        assert self.sim is not None
        return self.sim

    def _nodes(self) -> list[str]:
        return [b.id for b in self.s.world.bricks] + [p.name for p in self.s.procs]

    def _node(self, i: int) -> str:
        nodes = self._nodes()
        return nodes[i % len(nodes)]

    def _fault(self, kind: str, text: str) -> None:
        """Count and log a fault as the nemesis does (for the result and its report)."""
        self.s.nemesis.counts[kind] += 1
        self.s.nemesis.log.append((self.s.now, text))

    @initialize(seed=st.integers(0, 2**16), topology=st.integers(0, 2),
                clients=st.integers(2, 4))
    def setup(self, seed: int, topology: int, clients: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="dds-sim-hyp-", dir=data_root())
        self.sim = Simulation(SimConfig(seed=seed, topology=topology, clients=clients,
                                        faults=()), Path(self.dir))

    # -- the workload --------------------------------------------------------------------

    @rule(ops=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(sorted(KINDS)),
                                 st.integers(0, 3)), min_size=1, max_size=4))
    def invoke(self, ops: list[tuple[int, str, int]]) -> None:
        """Start operations ``(client, kind, key)``, each on a client that is idle and
        running (the others are skipped: a client process runs one operation at a time)."""
        for client, kind, key in ops:
            p = self.s.procs[client % len(self.s.procs)]
            if not p.busy and not self.s.world.frozen(p.name):
                p.start(cast(OpKind, kind), self.s.keys[key % len(self.s.keys)])

    @rule(seconds=st.sampled_from([0.0, 0.002, 0.01, 0.05, 0.2, 1.0, 3.0]))
    def advance(self, seconds: float) -> None:
        assert self.s.advance(seconds), self.s.violations[-1]

    # -- faults --------------------------------------------------------------------------

    @rule(a=_NODE, b=_NODE, extra=st.sampled_from([0.0, 0.02, 0.5, 2.5]))
    def slow_link(self, a: int, b: int, extra: float) -> None:
        x, y = self._node(a), self._node(b)
        if x != y:
            self.s.world.net.set_delay(x, y, extra)
            self._fault("delay", f"delay {x}<->{y} +{extra * 1000:.0f}ms")

    @rule(index=st.integers(0, 63))
    def cut(self, index: int) -> None:
        conns = self.s.world.net.connections
        if conns:
            conn = conns[index % len(conns)]
            self.s.world.net.cut(conn)
            self._fault("cut", f"cut {conn.names[0]}->{conn.names[1]}")

    @rule(bricks=st.integers(0, 31), clients=st.integers(0, 15))
    def partition(self, bricks: int, clients: int) -> None:
        """Cut the bricks and clients whose bit is set off from the others."""
        w = self.s.world
        side = [b.id for i, b in enumerate(w.bricks) if bricks >> i & 1]
        side += [p.name for i, p in enumerate(self.s.procs) if clients >> i & 1]
        rest = [n for n in self._nodes() if n not in side]
        if side and rest:
            w.net.partition(side, rest)
            self._fault("partition", f"partition {sorted(side)} | {sorted(rest)}")

    @rule()
    def heal_network(self) -> None:
        self.s.world.net.heal()
        self.s.world.net.clear_delays()
        self.s.nemesis.log.append((self.s.now, "heal network"))

    @rule(node=_NODE)
    def pause_or_resume(self, node: int) -> None:
        """Stop a brick or client process (``kill -STOP``), or resume a stopped one."""
        w, name = self.s.world, self._node(node)
        if w.frozen(name):
            w.thaw(name)
            self.s.nemesis.log.append((self.s.now, f"end pause {name}"))
        elif name not in w.stalled and w.alive(name):
            w.freeze(name)
            self._fault("pause", f"pause {name}")

    @rule(brick=st.integers(0, 4))
    def stall_or_unstall(self, brick: int) -> None:
        """A brick stops reading (its timers run on), or reads again."""
        w = self.s.world
        name = w.bricks[brick % len(w.bricks)].id
        if name in w.stalled:
            w.unstall(name)
            self.s.nemesis.log.append((self.s.now, f"end stall {name}"))
        elif not w.frozen(name) and w.alive(name):
            w.stall(name)
            self._fault("stall", f"stall {name}")

    @precondition(lambda self: self.crashes)
    @rule(brick=st.integers(0, 4))
    def crash_or_restart(self, brick: int) -> None:
        """Kill a brick (``kill -9``) or restart a dead one.  Only with ``crashes``: off
        until leases and recovery exist (issue 3)."""
        w = self.s.world
        name = w.bricks[brick % len(w.bricks)].id
        if not w.alive(name):
            w.restart(name)
            self.s.nemesis.log.append((self.s.now, f"restart {name}"))
        elif not w.frozen(name) and name not in w.stalled:
            w.kill(name)
            self._fault("crash", f"crash {name}")

    # -- checks --------------------------------------------------------------------------

    @invariant()
    def nothing_raised(self) -> None:
        if self.sim is not None:
            assert not self.sim.world.net.errors, self.sim.world.net.errors[0]

    def teardown(self) -> None:
        try:
            if self.sim is not None:
                self.sim.finish()
                result: SimResult = self.sim.result()
                result.replay = "the steps of the falsifying example (or its blob)"
                assert result.ok, report(result, verbose=True)
        finally:
            if self.sim is not None:
                self.sim.close()
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)


class CrashMachine(SimMachine):
    """:class:`SimMachine` with brick crashes and restarts: fails until issue 3."""

    crashes = True
