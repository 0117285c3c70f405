"""One writer process of ``bench recovery`` and ``bench move``: ``--clients``
``DDSClient``\\ s, each doing sequential puts of random preloaded keys, every put's end
and latency logged (:class:`~dds.tools.bench.measure.PutLog`).

    python -m dds.tools.bench.writerproc [--pid P] --seeds H:P,... --clients N ...

Prints ``{"event": "ready"}`` once connected, then reads commands, one JSON line each:
``{"cmd": "go"}`` starts the puts; ``{"cmd": "stop", "windows": {name: [a, b]}}`` stops
them and reports each window (:func:`~dds.tools.bench.measure.window_report`) in a
``done`` event; ``{"cmd": "quit"}`` (or the end of stdin) ends the process.  With
``--pid`` every key is one of that partition
(:func:`~dds.tools.bench.preload.partition_key`).  The client secret comes from
DDS_CLIENT_SECRET.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

from dds.tools.bench.jsonlines import emit, next_command
from dds.tools.bench.measure import PutLog, window_report
from dds.tools.bench.preload import key_of, partition_key

__all__ = ["Writer", "main"]


class Writer:
    """One client's sequential puts of random keys (``key(i)``, ``i`` below ``keys``)."""

    def __init__(self, client: Any, rng: random.Random, keys: int, value: bytes,
                 key: Callable[[int], bytes]) -> None:
        self.client = client
        self.rng = rng
        self.keys = keys
        self.value = value
        self.key = key
        self.log = PutLog()
        self.first_error = ""

    async def loop(self, running: list[bool]) -> None:
        from dds.errors import DDSError
        clock = time.monotonic
        log = self.log
        log.started = clock()
        while running[0]:
            key = self.key(self.rng.randrange(self.keys))
            t0 = clock()
            try:
                await self.client.put(key, self.value)
            except DDSError as e:
                log.errors.append((clock(), e.code))
                self.first_error = self.first_error or f"{e.code}: {e.message}"
                continue
            t1 = clock()
            log.ended.append(t1)
            log.lat.append(t1 - t0)
        log.stopped = clock()


async def _work(reactor: Any, args: argparse.Namespace) -> None:
    from twisted.internet.defer import Deferred, DeferredList

    from dds.lib import DDSClient
    from dds.partition import PartitionId

    pid = PartitionId.parse(args.pid) if args.pid else None
    key: Callable[[int], bytes] = key_of if pid is None else (
        lambda i: partition_key(i, pid))
    secret = os.environ["DDS_CLIENT_SECRET"].encode()
    clients = [await DDSClient.connect(reactor, seeds=args.seeds.split(","),
                                       cluster=args.cluster, secret=secret, timeout=120.0,
                                       node_id=f"bench-recovery-{args.index}-{n}-{os.getpid()}")
               for n in range(args.clients)]
    writers = [Writer(c, random.Random(os.urandom(8)), args.keys,
                      os.urandom(args.value_bytes), key) for c in clients]
    running = [False]
    loops: Any = None
    emit(event="ready")
    try:
        while (cmd := await next_command()) is not None:
            if cmd["cmd"] == "go":
                running[0] = True
                loops = DeferredList([Deferred.fromCoroutine(w.loop(running))
                                      for w in writers], consumeErrors=True)
            elif cmd["cmd"] == "stop":
                running[0] = False
                results = await loops if loops is not None else []
                crashed = [f.getErrorMessage() for ok, f in results if not ok]
                logs = [w.log for w in writers]
                out = {name: window_report(logs, a, b,
                                           extend=not name.startswith("baseline"))
                       for name, (a, b) in cmd["windows"].items()}
                # The process's clients count in one registry (the global one).
                counters = {k: v for k, v in clients[0].metrics.counters.items()
                            if v} if clients else {}
                emit(event="done", windows=out, crashed=crashed, counters=counters,
                      puts=sum(len(w.log.ended) for w in writers),
                      first_error=next((w.first_error for w in writers if w.first_error),
                                       ""))
            elif cmd["cmd"] == "quit":
                return
    finally:
        running[0] = False
        for c in clients:
            await c.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dds.tools.bench.writerproc",
                                description="writer clients driven by `dds-admin bench "
                                            "recovery` and `dds-admin bench move`")
    p.add_argument("--pid", default=None, help="write only keys of this partition")
    p.add_argument("--seeds", required=True)
    p.add_argument("--cluster", default="dds")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--value-bytes", type=int, default=100)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # the parent stops us; no traceback
    from twisted.internet import task
    from twisted.internet.defer import Deferred
    task.react(lambda reactor: Deferred.fromCoroutine(_work(reactor, args)))


if __name__ == "__main__":
    main()
