"""What the brick's components share (``Brick`` is the composition root): one frozen
context handed to each, instead of the same eight or ten collaborators passed
positionally in a different order to each constructor.

A component keeps what it needs of it as attributes of its own (``self.clock = ctx.clock``)
so a unit test may still replace one (a thread runner that holds work, say).  The
context holds no component that needs the context itself: those are wired by ``Brick``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import attrs
from twisted.internet import threads
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime

from dds.errors import UnknownTransaction
from dds.metrics import Metrics
from dds.rpc import RPCProtocol

from dds.bricks.partstore import Durability

if TYPE_CHECKING:
    from dds.connect import ConnectionCache

    from dds.bricks.mapstate import MapState
    from dds.bricks.participant import Participant
    from dds.bricks.storage import Storage

#: A connection to another brick, by id (its address from the brick's map).
Peer = Callable[[str], Awaitable[RPCProtocol]]
#: ``run_in_thread(f, *args)``: run ``f(*args)`` off the reactor thread; the Deferred fires
#: with its result on the reactor thread.
RunInThread = Callable[..., "Deferred[Any]"]


@attrs.frozen
class BrickContext:
    id: str
    clock: IReactorTime
    metrics: Metrics
    maps: MapState
    storage: Storage
    participant: Participant
    peer: Peer
    run_in_thread: RunInThread
    rng: random.Random
    #: ``memory``, ``disk`` or ``fsync`` (DESIGN §4); see ``fsyncs``.
    durability: Durability
    data_dir: Path

    @property
    def fsyncs(self) -> bool:
        """Whether files are fsynced: the data, received copies, the map, the record
        locks and the journal are as durable as the brick's mode says (DESIGN §4)."""
        return fsyncs(self.durability)


def fsyncs(durability: Durability) -> bool:
    """Whether a brick of this durability fsyncs what it writes (only ``fsync`` does)."""
    return durability == "fsync"


def thread_runner(reactor: Any) -> RunInThread:
    """Blocking file work (snapshots) off the reactor thread, in its thread pool; inline
    on a reactor without threads (the deterministic simulation)."""
    def run(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        pool = getattr(reactor, "getThreadPool", None)
        if pool is None:
            return maybeDeferred(f, *args)
        return threads.deferToThreadPool(reactor, pool(), f, *args)
    return run


def peer_caller(maps: MapState, connections: ConnectionCache) -> Peer:
    """A connection to another brick by id, at the address the map gives it."""
    async def peer(brick_id: str) -> RPCProtocol:
        rec = maps.map.bricks.get(brick_id)
        if rec is None:
            raise UnknownTransaction(f"no address for brick {brick_id}")
        return await connections.get(rec.address, rec.port)
    return peer


__all__ = ["BrickContext", "Peer", "RunInThread", "fsyncs", "peer_caller", "thread_runner"]
