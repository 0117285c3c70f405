"""Failpoints with real processes: a brick armed through the admin message, a client
(coordinator) armed through ``DDS_FAILPOINTS``, and a brick refusing a bad variable.

Waiting is always polling a condition with a deadline.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds import failpoints
from dds.bricks.txlog import WRITE, log_files, read_batches
from dds.errors import DDSError
from dds.failpoints import CRASH_EXIT_CODE

from tests.harness import zygote
from tests.harness.aio import call, eventually, replica_value
from tests.harness.cluster import CLUSTER, Cluster
from tests.harness.processes import BrickProcess, wait_until

TXN_DEADLINE_MS = 500
WAIT_S = 30.0


def sqlite_value(brick: BrickProcess, pid: str, key: bytes) -> tuple[bytes | None, int]:
    """Read the replica's SQLite file directly (the brick process is not running)."""
    db = sqlite3.connect(str(brick.data_dir / f"{pid}.sqlite"))
    try:
        row = db.execute("SELECT value, version FROM kv WHERE key = ?", (key,)).fetchone()
    finally:
        db.close()
    return (row[0], row[1]) if row else (None, 0)


def logged_value(brick: BrickProcess, pid: str, key: bytes) -> tuple[bytes | None, int]:
    """The key's newest committed write in the brick's transaction log, else what its
    replica's file holds (the brick process is not running)."""
    found = sqlite_value(brick, pid, key)
    for path in log_files(brick.data_dir):
        for batch in read_batches(path):
            for rec in batch:
                if rec[0] == WRITE and rec[2] == pid and rec[3] == key and rec[5] > found[1]:
                    found = (rec[4], rec[5])
    return found


@pytest_twisted.ensureDeferred
async def test_a_brick_crashing_after_commit_before_ack_keeps_the_write(
        cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=4, lease_ms=1000)
    await cluster.init(reactor)
    # The acknowledged commit mode: the victim's missing COMMIT acknowledgement is what
    # gets it excluded (with parallel commit the write succeeds at the last YES).
    client = await cluster.client(reactor, timeout=10.0, commit_mode="ack")
    key = b"failpoint-key"
    route = client.router.route(client.map, key)
    victim = cluster.brick(route.replicas[1].id)
    others = [cluster.brick(b.id) for b in route.replicas if b.id != victim.id]
    reply = await call(cluster, victim, "failpoint",
                       {"name": "commit.after_apply_before_ack", "action": "crash"})
    assert reply == {"armed": {"commit.after_apply_before_ack": "crash"}}

    # The victim never acknowledges: it is excluded, and the write is on every active
    # member of the new record, so it succeeds (DESIGN §4, participant failure).
    assert await client.put(key, b"new") == 1
    assert victim.id not in client.router.route(client.map, key).rg.active_members

    wait_until(lambda: not victim.alive(), WAIT_S, f"{victim.id} to exit")
    assert victim.stop() == CRASH_EXIT_CODE
    assert "failpoint commit.after_apply_before_ack: crash" in victim.log_tail()
    # The commit was durable before the crash: its write is in the brick's transaction
    # log (the replica's file gets it later, or when the brick restarts).
    assert logged_value(victim, route.pid_text, key) == (b"new", 1)
    for b in others:
        assert await replica_value(cluster, client, b, key) == (b"new", 1)

    # Restarted (without the failpoint: it lived only in the dead process), it has it too.
    victim.start()
    victim.wait_ready()
    status = await call(cluster, victim, "status", {})
    assert status["failpoints"] == {}
    seen: list[tuple[bytes | None, int]] = []

    async def victim_answers() -> bool:
        try:
            seen.append(await replica_value(cluster, client, victim, key))
            return True
        except DDSError:          # e.g. NotServing while it re-syncs
            return False
    await cluster.wait_serving(reactor, cluster.bricks, timeout=WAIT_S)
    await client.maps.refresh()
    await eventually(victim_answers, WAIT_S, f"{victim.id} to serve again")
    assert seen[-1] == (b"new", 1)
    await client.close()


_CLIENT = """
    import sys
    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred
    from dds.lib import DDSClient

    async def main(reactor, seeds, secret, key, value):
        client = await DDSClient.connect(reactor, seeds.split(","), cluster="{cluster}",
                                         secret=secret.encode(), timeout=0.5)
        print("connected", flush=True)
        version = await client.put(key.encode(), value.encode())
        print("put returned", version, flush=True)

    task.react(lambda reactor, *args: ensureDeferred(main(reactor, *args)), sys.argv[1:])
"""


@pytest.fixture
def short_deadline_cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster", bricks=3, replication=3, partitions=4,
                      txn_deadline_ms=TXN_DEADLINE_MS)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest_twisted.ensureDeferred
async def test_a_coordinator_crashing_after_its_decision_is_resolved_by_termination(
        short_deadline_cluster: Cluster) -> None:
    cluster = short_deadline_cluster
    await cluster.init(reactor)
    client = await cluster.client(reactor)
    key = b"orphaned-key"
    assert await client.put(key, b"old") == 1
    route = client.router.route(client.map, key)
    replicas = [cluster.brick(b.id) for b in route.replicas]
    # Parallel commit reported "old" at the last YES: wait until every replica applied it
    # (a read waits for that), or the next write could meet its lock and abort instead.
    for b in replicas:
        assert await replica_value(cluster, client, b, key) == (b"old", 1)

    env = {k: v for k, v in os.environ.items() if k != failpoints.ENV_VAR}
    env[failpoints.ENV_VAR] = "coordinator.after_decision=crash"
    coordinator = zygote.run(
        [sys.executable, "-c", textwrap.dedent(_CLIENT.format(cluster=CLUSTER)),
         ",".join(cluster.seeds), cluster.secret, key.decode(), "new"],
        env, timeout=60)
    assert coordinator.returncode == CRASH_EXIT_CODE, coordinator.stderr
    assert coordinator.stdout.split() == ["connected"]            # put never returned
    assert "failpoint coordinator.after_decision: crash" in coordinator.stderr

    async def resolved_everywhere() -> bool:
        for b in replicas:
            status = await call(cluster, b, "status", {})
            if status["prepared"] or status["metrics"].get("locks_held"):
                return False
        return True
    await eventually(resolved_everywhere, WAIT_S, "termination to resolve the transaction")
    for b in replicas:
        assert await replica_value(cluster, client, b, key) == (b"new", 2)
    statuses = [await call(cluster, b, "status", {}) for b in replicas]
    assert sum(s["metrics"].get("txn_terminations_total", 0) for s in statuses) >= 1
    terminated = [e for b in replicas for e in b.log_events()
                  if str(e.get("msg", "")).startswith("terminated ")]
    assert terminated and all("by commit" in str(e["msg"]) for e in terminated)
    assert (await client.get(key)).value == b"new"
    await client.close()


def test_a_brick_with_a_bad_failpoint_variable_refuses_to_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    brick = BrickProcess("b1", tmp_path, exec_path=True)
    monkeypatch.setenv(failpoints.ENV_VAR, "prepare.after_vote=crash;prepare.vote=pause")
    brick.start()
    try:
        wait_until(lambda: not brick.alive(), WAIT_S, "the brick to exit")
    finally:
        code = brick.stop(timeout=WAIT_S)
    assert code == 2      # a configuration error, named on one line
    assert not (brick.data_dir / "ready.json").exists()
    assert "DDS_FAILPOINTS: entry 'prepare.vote=pause': unknown failpoint" in brick.log_tail()
