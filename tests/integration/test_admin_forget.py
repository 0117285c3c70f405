"""``dds-admin forget-brick``: a retired, stopped brick disappears from status, repair
and jobs; a brick that still serves or is still a member is refused, nothing changed.
Real bricks (``local up``, 4 bricks in groups of two); b4 is retired by remove-brick."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dds.tools import procs
from dds.tools.runner import wait_for

from tests.harness.local import admin, local_up, recorded


@contextmanager
def _retired_b4(root: Path) -> Iterator[Path]:
    with local_up(root / "cluster", bricks=4, replication=2, partitions=4) as cluster_dir:
        removed = admin("remove-brick", "b4", "--dir", str(cluster_dir), "--json",
                        "--timeout", "120")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert json.loads(removed.stdout)["retired"] == ["b4"]
        yield cluster_dir


@pytest.fixture
def retired_b4(tmp_path: Path) -> Iterator[Path]:
    """b4 retired by remove-brick, still running: for a test that stops it or forgets
    it."""
    with _retired_b4(tmp_path) as cluster_dir:
        yield cluster_dir


@pytest.fixture(scope="module")
def still_retired_b4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The same, shared by the tests that are refused and check that nothing changed."""
    with _retired_b4(tmp_path_factory.mktemp("forget")) as cluster_dir:
        yield cluster_dir


def stop(cluster_dir: Path, brick: str) -> None:
    pid, started = recorded(cluster_dir)[int(brick[1:]) - 1]
    assert procs.signal_if_ours(pid, started, signal.SIGTERM)
    assert wait_for(lambda: not procs.is_running(pid, started), 30.0)


def status(cluster_dir: Path) -> dict[str, Any]:
    result = admin("status", "--dir", str(cluster_dir), "--json", "--timeout", "2")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def bricks_in_status(cluster_dir: Path) -> list[str]:
    return [b["id"] for b in status(cluster_dir)["bricks"]]


def test_forget_brick_refuses_a_retired_brick_that_still_runs(still_retired_b4: Path) -> None:
    retired_b4 = still_retired_b4
    fp = status(retired_b4)["map_fp"]
    result = admin("forget-brick", "b4", "--dir", str(retired_b4))
    assert result.returncode == 1
    assert "error: b4 still runs and answers" in result.stderr
    assert "nothing was changed" in result.stderr
    assert status(retired_b4)["map_fp"] == fp and "b4" in bricks_in_status(retired_b4)


def test_forget_brick_refuses_a_member_of_a_replica_group(still_retired_b4: Path) -> None:
    retired_b4 = still_retired_b4
    result = admin("forget-brick", "b1", "--dir", str(retired_b4))
    assert result.returncode == 1
    assert "error: b1 is still a member of rg" in result.stderr
    assert "remove-brick b1" in result.stderr


def test_forget_brick_refuses_an_unknown_brick(still_retired_b4: Path) -> None:
    retired_b4 = still_retired_b4
    result = admin("forget-brick", "b9", "--dir", str(retired_b4))
    assert result.returncode == 1 and "not in the map: b9" in result.stderr


def test_forget_brick_dry_run_changes_nothing(retired_b4: Path) -> None:
    stop(retired_b4, "b4")
    fp = status(retired_b4)["map_fp"]
    result = admin("forget-brick", "b4", "--dir", str(retired_b4), "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["would_forget"] == ["b4"] and report["forgotten"] == []
    assert status(retired_b4)["map_fp"] == fp and "b4" in bricks_in_status(retired_b4)


def test_a_forgotten_brick_is_gone_from_status_repair_and_jobs(retired_b4: Path) -> None:
    stop(retired_b4, "b4")
    result = admin("forget-brick", "b4", "--dir", str(retired_b4))
    assert result.returncode == 0, result.stderr
    assert "forgot b4" in result.stdout
    # The tombstone reaches every brick (pushed, then gossip): status agrees on one map.
    assert wait_for(lambda: status(retired_b4)["ok"], 30.0)
    assert bricks_in_status(retired_b4) == ["b1", "b2", "b3"]
    assert not re.search(r"\bb4\b", admin("status", "--dir", str(retired_b4)).stdout)
    repair = admin("repair", "--dry-run", "--dir", str(retired_b4))
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert not re.search(r"\bb4\b", repair.stdout + repair.stderr)
    jobs = admin("jobs", "--all", "--dir", str(retired_b4), "--json")
    assert jobs.returncode == 0 and "b4" not in json.dumps(
        json.loads(jobs.stdout).get("unreachable", {}))
    again = admin("forget-brick", "b4", "--dir", str(retired_b4))
    assert again.returncode == 0 and "already forgotten: b4" in again.stdout
