"""Running ``dds-admin`` as a process against a test cluster, as an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dds import failpoints

from tests.harness.cluster import Cluster
from tests.harness.processes import BrickProcess
from tests.harness import zygote

COMMAND_TIMEOUT_S = 120

#: ``dds-admin`` processes run through this module and ``tests.harness.local`` so far,
#: and their wall seconds (``tests.harness.timing`` reports both).
commands = 0
command_seconds = 0.0


def run_admin(argv: list[str], env: dict[str, str], cwd: Path | None = None,
              timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
    timeout=timeout)`` for a ``dds-admin`` command (``python -m dds.tools.admin ...`` or
    the ``dds-admin`` script), forked from the harness's zygote when it can be
    (``tests/harness/zygote.py``: the same command, without importing its libraries
    again), and counted."""
    began = time.monotonic()
    try:
        return zygote.run(argv, env, timeout, cwd)
    finally:
        count(time.monotonic() - began)


def count(seconds: float) -> None:
    """One more admin command, which took ``seconds``."""
    global commands, command_seconds
    commands += 1
    command_seconds += seconds


#: What a test process's environment may hold that must not reach a child by accident.
_PRIVATE = ("DDS_SECRET", "DDS_BRICK_SECRET", "DDS_ADMIN_SECRET", "DDS_CLIENT_SECRET",
            "DDS_CA_FILE", "DDS_CERT_FILE", "DDS_KEY_FILE", failpoints.ENV_VAR)


def clean_env() -> dict[str, str]:
    """The test process's environment without secrets, TLS files or failpoints."""
    return {k: v for k, v in os.environ.items() if k not in _PRIVATE}


def admin(cluster: Cluster, *args: str, seeds: list[BrickProcess] | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``dds-admin ARGS --seeds … --secret-file …``; ``env`` is added to a clean
    environment (no secret, no failpoint of the test process)."""
    secret = cluster.root / "secrets" / "admin"
    base = clean_env()
    addresses = ",".join(b.address for b in (seeds or cluster.bricks))
    return run_admin([sys.executable, "-m", "dds.tools.admin", *args, "--seeds", addresses,
                      "--secret-file", str(secret)], {**base, **(env or {})})


def admin_json(cluster: Cluster, *args: str, code: int = 0,
               seeds: list[BrickProcess] | None = None) -> dict[str, Any]:
    """``admin(… --json)`` with exit status ``code``, its report decoded."""
    result = admin(cluster, *args, "--json", seeds=seeds)
    assert result.returncode == code, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report
