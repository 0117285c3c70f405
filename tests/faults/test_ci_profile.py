"""The CI fault profile, end to end: real bricks, proxies, clients, nemeses, checkers.

Takes about two minutes; the subprocess timeout is only a safety net for a loaded
machine.  The seed is random (printed by the runner, so a failure can be replayed) unless
``DDS_FAULTS_SEED`` is set.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"^ops=(\d+) ok=(\d+) indeterminate=(\d+) faults=(\d+) "
                     r"violations=(\d+) lost=(\d+)$", re.MULTILINE)


def test_ci_profile_passes(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "tests.faults.runner", "--profile", "ci",
            "--dir", str(tmp_path / "run")]
    if os.environ.get("DDS_FAULTS_SEED"):
        args += ["--seed", os.environ["DDS_FAULTS_SEED"]]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    out = proc.stdout + proc.stderr
    seed = re.search(r"^seed=(\d+)", out, re.MULTILINE)
    assert seed, out[-3000:]
    assert proc.returncode == 0, f"seed {seed.group(1)}:\n{out[-6000:]}"
    m = SUMMARY.search(out)
    assert m, out[-3000:]
    ops, ok, indet, faults, violations, lost = map(int, m.groups())
    assert ops >= 2_000 and faults >= 20 and ok + indet <= ops
    assert violations == 0 and lost == 0
