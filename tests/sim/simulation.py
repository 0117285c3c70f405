"""Deterministic simulation of a DDS cluster under faults, checked for linearizability.

One seed fixes a whole run: bricks (one or two replica groups of 3, on 3–5 bricks) and
client processes (``DDSClient`` each) run in this process over ``MemoryNetwork`` on one
simulated clock; each process has its own reactor and RNG (``tests.sim.world``); the
workload (``tests.sim.workload``) and the faults (``tests.sim.nemesis``) come from RNGs
derived from the seed.  A run:

1. builds the cluster and starts the clients (each fetches the map);
2. runs the random workload for ``duration`` simulated seconds while faults come and go;
3. heals everything (resumes paused processes, restarts crashed bricks), tells the clients
   to stop, and waits up to ``finish_timeout`` simulated seconds for their last operation
   (one still running then stays indeterminate), then lets in-doubt transactions settle;
4. reads every key back through a fresh client;
5. checks the history for linearizability and lost writes (``tests.verify``), and checks
   that no lock or prepared transaction is left and that every replica of a key agrees.

Same seed, same history: nothing in the run depends on wall-clock time, thread timing or
hash order.  Replay a seed with ``python -m tests.sim.simulation --seed N -v``; run a sweep
with ``python -m tests.sim.simulation --seeds 300``.  See docs/simulation.md.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import logging
import multiprocessing
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import (ILogObserver, LogEvent, LogLevel, formatEvent,
                            globalLogPublisher)
from zope.interface import implementer

from dds.errors import DDSError
from tests.sim.nemesis import ALL_FAULTS, DEFAULT_FAULTS, Nemesis
from tests.sim.workload import ClientProcess
from tests.sim.world import SimWorld, derived_rng
from tests.verify.history import Op
from tests.verify.bounded import check_bounded_reads
from tests.verify.linearizability import check_linearizable, check_lost_writes, describe

__all__ = ["SimConfig", "SimResult", "Simulation", "TOPOLOGIES", "data_root", "main", "report",
           "run_seed", "summary_line", "sweep"]

#: Bricks and replica groups (by brick index), chosen by the seed unless configured.
TOPOLOGIES: tuple[tuple[int, tuple[tuple[int, ...], ...]], ...] = (
    (3, ((0, 1, 2),)),
    (4, ((0, 1, 2), (1, 2, 3))),
    (5, ((0, 1, 2), (2, 3, 4))),
)


@attrs.frozen
class SimConfig:
    seed: int = 0
    #: Index into TOPOLOGIES; None: chosen by the seed.
    topology: int | None = None
    #: Client processes (None: 2 to 5, chosen by the seed).
    clients: int | None = None
    keys: int = 4
    partitions: int = 4
    #: Simulated seconds of workload under faults.
    duration: float = 15.0
    #: Upper bound of a client's pause before each operation (uniform).
    think: float = 0.05
    latency: float = 0.001
    #: Up to this much more latency per write, at random (None: chosen by the seed from
    #: 0.5, 4 and 20 ms): bytes on different connections overtake each other.
    jitter: float | None = None
    faults: tuple[str, ...] = DEFAULT_FAULTS
    #: Mean simulated seconds between two faults.
    fault_interval: float = 0.7
    max_fault_duration: float = 5.0
    client_timeout: float = 2.0
    txn_deadline_ms: int = 2000
    lock_wait_ms: int = 500
    read_wait_ms: int = 1000
    gossip: bool = True
    #: How long (simulated) the clients get to finish after the faults end.
    finish_timeout: float = 30.0
    #: Simulated seconds for in-doubt transactions to settle before the final reads.
    settle: float = 12.0

    def brick_settings(self) -> dict[str, dict[str, Any]]:
        return {"timeouts": {"txn_deadline_ms": self.txn_deadline_ms,
                             "lock_wait_ms": self.lock_wait_ms,
                             "read_wait_ms": self.read_wait_ms,
                             "gossip_interval_ms": 1000}}


@attrs.define
class SimResult:
    seed: int
    ops: list[Op]
    faults: dict[str, int]
    violations: list[str]
    lost: list[str]
    fault_log: list[tuple[float, str]]
    sim_time: float = 0.0
    #: The product's log lines at level error or critical (not violations by themselves).
    errors: list[str] = attrs.Factory(list)
    #: How to replay the run (default: by its seed).
    replay: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations and not self.lost

    def count(self, status: str) -> int:
        return sum(op.status == status for op in self.ops)

    def digest(self) -> str:
        """A fingerprint of the whole history (every field of every operation)."""
        h = hashlib.sha256()
        for op in self.ops:
            h.update(repr(op).encode())
        return h.hexdigest()[:16]


def summary_line(results: Sequence[SimResult]) -> str:
    return (f"seeds={len(results)} ops={sum(len(r.ops) for r in results)} "
            f"ok={sum(r.count('ok') for r in results)} "
            f"indeterminate={sum(r.count('indeterminate') for r in results)} "
            f"faults={sum(sum(r.faults.values()) for r in results)} "
            f"violations={sum(len(r.violations) for r in results)} "
            f"lost={sum(len(r.lost) for r in results)}")


@implementer(ILogObserver)
class _ErrorLog:
    """Keeps the product's error lines in ``sim.errors``; a Deferred that failed with
    nobody to handle its failure is a bug of its own (a violation)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_level") not in (LogLevel.error, LogLevel.critical):
            return
        sim = self.sim
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        text = f"{event.get('log_namespace')}: {text}"
        seen = sim.errors.get(text)
        sim.errors[text] = (seen[0] if seen else sim.now, (seen[1] if seen else 0) + 1)
        if "Unhandled error in Deferred" in text:
            sim.violations.append(f"unhandled error in a Deferred: {text}")


class _LibraryErrors(logging.Handler):
    """The library logs to ``logging`` (``dds.lib.logging_bridge``), not to Twisted's global
    log: its error lines join the bricks' in ``sim.errors``."""

    def __init__(self, sim: Simulation) -> None:
        super().__init__(logging.ERROR)
        self.sim = sim

    def emit(self, record: logging.LogRecord) -> None:
        sim = self.sim
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f"\n{record.exc_info[0].__name__ if record.exc_info[0] else ''}: " \
                    f"{record.exc_info[1]}"
        seen = sim.errors.get(text)
        sim.errors[text] = (seen[0] if seen else sim.now, (seen[1] if seen else 0) + 1)


class Simulation:
    """One seeded run; :meth:`run` does it all, the steps are public for the stateful
    test (which starts operations and faults itself)."""

    def __init__(self, config: SimConfig, data_dir: Path) -> None:
        self.config = c = config
        shape = derived_rng(c.seed, "shape")
        topo = shape.randrange(len(TOPOLOGIES)) if c.topology is None else c.topology
        clients = shape.randint(2, 5) if c.clients is None else c.clients
        jitter = shape.choice((0.0005, 0.004, 0.02)) if c.jitter is None else c.jitter
        n, rgs = TOPOLOGIES[topo]
        self.world = w = SimWorld(data_dir, n, seed=c.seed, rgs=rgs, partitions=c.partitions,
                                  config=c.brick_settings(), latency=c.latency,
                                  jitter=jitter, gossip=c.gossip,
                                  client_timeout=c.client_timeout)
        self.keys = [f"k{i}".encode() for i in range(c.keys)]
        self.procs: list[ClientProcess] = []
        for i in range(clients):
            self.procs.append(self._process(i, f"c{i}"))
        for p in self.procs:
            w.run(p.client.start())
        self.nemesis = Nemesis(w, [b.id for b in w.bricks], [p.name for p in self.procs],
                               derived_rng(c.seed, "nemesis"), c.faults, c.fault_interval,
                               c.max_fault_duration)
        self.violations: list[str] = []
        self.lost: list[str] = []
        self.final: ClientProcess | None = None
        #: The product's error log lines: text -> (first simulated time, how many).
        self.errors: dict[str, tuple[float, int]] = {}
        self._observer = _ErrorLog(self)
        globalLogPublisher.addObserver(self._observer)
        self._library_errors = _LibraryErrors(self)
        logging.getLogger("dds").addHandler(self._library_errors)

    def _process(self, index: int, name: str) -> ClientProcess:
        client = self.world.new_client(name)
        return ClientProcess(index, client, self.world.reactors[name], self.keys,
                             derived_rng(self.config.seed, name, "workload"))

    @property
    def now(self) -> float:
        return self.world.clock.seconds()

    def advance(self, seconds: float) -> bool:
        """Let simulated time pass; False (and a violation) if the product raised."""
        return self._guard(self.world.net.advance, seconds)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run a step of the simulation; an exception out of the product (a protocol
        callback or a timer raised) is a violation, and ends the run."""
        try:
            fn(*args)
        except Exception:       # noqa: BLE001
            self.violations.append(f"exception at t={self.now:.3f}: "
                                   f"{traceback.format_exc(limit=12)}")
            return False
        return True

    # -- phases --------------------------------------------------------------------------

    def run(self) -> SimResult:
        for p in self.procs:
            p.loop(self.config.think)
        end = self.now + self.config.duration
        while self.now < end:
            if not self.advance(max(0.0, min(self.nemesis.due(), end) - self.now)):
                return self.result()
            if self.now < end and not self._guard(self.nemesis.step):
                return self.result()
        self.finish()
        return self.result()

    def finish(self) -> None:
        """Heal, let the clients finish, settle, read every key back, check."""
        if not (self._guard(self.nemesis.heal_all) and
                self._guard(self.world.heal_everything)):
            return
        for p in self.procs:
            p.stopping = True
        deadline = self.now + self.config.finish_timeout
        while self.now < deadline and any(p.busy for p in self.procs):
            if not self.advance(min(0.5, deadline - self.now)):
                return
        if not self.advance(self.config.settle):
            return
        self.final_reads()
        self.check()

    def final_reads(self, attempts: int = 10) -> None:
        self.final = final = self._process(len(self.procs), "final")
        try:
            self.world.run(final.client.start(), timeout=30.0)
        except (DDSError, AssertionError) as e:
            self.violations.append(f"final reader could not start: {e!r}")
            return
        for key in self.keys:
            for _ in range(attempts):
                d = final.start("get", key)
                try:
                    self.world.run(d, timeout=60.0)
                except AssertionError as e:
                    self.violations.append(f"final read of {key!r} hung: {e}")
                    return
                if final.ops()[-1].status == "ok":
                    break
            else:
                self.violations.append(f"final read of {key!r} failed {attempts} times: "
                                       f"{final.ops()[-1].error}")

    def ops(self) -> list[Op]:
        procs = self.procs + ([self.final] if self.final is not None else [])
        ops = [op for p in procs for op in p.ops()]
        ops.sort(key=lambda o: (o.invoke_t, o.process))
        return ops

    def check(self) -> None:
        gc.collect()        # Deferreds of this run that failed unhandled say so now
        ops = self.ops()
        for p in self.procs + ([self.final] if self.final else []):
            self.violations.extend(f"non-DDSError from the library: {u}" for u in p.unexpected)
        lin = check_linearizable(ops)
        self.violations.extend(f"{v.kind}: {v.message}\n    " +
                               "\n    ".join(describe(o) for o in v.ops)
                               for v in lin.violations)
        final: dict[bytes, tuple[bytes | None, int]] = {}
        for op in self.final.ops() if self.final else []:
            if op.status == "ok" and op.result_version is not None:
                final[op.key] = (op.result_value, op.result_version)
        bounded = check_bounded_reads(ops)
        self.violations.extend(f"{v.kind}: {v.message}" for v in bounded.violations)
        lost = check_lost_writes(ops, final)
        self.lost.extend(f"{v.kind}: {v.message}" for v in lost.violations)
        self.violations.extend(self.replica_problems())

    def replica_problems(self) -> list[str]:
        """After settling: no locks, no prepared transactions, replicas that agree."""
        w = self.world
        problems = []
        for b in w.bricks:
            if len(b.locks) or b.participant.active:
                problems.append(f"{b.id} still holds {len(b.locks)} locks and "
                                f"{len(b.participant.active)} transactions after settling")
        for key in self.keys:
            pid, rg = w.map.route(key)
            states = {m: w.brick(m).storage.read(str(pid), key) for m in rg.active_members}
            if len(set(states.values())) > 1:
                problems.append(f"replicas of {key!r} disagree: " + ", ".join(
                    f"{m}={s.value!r}@v{s.version}" for m, s in states.items()))
        return problems

    def result(self) -> SimResult:
        return SimResult(self.config.seed, self.ops(), dict(self.nemesis.counts),
                         self.violations, self.lost, self.nemesis.log, self.now,
                         [f"{n}x from t={t:.3f}: {text}" for text, (t, n) in
                          self.errors.items()])

    def close(self) -> None:
        globalLogPublisher.removeObserver(self._observer)
        logging.getLogger("dds").removeHandler(self._library_errors)
        self.world.shutdown()


def data_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def run_seed(seed: int, **options: Any) -> SimResult:
    """Run one seed (options: any ``SimConfig`` field) in a temporary directory."""
    config = SimConfig(seed=seed, **options)
    data_dir = Path(tempfile.mkdtemp(prefix=f"dds-sim-{seed}-", dir=data_root()))
    try:
        sim = Simulation(config, data_dir)
        try:
            return sim.run()
        finally:
            sim.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _run_one(job: tuple[int, dict[str, Any]]) -> SimResult:
    return run_seed(job[0], **job[1])


def sweep(seeds: Iterable[int], jobs: int = 1, **options: Any) -> list[SimResult]:
    """Run every seed (in ``jobs`` worker processes when above 1), in seed order."""
    work = [(s, options) for s in seeds]
    if jobs <= 1:
        return [_run_one(w) for w in work]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        return list(pool.map(_run_one, work, chunksize=max(1, len(work) // (jobs * 8))))


def report(result: SimResult, verbose: bool = False) -> str:
    """What went wrong in one run, and how to replay it."""
    replay = result.replay or f"python -m tests.sim.simulation --seed {result.seed} -v"
    lines = [f"seed {result.seed}: {len(result.violations)} violation(s), "
             f"{len(result.lost)} lost write(s); replay: {replay}"]
    lines += [f"  {v}" for v in result.violations + result.lost]
    if verbose:
        if result.errors:
            lines.append("  the product's error log lines:")
            lines += [f"    {e}" for e in result.errors]
        lines.append("  faults:")
        lines += [f"    {t:9.3f}  {what}" for t, what in result.fault_log]
        bad = {k for k in (op.key for op in result.ops)
               if any(repr(k) in v for v in result.violations + result.lost)}
        for key in sorted(bad):
            lines.append(f"  history of {key!r}:")
            lines += [f"    {describe(op)}" for op in result.ops if op.key == key]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.sim.simulation",
        description="Deterministic simulation of DDS under faults (see docs/simulation.md).")
    parser.add_argument("--seeds", type=int, default=300, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed of the sweep")
    parser.add_argument("--seed", type=int, help="run this one seed only")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--crash", action="store_true",
                        help="also crash and restart bricks (off by default: issue 3)")
    parser.add_argument("--faults", help="comma-separated fault kinds "
                        f"(default {','.join(DEFAULT_FAULTS)}; known: {','.join(ALL_FAULTS)})")
    parser.add_argument("--duration", type=float, help="simulated seconds of workload")
    parser.add_argument("--clients", type=int, help="client processes (default: by seed)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the fault log and the history of each failing key")
    args = parser.parse_args(argv)
    options: dict[str, Any] = {}
    if args.faults is not None:
        options["faults"] = tuple(k for k in args.faults.split(",") if k)
    if args.crash:
        options["faults"] = tuple(dict.fromkeys(options.get("faults", DEFAULT_FAULTS)
                                                + ("crash",)))
    if args.duration is not None:
        options["duration"] = args.duration
    if args.clients is not None:
        options["clients"] = args.clients
    seeds = [args.seed] if args.seed is not None else range(args.start,
                                                            args.start + args.seeds)
    started = time.monotonic()
    results = sweep(seeds, args.jobs, **options)
    for r in results:
        if not r.ok or args.seed is not None and args.verbose:
            print(report(r, args.verbose))
    if args.seed is not None:
        print(f"history digest {results[0].digest()}")
    print(f"{summary_line(results)} ({time.monotonic() - started:.1f}s)")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
