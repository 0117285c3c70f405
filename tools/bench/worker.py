"""One bench load process: its own reactor and ``DDSClient``, driven by ``dds-admin bench``.

    python -m dds.tools.bench.worker --seeds H:P,... --index I --clients N --concurrency C ...

The client's credentials come from the cluster directory (``--dir``) or DDS_CLIENT_SECRET
(never on the command line).  The worker connects,
prints ``{"event": "ready"}``, then runs one phase per line read from stdin:

    {"phase": "load"}                  put this worker's share of the keys once
    {"phase": "put", "seconds": S}     uniform random puts for S seconds
                                       (optional: "mode": "ack" for the acknowledged
                                       commit mode, "concurrency": N in flight)
    {"phase": "get", "seconds": S}     uniform random gets for S seconds
    {"phase": "cas", "seconds": S, "keys": K}
                                       increments of K counters by get + compare_and_put,
                                       again on a conflict (optional: "mode": "ack");
                                       the result adds "increments" per counter and
                                       "conflicts"
    {"phase": "cas-read", "keys": K}   read the K counters: "values"
    {"phase": "quit"}

Each phase prints progress lines and ends with ``{"event": "done", "ops", "errors",
"elapsed", "lat_us": [...]}``; ``C`` operations are in flight throughout.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from dds.auth import Credentials, secret_env
from dds.errors import DDSError, VersionMismatch
from dds.lib import Bounded, DDSClient
from dds.tools import credfiles
from dds.tools.bench.jsonlines import emit, next_command
from dds.tools.bench.preload import key_of

__all__ = ["main"]


def counter_of(i: int) -> bytes:
    return b"bench-cas-%04d" % i


class Phase:
    """``concurrency`` loops, each issuing the next operation (``next_op()``) as soon as
    its previous one finished, until ``next_op()`` returns None."""

    def __init__(self, name: str, next_op: Callable[[], Deferred[Any] | None],
                 sample: Callable[[], int] | None = None) -> None:
        self.name = name
        self.next_op = next_op
        #: Read at each progress line and reported as ``samples`` (``bench --dr``: the
        #: client journal's entries).
        self.sample = sample
        self.samples: list[int] = []
        self.ops = 0
        self.errors: Counter[str] = Counter()
        self.first_error = ""
        self.lat_us: list[int] = []

    def loop(self) -> Deferred[None]:
        """One chain of operations, each started when the previous one finished; fires
        when ``next_op()`` returns None, fails if an operation fails with anything but a
        ``DDSError``.  Driven by callbacks, like the floor's client: the driver should
        cost little next to the operations it measures."""
        done: Deferred[None] = Deferred()
        self._next(done)
        return done

    def _next(self, done: Deferred[None]) -> None:
        while True:
            t0 = time.perf_counter()
            op = self.next_op()
            if op is None:
                done.callback(None)
                return
            # 0: waiting for ``op``; 1: it finished at once; 2: it will finish later;
            # 3: it failed unexpectedly (``done`` has the failure).
            state = [0]
            op.addBoth(self._finished, t0, done, state)
            if state[0] == 0:
                state[0] = 2
                return
            if state[0] == 3:
                return

    def _finished(self, result: Any, t0: float, done: Deferred[None],
                  state: list[int]) -> None:
        if isinstance(result, Failure):
            error = result.value
            if not isinstance(error, DDSError):
                state[0] = 3
                done.errback(result)
                return
            self.errors[error.code] += 1
            self.first_error = self.first_error or f"{error.code}: {error.message}"
        else:
            self.lat_us.append(int((time.perf_counter() - t0) * 1e6))
            self.ops += 1
        if state[0] == 0:
            state[0] = 1            # ``_next`` goes on with its loop
        else:
            self._next(done)

    async def run(self, reactor: Any, concurrency: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        loops = [self.loop() for _ in range(concurrency)]
        all_done = DeferredList(loops, consumeErrors=True)
        def tick() -> None:
            if self.sample is not None:
                self.samples.append(self.sample())
            emit(event="progress", phase=self.name, done=self.ops,
                 errors=sum(self.errors.values()), elapsed=time.perf_counter() - t0)
        ticker = task.LoopingCall(tick)
        ticker.clock = reactor
        ticker.start(0.2, now=False)
        results: list[tuple[bool, Any]] = await all_done
        ticker.stop()
        elapsed = time.perf_counter() - t0
        crashed = [f.getErrorMessage() for ok, f in results if not ok]
        return {"event": "done", "phase": self.name, "ops": self.ops, "elapsed": elapsed,
                "errors": dict(self.errors), "first_error": self.first_error,
                "crashed": crashed, "lat_us": self.lat_us, "samples": self.samples}


def _credentials(args: argparse.Namespace) -> Credentials:
    """The client role's: the cluster directory's files, or DDS_CLIENT_SECRET."""
    if args.dir:
        return credfiles.client_credentials(Path(args.dir), args.cluster)
    return Credentials.shared("client", os.environ[secret_env("client")])


async def work(reactor: Any, args: argparse.Namespace) -> None:
    creds = _credentials(args)
    client: DDSClient = await DDSClient.connect(
        reactor, seeds=args.seeds.split(","), cluster=args.cluster,
        credentials=creds, node_id=f"bench-{args.index}-{os.getpid()}")
    # The acknowledged commit mode, for the phases that compare it with parallel commit.
    ack_client: DDSClient = await DDSClient.connect(
        reactor, seeds=args.seeds.split(","), cluster=args.cluster, commit_mode="ack",
        credentials=creds, node_id=f"bench-{args.index}-{os.getpid()}-ack")
    rng = random.Random(args.index * 7919 + os.getpid())
    value = os.urandom(args.value_size)
    emit(event="ready")
    try:
        while (cmd := await next_command()) is not None:
            phase = cmd["phase"]
            if phase == "quit":
                return
            if phase == "cas-read":
                values = {}
                for i in range(int(cmd["keys"])):
                    got = await client.get(counter_of(i))
                    values[str(i)] = int(got.value or b"0")
                emit(event="done", phase=phase, values=values, done=len(values))
                continue
            if phase == "cas":
                emit(**await _increments(reactor, client, ack_client, rng, cmd,
                                         int(cmd.get("concurrency", args.concurrency))))
                continue
            if phase == "load":
                keys: Iterator[int] = iter(range(args.index, args.keys, args.clients))

                def load_next() -> Deferred[Any] | None:
                    i = next(keys, None)
                    return None if i is None else client.put(key_of(i), value)
                p = Phase("load", load_next)
            else:
                end = time.perf_counter() + float(cmd["seconds"])
                is_put = phase == "put"
                writer = ack_client if cmd.get("mode") == "ack" else client
                # "bget": bounded-staleness gets (DESIGN §3), within half a second.
                bound = Bounded(0.5) if phase == "bget" else None

                # Every key's name made once, and a uniform pick by ``random()`` (C)
                # rather than ``randrange`` (Python): the driver's own cost per operation
                # stays small next to what it measures.
                names = [key_of(i) for i in range(args.keys)]
                pick, n_keys = rng.random, args.keys

                def timed_next() -> Deferred[Any] | None:
                    if time.perf_counter() >= end:
                        return None
                    key = names[int(pick() * n_keys)]
                    return (writer.put(key, value) if is_put
                            else client.get(key, consistency=bound))
                p = Phase(phase, timed_next,
                          (lambda: len(writer.dr_journal)) if is_put else None)
            emit(**await p.run(reactor, int(cmd.get("concurrency", args.concurrency))))
    finally:
        await client.close()
        await ack_client.close()


async def _increments(reactor: Any, client: DDSClient, ack_client: DDSClient,
                      rng: random.Random, cmd: dict[str, Any], concurrency: int
                      ) -> dict[str, Any]:
    """Contended read-modify-write: each loop increments a random one of ``keys``
    counters (read, then compare_and_put at the version read; again on a conflict).  An
    operation is one increment, however many attempts it took."""
    end = time.perf_counter() + float(cmd["seconds"])
    n_keys = int(cmd["keys"])
    writer = ack_client if cmd.get("mode") == "ack" else client
    done: Counter[str] = Counter()
    conflicts = [0]

    async def increment(i: int) -> None:
        key = counter_of(i)
        while True:
            got = await client.get(key)
            try:
                await writer.compare_and_put(key, b"%d" % (int(got.value or b"0") + 1),
                                             got.version)
            except VersionMismatch:
                conflicts[0] += 1
                continue
            done[str(i)] += 1
            return

    def next_op() -> Deferred[Any] | None:
        if time.perf_counter() >= end:
            return None
        return Deferred.fromCoroutine(increment(int(rng.random() * n_keys)))
    result = await Phase("cas", next_op).run(reactor, concurrency)
    result.update(increments=dict(done), conflicts=conflicts[0])
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dds.tools.bench.worker")
    p.add_argument("--seeds", required=True)
    p.add_argument("--cluster", default="dds")
    p.add_argument("--dir", default=None, help="cluster directory with the client's "
                   "credentials (secrets/ or tls/); else DDS_CLIENT_SECRET")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--value-size", type=int, default=100)
    args = p.parse_args(argv)
    task.react(lambda reactor: Deferred.fromCoroutine(work(reactor, args)))


if __name__ == "__main__":
    main()
