"""A cluster of simulated processes: bricks and clients, each with its own reactor and RNG.

``SimWorld`` is a :class:`tests.sim.network.SimCluster` in which every process (brick or
client) runs on its own :class:`tests.sim.nodes.NodeReactor` over the shared clock and
draws its randomness from its own RNG, derived from the world's seed and the process's
name and incarnation.  So one seed fixes everything, and each process can be stopped
(:meth:`SimWorld.freeze`), killed (:meth:`SimWorld.kill`) and restarted on its own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dds.bricks.server import Brick
from dds.lib.client import DDSClient

from tests.sim.network import BASE_PORT, SimCluster
from tests.sim.nodes import NodeReactor

__all__ = ["SimWorld", "derived_rng"]


def derived_rng(seed: int, *parts: object) -> random.Random:
    """An RNG for one purpose of one run: seeded by text (hashed with SHA-512 by
    ``random``), so it does not depend on ``PYTHONHASHSEED`` or on the order of creation."""
    return random.Random("/".join([str(seed), *map(str, parts)]))


class SimWorld(SimCluster):
    """Bricks ``b0``… and clients, each on its own :class:`NodeReactor`.

    ``seed`` derives the network's RNG (jitter), each brick's RNG (gossip peers) and each
    client's RNG (library id, replica choice, backoff).  ``gossip`` starts the bricks' map
    gossip.  Killed bricks are restarted on the same data directory (:meth:`restart`):
    committed data survives (``disk`` durability), prepared transactions and locks do not.
    """

    def __init__(self, data_dir: Path, n: int = 3, *, seed: int = 0,
                 rgs: Sequence[Sequence[int]] | None = None, partitions: int = 4,
                 config: dict[str, dict[str, Any]] | None = None, latency: float = 0.0,
                 jitter: float = 0.0, gossip: bool = False,
                 client_timeout: float = 2.0) -> None:
        self.seed = seed
        self.reactors: dict[str, NodeReactor] = {}
        self.incarnation: dict[str, int] = {}
        self.dead: set[str] = set()
        self.stalled: set[str] = set()
        self.client_timeout = client_timeout
        self._thaw_rng = derived_rng(seed, "thaw")
        self.gossip = gossip
        super().__init__(data_dir, n, rgs=rgs, partitions=partitions, config=config,
                         latency=latency, jitter=jitter, gossip=False)
        self.net.rng = derived_rng(seed, "network")
        if gossip:
            for b in self.bricks:
                b.start()

    # -- processes -----------------------------------------------------------------------

    def _reactor(self, name: str) -> NodeReactor:
        self.incarnation[name] = self.incarnation.get(name, -1) + 1
        reactor = self.reactors[name] = NodeReactor(self.clock, name)
        return reactor

    def add_brick(self, i: int) -> Brick:
        name = f"b{i}"
        reactor = self._reactor(name)
        brick = Brick(self.brick_config(i), reactor, opener=self.net.opener(),
                      rng=derived_rng(self.seed, name, self.incarnation[name]))
        self.net.listen("127.0.0.1", BASE_PORT + i, brick.factory(), name=brick.id)
        brick.leases.start()        # without gossip too: no lease, no service (§6)
        return brick

    def new_client(self, name: str, **options: Any) -> DDSClient:
        """A ``DDSClient`` process ``name`` (not started: run ``client.start()``)."""
        options.setdefault("timeout", self.client_timeout)
        options.setdefault("metrics_registry", None)   # its own counts, as a process's
        reactor = self._reactor(name)
        client = DDSClient(reactor, self.seeds(), cluster=self.name,
                           secret=self.secret.encode(), node_id=name,
                           opener=self.net.opener(),
                           rng=derived_rng(self.seed, name, self.incarnation[name]),
                           **options)
        self.clients.append(client)
        return client

    def alive(self, name: str) -> bool:
        return name not in self.dead

    def frozen(self, name: str) -> bool:
        return self.reactors[name].frozen

    # -- faults --------------------------------------------------------------------------

    def freeze(self, name: str) -> None:
        """``kill -STOP``: nothing of process ``name`` runs (no timer, no delivery, no
        accepted or lost connection) until :meth:`thaw`; time goes on."""
        self.net.pause(name, stop_process=True)
        self.reactors[name].freeze()

    def thaw(self, name: str, io_first: bool | None = None) -> None:
        """``kill -CONT``.  A reactor stopped in its poll reads first and runs its due
        timers after; one stopped while running timers runs them first.  Which of the two
        (``io_first``) is drawn from the world's RNG unless given.  Either way the held
        bytes and connection events arrive in order, and the held timers run in order."""
        if io_first is None:
            io_first = self._thaw_rng.random() < 0.5
        self.net.resume(name)
        if io_first:
            self.net.flush()        # its timers are still held: bytes first
        self.reactors[name].thaw()

    def stall(self, name: str) -> None:
        """Hold what is sent to ``name`` while its timers go on running (a process whose
        reading is stuck, not a stopped one)."""
        self.stalled.add(name)
        self.net.pause(name)

    def unstall(self, name: str) -> None:
        self.stalled.discard(name)
        self.net.resume(name)

    def heal_everything(self) -> None:
        """End every fault: partitions, slow links, stalls and pauses; restart the dead."""
        self.net.heal()
        self.net.clear_delays()
        for name in sorted(self.stalled):
            self.unstall(name)
        for name, reactor in list(self.reactors.items()):
            if reactor.frozen:
                self.thaw(name)
        for name in sorted(self.dead):
            self.restart(name)

    def kill(self, brick_id: str) -> None:
        """``kill -9`` of a brick: timers gone, connections broken, SQLite files closed
        without committing the batch in progress (its writes were not acknowledged)."""
        brick = self.brick(brick_id)
        self.reactors[brick_id].kill()
        self.net.kill(brick_id)
        for store in brick.storage._stores.values():
            if not store.closed:
                store.closed = True
                store._conn.close()
        brick.storage._stores.clear()
        self.dead.add(brick_id)
        if brick not in self._stopped:
            self._stopped.append(brick)

    def restart(self, brick_id: str) -> Brick:
        """Start a new incarnation of a killed brick on its data directory."""
        i = next(j for j, b in enumerate(self.bricks) if b.id == brick_id)
        self.net.revive(brick_id)
        self.dead.discard(brick_id)
        brick = self.bricks[i] = self.add_brick(i)
        if self.gossip:
            brick.start()
        return brick

    # -- the end -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Close every brick's files at once (no more simulation: a run is over)."""
        for b in self.bricks:
            if b not in self._stopped:
                self._stopped.append(b)
                self.reactors[b.id].kill()
                b.storage.close()
        self.clients = []
