"""Nemeses: a fault schedule drawn from a seed, and the executor that applies it.

:func:`plan` turns ``(seed, kinds, bricks, span, …)`` into a list of :class:`Fault`: when
each fault starts (seconds after the nemesis starts), how long it lasts, its targets and
parameters.  It uses nothing but a ``random.Random(seed)``, so the same arguments always
give the same schedule: that is how a run is replayed.  :class:`Nemesis` executes a
schedule in order on one thread, each action at its planned time (or as soon as the
previous action finished, if that ran late) and logs every action with its real time.

Kinds:

* ``pause``: ``kill -STOP`` one brick, ``kill -CONT`` after 1.1-2x the lease.
* ``kill``: ``kill -9`` one brick, restart it (same port) after a short downtime.
* ``partition``: one or two bricks cut off from the others through the proxies, by
  dropping every frame (``drop``) or closing the connections (``refuse``); half the time
  the clients are cut off from that side as well.
* ``delay``: every frame to and from one or two bricks is held 20-400 ms.
* ``cut``: one direction only (to the brick, or from it) of one brick's traffic is lost.
* ``restart``: ``kill -TERM`` every brick at once, wait for them to exit, start them all.
* ``bitflip``: ``kill -TERM`` one brick, flip a bit in a stored value of one of its
  partition files or in a logged write's value (``tests/faults/bitflip.py``), start it
  again after a short downtime.  It must never serve the damaged bytes (issue 13).  Each
  key is damaged at most once a run (on one brick): one replica of a key at a time.

Overlap rules: at most ``max_active`` faults at a time; a brick takes one process fault
(pause, kill) at a time; one network fault (partition, delay, cut) at a time; a whole
cluster restart runs alone, with ``RESTART_ALLOWANCE`` seconds reserved for the stop and
the start, at most once per ``RESTART_SPACING`` seconds.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import attrs

from tests.faults.bitflip import flip_stored_byte
from tests.faults.cluster import ProxiedCluster
from tests.faults.proxy import CLIENT, Rule

KINDS: tuple[str, ...] = ("pause", "kill", "partition", "delay", "cut", "restart", "bitflip")
#: The kinds the product survives before leases, exclusion and recovery (issue 3) exist.
#: The kinds a run uses unless told otherwise: all of them, since prepared transactions
#: became durable (a killed or stopped brick restores and resolves them on restart).
DEFAULT_KINDS: tuple[str, ...] = KINDS
PROCESS_KINDS = frozenset({"pause", "kill", "bitflip"})
NET_KINDS = frozenset({"partition", "delay", "cut"})
#: Kinds that lose messages (a 2PC decision may not reach a member that voted YES).
LOSS_KINDS = frozenset({"partition", "cut", "kill", "bitflip"})
#: How often each kind is drawn, relative to the others.
WEIGHTS = {"pause": 3.0, "kill": 3.0, "partition": 3.0, "delay": 2.0, "cut": 2.0, "restart": 0.12,
           "bitflip": 1.0}
#: Seconds a whole-cluster restart reserves beyond its downtime (stop grace + start).
RESTART_ALLOWANCE = 8.0
#: Least seconds between the starts of two whole-cluster restarts.
RESTART_SPACING = 30.0


@attrs.frozen
class Fault:
    index: int
    kind: str
    at: float                       # planned start, seconds after the nemesis starts
    duration: float                 # planned seconds until the heal
    targets: tuple[str, ...]
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def end(self) -> float:
        return self.at + self.duration

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.params)
        return (f"#{self.index} {self.kind} {','.join(self.targets)} "
                f"{self.duration:.2f}s{' ' + extra if extra else ''}")

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Fault:
        return cls(int(d["index"]), str(d["kind"]), float(d["at"]), float(d["duration"]),
                   tuple(d["targets"]), tuple(sorted(d["params"].items())))

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "at": round(self.at, 6),
                "duration": round(self.duration, 6), "targets": list(self.targets),
                "params": dict(self.params)}


def plan(seed: int, kinds: tuple[str, ...] | list[str], bricks: list[str], span: float,
         lease_s: float = 3.0, gap: tuple[float, float] = (0.5, 3.5),
         max_active: int = 2, start: float = 0.0,
         restart_quiet: float = 0.0) -> list[Fault]:
    """The fault schedule for ``seed``: faults start within ``[start, span)`` and every
    fault (its planned heal included) ends by ``span``.  A whole-cluster restart starts
    at least ``restart_quiet`` seconds after the heal of any fault that loses messages
    (see :data:`LOSS_KINDS` and docs/verification.md for why that guard exists)."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown nemesis kinds {sorted(unknown)}; known: {KINDS}")
    rng = random.Random(seed)
    bricks = sorted(bricks)
    kinds = [k for k in KINDS if k in kinds]       # canonical order, whatever was given
    faults: list[Fault] = []
    busy = {b: 0.0 for b in bricks}                 # process lane: busy until
    net_busy = 0.0
    exclusive = 0.0                                 # a cluster restart: nothing else
    t = start
    pending = rng.sample(kinds, len(kinds))
    while True:
        t = max(t + rng.uniform(*gap), exclusive)
        if t >= span:
            return faults
        if sum(f.end > t for f in faults) >= max_active:
            continue
        # every kind once first (in a seeded order), then random draws; a kind that
        # cannot be placed now is passed over for this slot
        fault = None
        for kind in list(pending):
            fault = _place(rng, kind, t, span, bricks, lease_s, busy, net_busy,
                           faults, restart_quiet)
            if fault is not None:
                pending.remove(kind)
                break
        candidates = list(kinds) if fault is None else []
        while candidates:
            kind = rng.choices(candidates, [WEIGHTS[k] for k in candidates])[0]
            fault = _place(rng, kind, t, span, bricks, lease_s, busy, net_busy,
                           faults, restart_quiet)
            if fault is not None:
                break
            # a whole-cluster restart is only ever a first choice, never a fallback
            candidates = [k for k in candidates if k not in (kind, "restart")]
        if fault is None:
            continue
        faults.append(fault)
        if kind in PROCESS_KINDS:
            busy[fault.targets[0]] = fault.end
        elif kind in NET_KINDS:
            net_busy = fault.end
        else:
            exclusive = fault.end + RESTART_ALLOWANCE
            t = fault.at


def _place(rng: random.Random, kind: str, t: float, span: float, bricks: list[str],
           lease_s: float, busy: dict[str, float], net_busy: float, faults: list[Fault],
           restart_quiet: float) -> Fault | None:
    """One fault of ``kind`` starting at ``t``, or None if the overlap rules forbid it.
    A whole-cluster restart waits for every running fault to end."""
    params: dict[str, Any] = {}
    if kind in PROCESS_KINDS:
        free = [b for b in bricks if busy[b] <= t]
        if not free:
            return None
        targets = [rng.choice(free)]
        duration = rng.uniform(1.1 * lease_s, 2.0 * lease_s) if kind == "pause" \
            else rng.uniform(0.3, 2.0)
        if kind == "bitflip":
            params = {"where": rng.choice(("value", "value", "log")),
                      "pick": rng.randrange(1 << 16)}
    elif kind in NET_KINDS:
        if net_busy > t:
            return None
        duration = rng.uniform(1.0, 5.0)
        if kind == "partition":
            targets = rng.sample(bricks, rng.choice((1, max(1, (len(bricks) - 1) // 2))))
            params = {"mode": rng.choice(("drop", "drop", "refuse")),
                      "clients": rng.random() < 0.5}
        elif kind == "delay":
            targets = rng.sample(bricks, rng.choice((1, 2)))
            params = {"ms": round(rng.uniform(20, 400))}
        else:
            targets = [rng.choice(bricks)]
            params = {"direction": rng.choice(("in", "out"))}
    else:   # restart: alone, after everything running now has healed
        if any(f.kind == "restart" and f.at > t - RESTART_SPACING for f in faults):
            return None
        t = max([t] + [f.end + 0.5 for f in faults if f.end > t] +
                [f.end + restart_quiet for f in faults if f.kind in LOSS_KINDS])
        targets = list(bricks)
        duration = rng.uniform(0.2, 1.5)
    if t + duration + (RESTART_ALLOWANCE if kind == "restart" else 0.0) > span:
        return None
    return Fault(len(faults), kind, round(t, 6), round(duration, 6), tuple(sorted(targets)),
                 tuple(sorted(params.items())))


class Nemesis:
    """Applies a schedule to a :class:`ProxiedCluster`; every action is logged."""

    def __init__(self, cluster: ProxiedCluster, log_path: Path,
                 echo: Callable[[str], None] = print) -> None:
        self.cluster = cluster
        self.pool = cluster.pool
        self.log_file: TextIO = open(log_path, "a", encoding="utf-8")
        self.echo = echo
        self.t0 = time.monotonic()
        self.started: list[tuple[float, Fault]] = []    # (monotonic start, fault)
        self.paused: set[str] = set()
        self.down: set[str] = set()        # killed or stopped on purpose, not restarted yet
        self.starting: set[str] = set()    # restarted, not yet known to serve
        self.findings: list[str] = []      # unexpected: a brick exited by itself, etc.
        self.flipped: set[bytes] = set()   # keys a bitflip damaged (each at most once)

    def _log(self, action: str, fault: Fault | None, **extra: Any) -> None:
        now = time.monotonic()
        rec = {"t": now, "wall": time.time(), "rel": round(now - self.t0, 3), "action": action,
               **(fault.to_json() if fault else {}), **extra}
        self.log_file.write(json.dumps(rec) + "\n")
        self.log_file.flush()
        what = fault.describe() if fault else ""
        self.echo(f"[nemesis +{now - self.t0:7.2f}s] {action} {what} "
                  f"{' '.join(f'{k}={v}' for k, v in extra.items())}".rstrip())

    def run(self, faults: list[Fault], stop: threading.Event) -> None:
        """Execute ``faults``; returns when done or when ``stop`` is set (then the faults
        still running are left to :meth:`heal_all`)."""
        self.t0 = time.monotonic()
        events = sorted([(f.at, 1, f.index, f) for f in faults] +
                        [(f.end, 0, f.index, f) for f in faults])
        begun: set[int] = set()
        for at, is_start, _, fault in events:
            if stop.wait(max(0.0, self.t0 + at - time.monotonic())):
                return
            self._check_crashes()
            if is_start:
                self._ready(fault.targets)
                self.started.append((time.monotonic(), fault))
                begun.add(fault.index)
                self._log("start", fault)
                self._start(fault)
            elif fault.index in begun:
                self._heal(fault)
                self._log("heal", fault)

    def _ready(self, bricks: tuple[str, ...]) -> None:
        for b in sorted(set(bricks) & self.starting):
            self.cluster.brick(b).wait_ready()
            self.starting.discard(b)

    def _start(self, f: Fault) -> None:
        c = self.cluster
        if f.kind == "pause":
            c.brick(f.targets[0]).send_signal(signal.SIGSTOP)
            self.paused.add(f.targets[0])
        elif f.kind == "kill":
            self.down.add(f.targets[0])
            c.brick(f.targets[0]).stop(signal.SIGKILL)
        elif f.kind == "bitflip":
            brick = c.brick(f.targets[0])
            self.down.add(f.targets[0])
            code = brick.stop(signal.SIGTERM)
            if code != 0:
                self._finding(f"bitflip: {brick.id} exited with code {code} on SIGTERM")
            what, key = flip_stored_byte(brick.data_dir, f.param("where"), f.param("pick"),
                                         self.flipped)
            if key is not None:
                self.flipped.add(key)
            self._log("flipped", f, what=what)
        elif f.kind == "partition":
            rule = Rule(f.param("mode"))
            side = set(f.targets)
            rest = [b for b in c.brick_ids if b not in side]
            for b in sorted(side):
                self.pool.set(b, rule, rest + ([CLIENT] if f.param("clients") else []))
            for b in rest:
                self.pool.set(b, rule, sorted(side))
        elif f.kind == "delay":
            for b in f.targets:
                self.pool.set(b, Rule("delay", float(f.param("ms"))))
        elif f.kind == "cut":
            self.pool.set(f.targets[0], Rule("cut_in" if f.param("direction") == "in"
                                              else "cut_out"))
        elif f.kind == "restart":
            self._ready(tuple(c.brick_ids))
            self.down.update(c.brick_ids)
            codes = c.terminate_all()
            bad = {b: code for b, code in codes.items() if code != 0}
            if bad:
                self._finding(f"whole-cluster SIGTERM: non-zero exit codes {bad}")
        else:
            raise ValueError(f"unknown fault kind {f.kind!r}")

    def _heal(self, f: Fault) -> None:
        if f.kind == "pause":
            self.cluster.brick(f.targets[0]).send_signal(signal.SIGCONT)
            self.paused.discard(f.targets[0])
        elif f.kind in ("kill", "restart", "bitflip"):
            for b in f.targets:
                self._restart(b)
        else:
            self.pool.heal()

    def _restart(self, brick_id: str) -> None:
        self.cluster.brick(brick_id).start()
        self.down.discard(brick_id)
        self.starting.add(brick_id)

    def _finding(self, text: str) -> None:
        self.findings.append(text)
        self._log("finding", None, text=text)

    def _check_crashes(self) -> None:
        for b in self.cluster.bricks:
            if b.id not in self.down and b.proc is not None and not b.alive():
                self._finding(f"brick {b.id} exited by itself with code "
                              f"{b.proc.returncode}; log tail:\n{b.log_tail(10)}")
                self.down.add(b.id)

    def heal_all(self) -> None:
        """End every fault: resume, restart what is down, pass all traffic, wait until
        every brick serves."""
        self._check_crashes()
        for b in sorted(self.paused):
            self.cluster.brick(b).send_signal(signal.SIGCONT)
        self.paused.clear()
        self.pool.heal()
        for b in sorted(self.down):
            self._restart(b)
        self._ready(tuple(self.starting))
        self._log("healed", None)

    def close(self) -> None:
        self.log_file.close()

    @property
    def first_fault_t(self) -> float | None:
        return self.started[0][0] if self.started else None

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for _, f in self.started:
            out[f.kind] += 1
        return out
