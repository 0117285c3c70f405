"""A ``BrickContext`` for unit tests of one brick component: real storage, participant and
map from the test, a thread runner that runs the work at once unless given one."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime

from dds.metrics import Metrics
from dds.rpc import RPCProtocol

from dds.bricks.context import BrickContext, RunInThread
from dds.bricks.mapstate import MapState
from dds.bricks.participant import Participant
from dds.bricks.partstore import Durability
from dds.bricks.storage import Storage


def inline(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


async def no_peers(brick_id: str) -> RPCProtocol:
    raise AssertionError(f"this test calls no other brick (asked for {brick_id})")


def brick_context(data_dir: Path, clock: IReactorTime, storage: Storage,
                  participant: Participant, metrics: Metrics, *, brick_id: str = "b1",
                  maps: MapState | None = None, run_in_thread: RunInThread = inline,
                  rng: random.Random | None = None,
                  durability: Durability = "disk") -> BrickContext:
    return BrickContext(
        id=brick_id, clock=clock, metrics=metrics,
        maps=maps if maps is not None else MapState(brick_id, data_dir, metrics),
        storage=storage, participant=participant, peer=no_peers,
        run_in_thread=run_in_thread,
        rng=rng if rng is not None else random.Random(0), durability=durability,
        data_dir=data_dir)
