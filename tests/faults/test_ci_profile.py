"""The CI fault profile, end to end: real bricks, proxies, clients, nemeses, checkers.

One minute of load (a little over a minute in all): every nemesis kind runs at least once
and the history, lost-write and replica checks run on the result.  ``make verify`` is the
longer campaign (docs/verification.md).  The subprocess timeout is only a safety net for a
loaded machine.  The seed is random (printed by the runner, so a failure can be replayed)
unless ``DDS_FAULTS_SEED`` is set.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.faults.nemesis import KINDS
from tests.faults.runner import PROFILES

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"^ops=(\d+) ok=(\d+) indeterminate=(\d+) faults=(\d+) "
                     r"violations=(\d+) lost=(\d+) write_gap_ms=(\d+) read_p99_ms=(\d+) "
                     r"fence_max_ms=(\d+)$",
                     re.MULTILINE)


def _processes_under(run_dir: Path) -> list[int]:
    """Processes whose command line names ``run_dir`` or that run in a directory under it
    (the bricks of that run: a brick the harness forked from its zygote,
    ``tests/harness/zygote.py``, keeps the zygote's command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(run_dir).encode() in cmdline or Path(cwd).is_relative_to(run_dir):
            pids.append(int(entry.name))
    return pids


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_ci_profile_passes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "tests.faults.runner", "--profile", "ci",
            "--dir", str(run_dir)]
    if os.environ.get("DDS_FAULTS_SEED"):
        args += ["--seed", os.environ["DDS_FAULTS_SEED"]]
    try:
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                              check=False)
    finally:
        # A runner killed at the timeout cannot stop its bricks (they run in sessions
        # of their own): never leave them behind.
        leftovers = _processes_under(run_dir)
        _kill_all(leftovers)
    assert leftovers == [], "the runner left brick processes running"
    out = proc.stdout + proc.stderr
    seed = re.search(r"^seed=(\d+)", out, re.MULTILINE)
    assert seed, out[-3000:]
    assert proc.returncode == 0, f"seed {seed.group(1)}:\n{out[-6000:]}"
    m = SUMMARY.search(out)
    assert m, out[-3000:]
    ops, ok, indet, faults, violations, lost, _gap, _p99, _fence = map(int, m.groups())
    prof = PROFILES["ci"]
    assert ops >= prof.min_ops and faults >= prof.min_faults and ok + indet <= ops
    assert violations == 0 and lost == 0
    by_kind = re.search(r"^faults by kind: (.*)$", out, re.MULTILINE)
    assert by_kind, out[-3000:]
    counts = dict(item.split("=") for item in by_kind.group(1).split())
    assert sorted(counts) == sorted(KINDS) and all(int(n) >= 1 for n in counts.values()), \
        by_kind.group(0)
