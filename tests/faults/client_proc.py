"""One client process of a fault run: its own reactor, its own ``DDSClient``, its own
history file.

``python -m tests.faults.client_proc --seeds h:p,h:p --secret S --process 3
--history h3.jsonl --keys 32 --groups 4 --workers 10 --worker-base 30 --ops 5000
--seconds 60 --seed 7``

``workers`` coroutines run a random mix of get / put / create / compare_and_put / remove
over the keys of their *group*: worker ``g`` (global number ``worker_base + i``) works on
group ``g % groups`` and key ``k`` belongs to group ``k % groups``; the runner picks
``groups`` so that at most 10 workers share a group, which bounds the concurrency per key
at 10.  Every written value is unique (``p<process>.w<worker>.<n>``).  The process stops
by itself after ``ops`` operations or ``seconds`` seconds, whichever comes first (an
operation already running then finishes), closes its client and exits 0.  ``--think-ms``
paces long runs, so that their histories stay small enough to check.

Outcomes, as the history records them: success is ``ok``; ``Indeterminate`` (or an
unexpected exception during a write) is ``indeterminate``; any other ``DDSError`` is
``fail`` with ``"<code>: <message>"`` as the error, since the library reports a definite
failure only after every YES vote was undone (a ``Timeout`` of a write included).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

from dds.lib import DDSClient
from twisted.internet.defer import Deferred

from dds.errors import DDSError, Indeterminate
from tests.harness.cluster import CLUSTER
from tests.verify.history import HistoryRecorder, OpKind, Status

#: Operation mix: (kind, weight).
MIX: tuple[tuple[OpKind, int], ...] = (("get", 40), ("put", 20), ("cas", 20),
                                       ("create", 10), ("remove", 10))


def key_name(k: int) -> bytes:
    return b"k%03d" % k


class Workload:
    def __init__(self, args: argparse.Namespace, client: DDSClient, reactor: Any) -> None:
        self.args = args
        self.client = client
        self.reactor = reactor
        self.rec = HistoryRecorder(args.process, args.history)
        self.rng = random.Random(args.seed)
        self.deadline = time.monotonic() + args.seconds
        self.started = 0
        self.counts = {"ok": 0, "fail": 0, "indeterminate": 0}

    def more(self) -> bool:
        return self.started < self.args.ops and time.monotonic() < self.deadline

    async def worker(self, index: int) -> None:
        a = self.args
        group = (a.worker_base + index) % a.groups
        keys = [key_name(k) for k in range(a.keys) if k % a.groups == group]
        if not keys:
            return
        rng = random.Random(self.rng.getrandbits(64))
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        seen: dict[bytes, int] = {}       # last version this worker saw, per key
        n = 0
        while self.more():
            self.started += 1
            n += 1
            key = rng.choice(keys)
            kind = rng.choices(kinds, weights)[0]
            value = None if kind in ("get", "remove") else \
                f"p{a.process}.w{index}.{n}".encode()
            expected = None
            if kind == "cas":
                expected = max(0, seen.get(key, 0) + rng.choice((0, 0, 0, 1, -1)))
            await self.one(kind, key, value, expected, seen)
            if a.think_ms > 0:      # pacing of the workload (long runs), not a wait
                d: Deferred[None] = Deferred()
                self.reactor.callLater(a.think_ms / 1000.0, d.callback, None)
                await d

    async def one(self, kind: OpKind, key: bytes, value: bytes | None,
                  expected: int | None, seen: dict[bytes, int]) -> None:
        c = self.client
        h = self.rec.invoke(kind, key, value, expected)
        try:
            if kind == "get":
                r = await c.get(key)
                seen[key] = r.version
                self.rec.complete(h, "ok", r.value, r.version)
            else:
                if kind == "remove":
                    d = c.remove(key)
                elif kind == "put":
                    d = c.put(key, value)
                elif kind == "create":
                    d = c.create(key, value)
                else:
                    d = c.compare_and_put(key, value, expected)
                version = await d
                seen[key] = version
                self.rec.complete(h, "ok", None, version)
            self.counts["ok"] += 1
        except Indeterminate as e:
            self.rec.complete(h, "indeterminate", error=f"{e.code}: {e.message}")
            self.counts["indeterminate"] += 1
        except DDSError as e:
            self.rec.complete(h, "fail", error=f"{e.code}: {e.message}")
            self.counts["fail"] += 1
            data = e.data if isinstance(e.data, dict) else {}
            if isinstance(data.get("version"), int):
                seen[key] = data["version"]
        except Exception as e:   # a bug somewhere: the write may or may not have happened
            status: Status = "fail" if kind == "get" else "indeterminate"
            self.rec.complete(h, status, error=f"unexpected: {e!r}")
            self.counts[status] += 1

    async def run(self) -> None:
        workers = [Deferred.fromCoroutine(self.worker(i)) for i in range(self.args.workers)]
        for w in workers:
            await w
        self.rec.close()


async def connect(reactor: Any, args: argparse.Namespace) -> DDSClient:
    """Connect, retrying while the cluster is unreachable (a fault may be running)."""
    deadline = time.monotonic() + args.connect_timeout
    while True:
        try:
            return await DDSClient.connect(reactor, args.seeds.split(","), cluster=CLUSTER,
                                           secret=args.secret.encode(),
                                           timeout=args.timeout,
                                           node_id=f"faults-client-{args.process}",
                                           commit_mode=args.commit_mode)
        except DDSError:
            if time.monotonic() > deadline:
                raise
            d: Deferred[None] = Deferred()
            reactor.callLater(0.2, d.callback, None)
            await d


async def main_async(reactor: Any, args: argparse.Namespace) -> int:
    client = await connect(reactor, args)
    work = Workload(args, client, reactor)
    t0 = time.monotonic()
    await work.run()
    await client.close()
    c = work.counts
    print(f"client {args.process}: {sum(c.values())} ops in {time.monotonic() - t0:.1f}s "
          f"ok={c['ok']} fail={c['fail']} indeterminate={c['indeterminate']}", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", required=True, help="comma-separated host:port")
    p.add_argument("--secret", required=True)
    p.add_argument("--process", type=int, required=True)
    p.add_argument("--history", required=True)
    p.add_argument("--keys", type=int, default=32)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--worker-base", type=int, default=0)
    p.add_argument("--ops", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--think-ms", type=float, default=0.0,
                   help="pause of each worker between its operations")
    p.add_argument("--timeout", type=float, default=5.0, help="per-operation deadline")
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commit-mode", choices=("parallel", "ack"), default="parallel",
                   help="success at the last YES vote, or after every COMMIT ack")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from twisted.internet.task import react

    def run(reactor: Any) -> Deferred[int]:
        return Deferred.fromCoroutine(main_async(reactor, args))
    try:
        react(run)      # exits the process: 0 once run() fired, 1 if it failed
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
