"""Helpers for the failure tests (``tests/integration/test_failures.py`` and
``test_lease_proof.py``): clusters with any ``[timeouts]``, writer clients that record
what was acknowledged, a fast preload of a partition file, and non-blocking restarts.

Waiting is always a condition with a deadline (:func:`tests.harness.aio.eventually`).
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
from dds.lib import DDSClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList

from dds.errors import DDSError
from tests.harness.aio import call, eventually, register_background
from tests.harness.cluster import Cluster
from tests.harness.processes import BrickProcess
from tests.verify.history import HistoryRecorder, Op


def make_cluster(root: Path, *, timeouts: dict[str, int] | None = None,
                 **kw: Any) -> Cluster:
    """A ``Cluster`` (not started) whose bricks get every setting of ``timeouts``."""
    return Cluster(root, timeout_settings=timeouts, **kw)


def preload(cluster: Cluster, pid: str, keys: int, value_bytes: int = 100) -> int:
    """Write ``keys`` rows (``key_of(i)``, version 1) into ``pid``'s file on every brick,
    before the bricks start: ``dds-admin bench recovery``'s fast path.  Returns the size
    of one file."""
    import shutil

    from dds.tools.bench.preload import preload_partition

    path = cluster.root / f"preload-{pid}.sqlite"
    size = preload_partition(path, pid, keys, value_bytes)
    for b in cluster.bricks:
        b.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, b.data_dir / f"{pid}.sqlite")
    path.unlink()
    return size


def key_of(i: int) -> bytes:
    from dds.tools.bench.preload import key_of as bench_key
    return bench_key(i)


async def restart(cluster: Cluster, brick: BrickProcess, timeout: float = 30.0) -> None:
    """Start ``brick`` again and wait for its ready file without blocking the reactor
    (``BrickProcess.wait_ready`` sleeps on the reactor thread, which would stall the
    writers)."""
    brick.start()
    ready = brick.data_dir / "ready.json"

    async def is_ready() -> bool:
        if not brick.alive():
            raise RuntimeError(f"brick {brick.id} exited; log:\n{brick.log_tail()}")
        return ready.exists()
    await eventually(is_ready, timeout, f"brick {brick.id} to start")


async def nothing_prepared(cluster: Cluster, bricks: list[BrickProcess]) -> bool:
    for b in bricks:
        status = await call(cluster, b, "status", {})
        if status["prepared"] or status["metrics"].get("locks_held"):
            return False
    return True


async def checksums(cluster: Cluster, bricks: list[BrickProcess], pid: str) -> dict[str, int]:
    return {b.id: (await call(cluster, b, "checksum", {"pid": pid}))["checksum"]
            for b in bricks}


@attrs.frozen
class Ack:
    writer: int
    key: bytes
    value: bytes
    version: int
    t: float        # time.monotonic() at completion
    wall: float     # time.time() at completion (comparable with brick log lines)


class Writers:
    """``n`` ``DDSClient``\\ s on the test reactor, each doing sequential puts of unique
    values to random keys of ``keys``.  Every operation goes into a
    :class:`HistoryRecorder` (an error is recorded *indeterminate*: the checkers then
    allow it to have happened or not); every acknowledged put is an :class:`Ack`."""

    def __init__(self, cluster: Cluster, keys: list[bytes], n: int = 8,
                 timeout: float = 10.0, seed: int = 1) -> None:
        self.cluster = cluster
        self.keys = keys
        self.n = n
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.clients: list[DDSClient] = []
        self.recorders = [HistoryRecorder(i + 1) for i in range(n)]
        self.acks: list[Ack] = []
        self.errors: Counter[str] = Counter()
        self.first_errors: dict[str, str] = {}
        self.started = 0.0
        self.stopped = 0.0
        self._running = False
        self._loops: Deferred[Any] | None = None

    async def start(self) -> None:
        for _ in range(self.n):
            self.clients.append(await self.cluster.client(reactor, timeout=self.timeout))
        self._running = True
        register_background(self)
        self.started = time.monotonic()
        self._loops = DeferredList([Deferred.fromCoroutine(self._loop(i))
                                    for i in range(self.n)], consumeErrors=True)

    async def _loop(self, i: int) -> None:
        client, rec = self.clients[i], self.recorders[i]
        rng = random.Random(self.rng.getrandbits(64))
        n = 0
        while self._running:
            key = rng.choice(self.keys)
            n += 1
            value = b"w%d-%d" % (i + 1, n)
            h = rec.invoke("put", key, value)
            try:
                version = await client.put(key, value)
            except DDSError as e:
                rec.complete(h, "indeterminate", error=f"{e.code}: {e.message}")
                self.errors[e.code] += 1
                self.first_errors.setdefault(e.code, e.message)
                continue        # the library already waited until its deadline
            rec.complete(h, "ok", result_version=version)
            self.acks.append(Ack(i + 1, key, value, version, time.monotonic(), time.time()))

    def stop_soon(self) -> None:
        """Let the loops end after the puts in flight (at the end of a failed test)."""
        self._running = False

    async def stop(self) -> None:
        """Stop after the puts in flight; re-raises a writer that crashed."""
        self._running = False
        results = await self._loops if self._loops is not None else []
        self.stopped = time.monotonic()
        for c in self.clients:
            await c.close()
        crashed = [f for ok, f in results if not ok]
        if crashed:
            crashed[0].raiseException()

    def ops(self) -> list[Op]:
        return [op for r in self.recorders for op in r.ops()]

    def acked_after(self, t: float, keys: set[bytes] | None = None) -> int:
        return sum(1 for a in self.acks if a.t > t and (keys is None or a.key in keys))

    def max_gap(self, a: float, b: float) -> tuple[float, int, float]:
        """Per writer, the longest time without a completed put from the last one before
        ``a`` to the first one after ``b``; the maximum over the writers, whose, and when
        it began (``time.monotonic()``)."""
        worst, who, when = 0.0, 0, 0.0
        for w in range(1, self.n + 1):
            times = [x.t for x in self.acks if x.writer == w]
            before = [t for t in times if t <= a]
            inside = [t for t in times if a < t <= b]
            after = [t for t in times if t > b]
            points = [before[-1] if before else self.started, *inside,
                      after[0] if after else self.stopped]
            for x, y in itertools.pairwise(points):
                if y - x > worst:
                    worst, who, when = y - x, w, x
        return worst, who, when


__all__ = ["Ack", "Writers", "checksums", "key_of", "make_cluster", "nothing_prepared",
           "pause", "preload", "restart"]
