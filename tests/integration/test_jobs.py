"""Journaled jobs end to end (DESIGN §8): ``dds.tools.jobs.Job`` writing to real brick
processes, read back and cancelled with ``dds-admin jobs`` / ``dds-admin cancel``.

The admin tool runs as a subprocess (it runs its own reactor; the test process already
runs one) and finds the bricks through ``--seeds`` with the admin secret in DDS_ADMIN_SECRET.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from dds.tools.cluster import Target, fetch_map, parse_seeds
from dds.tools.jobs import Job, brick_addresses, unfinished_jobs

from tests.harness.admin import run_admin
from tests.harness.cluster import CLUSTER, Cluster

ADMIN = Path(sys.executable).with_name("dds-admin")
COMMAND_TIMEOUT_S = 60
PLAN = {"pid": "p1.0", "from": "rg1", "to": "rg2",
        "steps": ["incoming", "snapshot", "fence", "delta", "activate", "drop"]}


def admin(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(ADMIN)] if ADMIN.exists() else [sys.executable, "-m", "dds.tools.admin"]
    env = {**os.environ, "DDS_ADMIN_SECRET": cluster.admin_secret}
    return run_admin(argv + [args[0], "--seeds", ",".join(cluster.seeds), *args[1:]],
                     env, timeout=COMMAND_TIMEOUT_S)


def admin_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    result = admin(cluster, *args, "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def target_of(cluster: Cluster) -> Target:
    return Target(parse_seeds(",".join(cluster.seeds)), cluster.admin_secret.encode(), CLUSTER)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def started(cluster_factory: Any) -> tuple[Cluster, Target]:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2)
    await cluster.init(reactor, wait_serving=False)     # the journal needs no leases
    return cluster, target_of(cluster)


@pytest_twisted.ensureDeferred
async def test_jobs_lists_a_running_job_and_cancel_reaches_its_tool(
        cluster_factory: Any) -> None:
    cluster, target = await started(cluster_factory)
    cmap, _seed = await fetch_map(reactor, target)
    job = await Job.create(reactor, target, "move", PLAN, brick_addresses(cmap, ["b1", "b2"]))
    await job.step("incoming", pid="p1.0")
    await job.step("snapshot", bytes=4096)
    assert job.warnings == []

    report = admin_json(cluster, "jobs")
    [listed] = report["jobs"]
    assert (listed["job"], listed["kind"], listed["plan"], listed["state"]) == \
        (job.id, "move", PLAN, "running")
    assert [s["name"] for s in listed["steps"]] == ["incoming", "snapshot"]
    assert listed["steps"][1]["bytes"] == 4096
    assert listed["bricks"] == {"b1": "running", "b2": "running"}
    assert report["unfinished"] == 1 and report["unreachable"] == {}
    table = admin(cluster, "jobs")
    assert table.returncode == 0, table.stderr
    assert job.id in table.stdout and "2/6 (last: snapshot)" in table.stdout

    assert not await job.cancel_requested()
    cancelled = admin_json(cluster, "cancel", job.id)
    assert cancelled["requested_on"] == ["b1", "b2"] and cancelled["ok"]
    assert await job.cancel_requested()
    assert admin_json(cluster, "jobs")["jobs"][0]["state"] == "cancel-requested"
    again = admin(cluster, "cancel", job.id)
    assert again.returncode == 0 and "already requested" in again.stdout

    # The tool stops: it rolls back, records that, and the job is no longer unfinished.
    await job.step("rolled back incoming")
    await job.finish("rolled-back")
    assert admin_json(cluster, "jobs")["jobs"] == []
    every = admin_json(cluster, "jobs", "--all")["jobs"]
    assert [(j["job"], j["state"]) for j in every] == [(job.id, "rolled-back")]
    late = admin(cluster, "cancel", job.id)
    assert late.returncode == 1 and "already finished (rolled-back)" in late.stderr


@pytest_twisted.ensureDeferred
async def test_cancel_of_an_unknown_job_is_an_error(cluster_factory: Any) -> None:
    cluster, _target = await started(cluster_factory)
    result = admin(cluster, "cancel", "move-20990101T000000-beef")
    assert result.returncode == 1
    assert "no job 'move-20990101T000000-beef'" in result.stderr
    assert admin_json(cluster, "jobs")["jobs"] == []


@pytest_twisted.ensureDeferred
async def test_a_job_outlives_an_unreachable_brick_and_a_killed_one(
        cluster_factory: Any) -> None:
    cluster, target = await started(cluster_factory)
    cmap, _seed = await fetch_map(reactor, target)
    warnings: list[str] = []
    # "b9" is a brick being added that does not answer yet: a warning, not a failure.
    bricks = brick_addresses(cmap, ["b1", "b2", "b3", "b9"],
                             extra={"b9": ("127.0.0.1", free_port())})
    job = await Job.create(reactor, target, "add-brick", {"brick": "b9"}, bricks,
                           warn=warnings.append, timeout=2.0)
    assert len(warnings) == 1 and "journal of b9 not written" in warnings[0], warnings
    await job.step("joined")

    # A journal write is durable: a brick killed right after it still has the job.
    b2 = cluster.brick("b2")
    b2.stop(signal.SIGKILL)
    await job.step("copied")                 # b1 and b3 take it; b2 is a warning
    assert any("journal of b2 not written" in w for w in job.warnings)
    b2.start()
    b2.wait_ready()
    scan = await unfinished_jobs(reactor, target)
    assert len(scan.jobs) == 1 and scan.unreachable == {}, scan
    [view] = scan.jobs
    assert view.job == job.id and view.unfinished
    assert [s["name"] for s in view.steps] == ["joined", "copied"]
    assert view.bricks == {"b1": "running", "b2": "running", "b3": "running"}

    # b2 misses the end as well: the merged view still shows the job finished.
    b2.stop(signal.SIGKILL)
    await job.finish("done")
    b2.start()
    b2.wait_ready()
    report = admin_json(cluster, "jobs")
    assert report["jobs"] == [], report
    every = admin_json(cluster, "jobs", "--all")
    assert len(every["jobs"]) == 1, every
    [done] = every["jobs"]
    assert done["state"] == "done"
    assert done["bricks"] == {"b1": "done", "b2": "running", "b3": "done"}
