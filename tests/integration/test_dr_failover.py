"""The DR fault run (``tests/faults/dr.py``), one seed, short: a primary and a DR site
on loopback, the follower running, 8 client processes writing; the primary, the follower
and some clients killed with SIGKILL; ``dds-admin dr promote``; the surviving clients
fail over by themselves and replay.  The run's checker must find no violation: every
write acknowledged to a surviving client at the DR site (or superseded), no version going
back, and the only missing writes those of killed clients acknowledged after their
partition's cut-off.  ``make dr-verify`` runs 20 seeds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.harness.admin import clean_env

SEED = 20261208


def test_one_seed_of_the_dr_fault_run_finds_no_violation(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "tests.faults.dr", "--seed", str(SEED),
                          "--short", "--window", "6", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=clean_env())
    assert run.returncode == 0, run.stdout + run.stderr
    summary = re.search(r"seed=\d+ acked=(\d+) acked_dr=(\d+) replayed=(\d+) refused=(\d+) "
                        r"lost_killed=(\d+) violations=(\d+)", run.stdout)
    assert summary is not None, run.stdout
    acked, acked_dr, _replayed, _refused, _lost, violations = map(int, summary.groups())
    assert violations == 0
    assert acked > 0 and acked_dr > 0        # writes before the kill, and after failover
