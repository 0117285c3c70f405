"""Client processes of the simulation: a ``DDSClient`` plus its history recorder.

Each :class:`ClientProcess` runs one operation at a time (a process is sequential), records
its invocation and completion on the simulated clock, and maps the library's answers onto
the checker's statuses by the library's own contract (DESIGN §4): a value or a new version
is ``ok``; ``Indeterminate`` (or no answer before the run ended) is ``indeterminate``; every
other ``DDSError`` means the operation had no effect and is ``fail`` (``Exists`` and
``VersionMismatch`` also say something about the key, which the checker uses).  Taking the
library at its word is the point: a ``Timeout`` on a write that did happen shows up as a
violation.

:meth:`ClientProcess.loop` is the random workload: get / put / create / compare_and_put /
remove over a few keys, unique values, think time between operations, all drawn from the
process's own workload RNG and timed by its own reactor (so a frozen client stops issuing).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

from dds.errors import DDSError, Indeterminate
from dds.lib.bounded import Bounded
from dds.lib.client import DDSClient, GetResult

from tests.sim.nodes import NodeReactor
from tests.verify.history import HistoryRecorder, OpKind

__all__ = ["ClientProcess", "OP_WEIGHTS", "sleep"]

#: Relative frequency of each operation kind in the random workload.
OP_WEIGHTS: dict[OpKind, int] = {"get": 35, "put": 20, "create": 10, "cas": 20,
                                 "remove": 15, "bget": 10}
#: The bound of the workload's bounded-staleness reads (``bget``).
BOUND_S = 0.5
_KINDS: list[OpKind] = list(OP_WEIGHTS)
_WEIGHTS = list(OP_WEIGHTS.values())


def sleep(reactor: NodeReactor, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class ClientProcess:
    """One client process: ``client`` (a DDSClient on ``reactor``) and its history."""

    def __init__(self, index: int, client: DDSClient, reactor: NodeReactor,
                 keys: Sequence[bytes], rng: random.Random) -> None:
        self.index = index
        self.name = client.node_id
        self.client = client
        self.reactor = reactor
        self.keys = list(keys)
        self.rng = rng
        self.history = HistoryRecorder(index, clock=reactor.seconds)
        #: Last version this process saw per key (for compare_and_put's expectation).
        self.seen: dict[bytes, int] = {}
        self.busy = False
        self.stopping = False
        self.done: Deferred[None] | None = None
        self.unexpected: list[str] = []
        self._counter = 0

    def value(self) -> bytes:
        """A value no other operation of the run writes."""
        self._counter += 1
        return f"{self.name}-{self._counter}".encode()

    # -- one operation -------------------------------------------------------------------

    def choose(self) -> tuple[OpKind, bytes]:
        return self.rng.choices(_KINDS, _WEIGHTS)[0], self.rng.choice(self.keys)

    def expectation(self, key: bytes) -> int:
        """compare_and_put's expected version: mostly the last one seen, sometimes off."""
        seen = self.seen.get(key, 0)
        return max(0, seen + self.rng.choice((0, 0, 0, 0, 1, -1)))

    def start(self, kind: OpKind, key: bytes,
              expected: int | None = None) -> Deferred[None]:
        """Invoke one operation (the process must be idle); the Deferred fires once it
        completed and was recorded."""
        if self.busy:
            raise RuntimeError(f"{self.name} is already running an operation")
        self.busy = True
        value = None if kind in ("get", "remove", "bget") else self.value()
        if kind == "cas" and expected is None:
            expected = self.expectation(key)
        handle = self.history.invoke(kind, key, value,
                                     expected if kind == "cas" else
                                     int(BOUND_S * 1000) if kind == "bget" else None)
        c = self.client
        d: Deferred[Any]
        if kind == "get":
            d = c.get(key)
        elif kind == "bget":
            d = c.get(key, consistency=Bounded(BOUND_S))
        elif kind == "put":
            assert value is not None
            d = c.put(key, value)
        elif kind == "create":
            assert value is not None
            d = c.create(key, value)
        elif kind == "cas":
            assert value is not None and expected is not None
            d = c.compare_and_put(key, value, expected)
        else:
            d = c.remove(key)
        d.addCallbacks(self._ok, self._failed, callbackArgs=(handle, key),
                       errbackArgs=(handle,))
        return d

    def _ok(self, result: Any, handle: int, key: bytes) -> None:
        self.busy = False
        if isinstance(result, GetResult):
            self.seen[key] = result.version
            self.history.complete(handle, "ok", result.value, result.version)
        else:
            self.seen[key] = int(result)
            self.history.complete(handle, "ok", None, int(result))

    def _failed(self, failure: Any, handle: int) -> None:
        self.busy = False
        error = failure.value
        if isinstance(error, Indeterminate):
            self.history.complete(handle, "indeterminate", error=error.code)
        elif isinstance(error, DDSError):
            self.history.complete(handle, "fail", error=error.code)
        else:
            # Not a DDSError: the library broke its own contract.  Say so, and since
            # nothing is known about the effect, count the operation as indeterminate.
            self.unexpected.append(f"{self.name}: {failure.getTraceback()}")
            self.history.complete(handle, "indeterminate", error=repr(error))

    # -- the random workload -------------------------------------------------------------

    def loop(self, think: float) -> Deferred[None]:
        """Run random operations until :attr:`stopping`; ``think`` bounds the pause before
        each one."""
        async def run() -> None:
            while True:
                await sleep(self.reactor, self.rng.uniform(0, think))
                if self.stopping:
                    return
                kind, key = self.choose()
                await self.start(kind, key)
        self.done = Deferred.fromCoroutine(run())
        return self.done

    def ops(self) -> list[Any]:
        return self.history.ops()

