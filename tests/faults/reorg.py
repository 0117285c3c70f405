"""Reorganizations under faults (issue 15: fences bounded under faults).

While the nemesis runs, :class:`Reorganizer` keeps running ``dds-admin split``, ``merge``
and ``move`` on random partitions of the current map, through the fault proxies like
every client, and kills some of the tools with SIGKILL at a random moment (an operator's
Ctrl-C, a crashed admin host), which may be under their write fence.  A killed or failed
job is settled by ``dds-admin repair`` (and again at the end, until it succeeds, so that
the final reads find every partition routable).  Every job is a line of
``reorg.jsonl`` in the run directory.

What it measures: :func:`fences` reads from every brick's log how long each write fence
of a split, merge, move or recovery was held (the bricks log it when they lift one);
the runner's summary line reports the longest as ``fence_max_ms``.  A fence never lifted
(its brick died holding it) is not in the logs: the brick's death ended it.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crochet
from twisted.internet.defer import Deferred

from dds.maps import ClusterMap
from tests.faults.cluster import ProxiedCluster
from tests.harness.admin import clean_env

#: A job's tool is given this long before it is killed as hung.
JOB_TIMEOUT_S = 120.0
#: The share of jobs whose tool is killed at a random moment.
KILL_SHARE = 0.3
#: A killed tool is killed this long after its start at most (uniformly from 0.2 s).
KILL_WITHIN_S = 4.0
#: Between two jobs.
PAUSE_S = (0.5, 3.0)
#: Partitions are split no deeper than this (the map stays small).
MAX_DEPTH = 6

_FENCE = re.compile(r"fence on .* lifted after ([0-9.]+)s")
_RECOVERY = re.compile(r"writes were fenced ([0-9.]+)s")


def _reactor() -> Any:
    from twisted.internet import reactor
    return reactor


@crochet.run_in_reactor
def _fetch(cluster: ProxiedCluster) -> Deferred[ClusterMap]:
    from dds.tools.cluster import Target, fetch_map

    async def go() -> ClusterMap:
        seeds = tuple((h, int(p)) for h, p in (s.split(":") for s in cluster.seeds))
        cmap, _ = await fetch_map(_reactor(), Target(seeds, cluster.admin_secret.encode(),
                                                     "dds", None), timeout=5.0)
        return cmap
    return Deferred.fromCoroutine(go())


def choose(cmap: ClusterMap, rng: random.Random) -> list[str] | None:
    """A job the map allows: ``["split", P]``, ``["merge", P]`` or ``["move", P, "--to",
    RG]``; None if none does."""
    leaves = cmap.partition_rg
    if not leaves:
        return None
    rgs = sorted(n for n, r in cmap.rgs.items() if r.active_members)
    options: list[list[str]] = []
    for pid, rec in sorted(leaves.items()):
        if pid.depth < MAX_DEPTH:
            options.append(["split", str(pid)])
        if pid.depth > 0:
            sib = pid.sibling()
            if leaves.get(sib) is rec and pid < sib:
                options.append(["merge", str(pid)])
        options += [["move", str(pid), "--to", n] for n in rgs if n != rec.name]
    if not options:
        return None
    kinds = sorted({o[0] for o in options})
    kind = rng.choice(kinds)
    return rng.choice([o for o in options if o[0] == kind])


class Reorganizer:
    """The thread body :meth:`run`; ``outcomes`` and ``jobs`` once it returns."""

    def __init__(self, cluster: ProxiedCluster, rng: random.Random, log: Path,
                 echo: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.rng = rng
        self.log = log
        self.echo = echo
        self.jobs: list[dict[str, Any]] = []

    def _admin(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "dds.tools.admin", *args, "--seeds",
                ",".join(self.cluster.seeds), "--secret-file",
                str(self.cluster.root / "secrets" / "admin")]

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                cmap = _fetch(self.cluster).wait(15.0)
            except Exception as e:  # noqa: BLE001 -- a fault may hide every seed a while
                self._record({"job": None, "outcome": "no map", "error": repr(e)[:300]})
                stop.wait(1.0)
                continue
            try:
                args = choose(cmap, self.rng)
                if args is not None:
                    self._one(args, stop)
            except Exception as e:  # noqa: BLE001 -- recorded; the thread goes on
                self._record({"job": None, "outcome": "error", "error": repr(e)[:300]})
            stop.wait(self.rng.uniform(*PAUSE_S))

    def _one(self, args: list[str], stop: threading.Event) -> None:
        kill_after = (self.rng.uniform(0.2, KILL_WITHIN_S)
                      if self.rng.random() < KILL_SHARE else None)
        t0 = time.monotonic()
        proc = subprocess.Popen(self._admin(*args, "--json"), env=clean_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = False
        try:
            out, err = proc.communicate(timeout=kill_after or JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
            killed = True
        entry: dict[str, Any] = {"job": args, "seconds": round(time.monotonic() - t0, 3),
                                 "exit": proc.returncode, "killed": killed}
        if killed:
            entry["outcome"] = "killed" if kill_after else "hung"
        elif proc.returncode == 0:
            entry["outcome"] = "done"
            try:
                entry["fence_s"] = json.loads(out).get("fence_s")
            except ValueError:
                pass
        else:
            entry["outcome"] = ("rolled back" if "rolled back" in err else "failed")
            entry["error"] = err.strip().splitlines()[-1][:300] if err.strip() else ""
        if entry["outcome"] != "done":
            entry["repair"] = self.repair(timeout=JOB_TIMEOUT_S)
        self._record(entry)

    def repair(self, timeout: float) -> str:
        """``dds-admin repair`` once: ``ok`` or why not."""
        try:
            r = subprocess.run(self._admin("repair", "--json"), env=clean_env(),
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timed out"
        if r.returncode == 0:
            return "ok"
        return (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1][:300]

    def settle(self, deadline_s: float = 180.0) -> str:
        """After the faults: repair until it succeeds (every job finished or rolled
        back), or the deadline; ``ok`` or the last problem."""
        end = time.monotonic() + deadline_s
        last = "not tried"
        while time.monotonic() < end:
            last = self.repair(timeout=max(5.0, end - time.monotonic()))
            if last == "ok":
                return last
            time.sleep(1.0)
        return last

    def _record(self, entry: dict[str, Any]) -> None:
        self.jobs.append(entry)
        with open(self.log, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for j in self.jobs:
            if j.get("job"):
                counts[j["outcome"]] = counts.get(j["outcome"], 0) + 1
        kinds: dict[str, int] = {}
        for j in self.jobs:
            if j.get("job"):
                kinds[j["job"][0]] = kinds.get(j["job"][0], 0) + 1
        return ("reorganizations: " + " ".join(f"{k}={n}" for k, n in sorted(kinds.items()))
                + "; outcomes: " + " ".join(f"{k.replace(' ', '_')}={n}"
                                             for k, n in sorted(counts.items())))


def fences(cluster: ProxiedCluster) -> dict[str, float]:
    """The longest write fence each kind of fence was held, in seconds, from the brick
    logs: ``split`` (split and merge jobs), ``copy`` (moves and recoveries, at the
    source) and ``recovery`` (as the recovering brick measured it)."""
    longest = {"split": 0.0, "copy": 0.0, "recovery": 0.0}
    for b in cluster.bricks:
        for e in b.log_events():
            held = fence_held(str(e.get("msg", "")))
            if held is not None:
                longest[held[0]] = max(longest[held[0]], held[1])
    return longest


def fence_held(msg: str) -> tuple[str, float] | None:
    """``(kind, seconds)`` if the brick log message ``msg`` says how long a write fence
    was held (see :func:`fences`), else None."""
    m = _FENCE.search(msg)
    if m:
        return ("copy" if msg.startswith("copy session") else "split"), float(m.group(1))
    m = _RECOVERY.search(msg)
    if m:
        return "recovery", float(m.group(1))
    return None


__all__ = ["Reorganizer", "choose", "fence_held", "fences"]
