"""``dds-admin local`` clusters for tests: the admin command run as an operator runs it,
the brick processes a ``local up`` recorded, and the last-resort cleanup of bricks a
failed test left behind.  (Shared by the ``dds-admin`` integration tests; the
``local_cluster`` fixture is in ``tests/integration/conftest.py``.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dds.tools import procs
from dds.tools.runner import wait_for

from tests.harness.admin import run_admin

ADMIN = Path(sys.executable).with_name("dds-admin")
COMMAND_TIMEOUT_S = 120


def admin(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
          via_module: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "dds.tools.admin"] if via_module or not ADMIN.exists() \
        else [str(ADMIN)]
    full_env = {k: v for k, v in os.environ.items() if k != "DDS_SECRET"}
    full_env.update(env or {})
    return run_admin(argv + list(args), full_env, cwd)


def recorded(cluster_dir: Path) -> list[tuple[int, int]]:
    try:
        data = json.loads((cluster_dir / "pids.json").read_text())
    except FileNotFoundError:
        return []
    return [(b["pid"], b["start_time"]) for b in data["bricks"]]


def kill_leftovers(pids: list[tuple[int, int]]) -> None:
    """Last-resort cleanup of brick processes a failed test left behind."""
    for pid, started in pids:
        procs.signal_if_ours(pid, started, signal.SIGKILL)
    wait_for(lambda: not any(procs.is_running(p, s) for p, s in pids), 10.0)


@contextmanager
def local_up(cluster_dir: Path, bricks: int, replication: int,
             partitions: int) -> Iterator[Path]:
    """``local up --dir cluster_dir``; on leaving, ``local down`` and the cleanup of
    whatever it left running, also when the test failed."""
    up = admin("local", "up", "--dir", str(cluster_dir), "--bricks", str(bricks),
               "--replication", str(replication), "--partitions", str(partitions))
    started = recorded(cluster_dir)
    try:
        assert up.returncode == 0, up.stderr
        yield cluster_dir
    finally:
        if recorded(cluster_dir):
            admin("local", "down", "--dir", str(cluster_dir))
        kill_leftovers(started)
