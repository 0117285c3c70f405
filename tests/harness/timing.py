"""Per-test cost figures, for keeping the suite's time in check (docs/verification.md).

With ``DDS_TEST_TIMING=<file>`` set, every test appends one JSON line to ``<file>``: its
node id, wall seconds, the CPU seconds of the pytest process itself and of the child
processes it reaped (bricks, admin commands; bricks forked by the zygote,
``tests/harness/zygote.py``, count when the harness sees them exit), how many brick
processes the harness started and how many of those it exec'd instead of forking
(set-up and tear-down of the test's fixtures included: a module-shared cluster counts in
the test that started or stopped it), the wall seconds spent stopping bricks (``stop_s``:
a brick stopped while this blocked process holds a client's COMMIT waits out its 5 s
shutdown grace), and the ``dds-admin`` processes run through ``tests.harness.admin`` or
``tests.harness.local`` (``admins``), with the xdist worker and start time of each test.
CPU is what the figures are about: wall time moves with whatever else the machine runs.
Bricks a ``dds-admin local up`` started are not the test process's children: their CPU is
not counted.  ``python -m tests.harness.timing <file>`` prints the per-file table and
each worker's span (a worker that ends long after the other is a tail to balance)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import defaultdict
from typing import Any, Iterator

import pytest

from tests.harness import admin, processes, zygote

_ENV = "DDS_TEST_TIMING"


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime + zygote.reaped_cpu


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Iterator[None]:
    path = os.environ.get(_ENV)
    if not path:
        yield
        return
    began = time.time()
    wall0, (self0, kids0), starts0 = time.monotonic(), _cpu(), processes.starts
    execs0, stops0 = processes.exec_starts, processes.stop_seconds
    admins0, admin_s0 = admin.commands, admin.command_seconds
    yield
    self1, kids1 = _cpu()
    row = {"test": item.nodeid, "file": item.nodeid.split("::")[0],
           "worker": os.environ.get("PYTEST_XDIST_WORKER", "-"), "began": round(began, 3),
           "wall": round(time.monotonic() - wall0, 3), "cpu_self": round(self1 - self0, 3),
           "cpu_children": round(kids1 - kids0, 3),
           "bricks": processes.starts - starts0,
           "exec_bricks": processes.exec_starts - execs0,
           "stop_s": round(processes.stop_seconds - stops0, 3),
           "admins": admin.commands - admins0,
           "admin_s": round(admin.command_seconds - admin_s0, 3)}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def table(path: str) -> str:
    files: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in open(path):
        row: dict[str, Any] = json.loads(line)
        f = files[row["file"]]
        for k in ("wall", "cpu_self", "cpu_children", "bricks", "stop_s", "admins"):
            f[k] += row.get(k, 0)
        f["tests"] += 1
    out = [f"{'file':60} {'tests':>5} {'wall':>7} {'cpu':>7} {'self':>7} {'kids':>7} "
           f"{'bricks':>6} {'stop_s':>6} {'admins':>6}"]
    total: dict[str, float] = defaultdict(float)
    for name, f in sorted(files.items(), key=lambda kv: -(kv[1]["cpu_self"]
                                                          + kv[1]["cpu_children"])):
        cpu = f["cpu_self"] + f["cpu_children"]
        out.append(f"{name:60} {int(f['tests']):5} {f['wall']:7.1f} {cpu:7.1f} "
                   f"{f['cpu_self']:7.1f} {f['cpu_children']:7.1f} {int(f['bricks']):6} "
                   f"{f['stop_s']:6.1f} {int(f['admins']):6}")
        for k, v in f.items():
            total[k] += v
    cpu = total["cpu_self"] + total["cpu_children"]
    out.append(f"{'TOTAL':60} {int(total['tests']):5} {total['wall']:7.1f} {cpu:7.1f} "
               f"{total['cpu_self']:7.1f} {total['cpu_children']:7.1f} "
               f"{int(total['bricks']):6} {total['stop_s']:6.1f} {int(total['admins']):6}")
    return "\n".join(out + _workers(path))


def _workers(path: str) -> list[str]:
    """Each xdist worker's first start, last end (seconds from the run's first test) and
    the wall time of its tests."""
    rows = [json.loads(line) for line in open(path)]
    if not rows or "began" not in rows[0]:
        return []
    t0 = min(r["began"] for r in rows)
    spans: dict[str, list[float]] = defaultdict(lambda: [1e18, 0.0, 0.0])
    for r in rows:
        span = spans[r["worker"]]
        span[0] = min(span[0], r["began"] - t0)
        span[1] = max(span[1], r["began"] - t0 + r["wall"])
        span[2] += r["wall"]
    return [f"worker {w}: {a:7.1f} s .. {b:7.1f} s, tests' wall {busy:7.1f} s"
            for w, (a, b, busy) in sorted(spans.items())]


if __name__ == "__main__":
    print(table(sys.argv[1]))
