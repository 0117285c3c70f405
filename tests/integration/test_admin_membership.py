"""``dds-admin status`` membership columns and ``dds-admin recover``, end to end against
real brick processes with short membership leases (DESIGN §5–7).

The admin tool runs as a subprocess (it runs its own reactor, the test process already
runs one); it finds the bricks through ``--seeds`` and the admin secret through DDS_ADMIN_SECRET.
Waiting is polling with deadlines, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from dds.tools.status import last_exclusions

from tests.harness.admin import run_admin
from tests.harness.cluster import Cluster

LEASE_MS = 1000
ADMIN = Path(sys.executable).with_name("dds-admin")
COMMAND_TIMEOUT_S = 60


def admin(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(ADMIN)] if ADMIN.exists() else [sys.executable, "-m", "dds.tools.admin"]
    env = {**os.environ, "DDS_ADMIN_SECRET": cluster.admin_secret}
    return run_admin(argv + [args[0], "--seeds", ",".join(cluster.seeds), *args[1:]],
                     env, timeout=COMMAND_TIMEOUT_S)


def status_until(cluster: Cluster, done: Any, timeout: float = 10.0) -> dict[str, Any]:
    """``status --json`` until ``done(report)`` holds (a record change reaches the other
    members a moment after the writer saw it committed)."""
    deadline = time.monotonic() + timeout
    while True:
        result = admin(cluster, "status", "--json")
        assert result.returncode in (0, 1), result.stderr      # 1: not healthy
        report: dict[str, Any] = json.loads(result.stdout)
        if done(report) or time.monotonic() > deadline:
            return report


def member(report: dict[str, Any], rg: str, brick: str) -> dict[str, Any]:
    group = next(g for g in report["rgs"] if g["name"] == rg)
    return next(m for m in group["members"] if m["brick"] == brick)


def group(report: dict[str, Any], rg: str) -> dict[str, Any]:
    return next(g for g in report["rgs"] if g["name"] == rg)


@pytest_twisted.ensureDeferred
async def test_status_shows_a_killed_member_excluded_with_the_reason(
        cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2,
                                       lease_ms=LEASE_MS)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    assert await client.put(b"k", b"v1") == 1
    rg = client.router.route(client.map, b"k").rg.name
    cluster.brick("b3").stop(signal.SIGKILL)
    assert await client.put(b"k", b"v2") == 2          # after the exclusion of b3
    await client.close()

    report = status_until(cluster, lambda r: member(r, rg, "b3")["state"] == "excluded"
                          and group(r, rg)["last_exclusion"] is not None)
    victim = member(report, rg, "b3")
    assert (victim["state"], victim["up"], victim["serving"]) == ("excluded", False, False)
    last = group(report, rg)["last_exclusion"]
    assert last["member"] == "b3" and last["reason"]
    assert last["coordinator"] in ("b1", "b2") and last["at"] > 0
    survivor = member(report, rg, "b1")
    assert survivor["lease"] == "valid" and survivor["own_state"] == "active"

    human = admin(cluster, "status")
    assert human.returncode == 1, human.stderr          # b3 is down: not healthy
    assert "membership" in human.stdout and "excluded" in human.stdout
    assert last["reason"][:20] in " ".join(human.stdout.split())


@pytest_twisted.ensureDeferred
async def test_recover_recopies_an_active_brick_and_ends_active(cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2,
                                       lease_ms=LEASE_MS)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    for i in range(100):
        await client.put(b"key%d" % i, b"x" * 100)
    rgs = {rg.name for rg in client.map.rgs.values() if rg.member_state("b2") is not None}
    await client.close()

    result = admin(cluster, "recover", "b2", "--json", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and set(report["started"]) == rgs
    assert set(report["rgs"]) == rgs
    for row in report["rgs"].values():
        assert (row["phase"], row["member"]) == ("done", "active"), row
        assert row["copy_s"] is not None and row["fenced_s"] is not None
    assert sum(row["bytes_total"] for row in report["rgs"].values()) > 0
    await cluster.wait_serving(reactor, [cluster.brick("b2")], timeout=5.0)


@pytest_twisted.ensureDeferred
async def test_recover_of_a_brick_not_in_the_map_names_it(cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2,
                                       lease_ms=LEASE_MS)
    await cluster.init(reactor, wait_serving=False)
    result = admin(cluster, "recover", "b9")
    assert result.returncode == 1
    assert "error: brick 'b9' is not in the map (bricks: b1, b2, b3)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest_twisted.ensureDeferred
async def test_recover_of_an_unreachable_brick_names_it(cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2,
                                       lease_ms=LEASE_MS)
    await cluster.init(reactor, wait_serving=False)
    victim = cluster.brick("b3")
    victim.stop(signal.SIGTERM)
    result = admin(cluster, "recover", "b3")
    assert result.returncode == 1
    assert f"error: brick b3 at {victim.address} does not answer" in result.stderr
    assert "Traceback" not in result.stderr


def test_last_exclusion_is_the_newest_record_version_on_any_brick() -> None:
    def event(version: int, at: float, member: str, state: str = "excluded") -> dict:
        return {"rg": "rg0", "version": version, "member": member, "state": state,
                "reason": f"r{version}", "coordinator": "b1", "at": at}
    bricks = [
        # b1's clock runs ahead: wall time must not decide which exclusion is newer.
        {"id": "b1", "up": True, "changes": {"history": [event(2, 500.0, "b3")]}},
        {"id": "b2", "up": True, "changes": {"history": [
            event(2, 100.0, "b3"), event(3, 101.0, "b3", "recovering"),
            event(5, 102.0, "b2")]}},
        {"id": "b3", "up": False},
    ]
    newest = last_exclusions(bricks)["rg0"]
    assert (newest["member"], newest["version"], newest["reason"]) == ("b2", 5, "r5")
    bricks[1]["up"] = False
    assert last_exclusions(bricks)["rg0"]["version"] == 2
