"""Prepared transactions survive a brick's death: a restarted brick restores every YES
vote it recorded, with its lock, and resolves it with the other members (termination)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds.bricks.txlog import undecided_votes
from dds.failpoints import CRASH_EXIT_CODE

from tests.harness import zygote
from tests.harness.aio import call, eventually, replica_value, stop
from tests.harness.cluster import CLUSTER, Cluster

WAIT_S = 30.0


async def _nothing_prepared(cluster: Cluster) -> bool:
    for b in cluster.bricks:
        status = await call(cluster, b, "status", {})
        if status["prepared"] or status["metrics"].get("locks_held"):
            return False
    return True


def _prepared_rows(brick: Any, pid: str) -> int:
    """Recorded YES votes of ``pid`` not settled in the brick's transaction log (read
    while it is down or up)."""
    return sum(1 for vote in undecided_votes(brick.data_dir) if vote[2] == pid)


@pytest_twisted.ensureDeferred
async def test_a_brick_killed_before_applying_a_commit_is_excluded_and_resyncs_it(
        cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=4, lease_ms=1000)
    await cluster.init(reactor)
    # The acknowledged commit mode: the missing COMMIT acknowledgement gets the victim
    # excluded before the write succeeds.
    client = await cluster.client(reactor, timeout=10.0, commit_mode="ack")
    key = b"recover-me"
    assert await client.put(key, b"old") == 1
    route = client.router.route(client.map, key)
    victim = cluster.brick(route.replicas[0].id)
    others = [cluster.brick(b.id) for b in route.replicas[1:]]
    await call(cluster, victim, "failpoint", {"name": "commit.before_apply", "action": "crash"})

    # The victim never acknowledges the COMMIT: it is excluded and the write succeeds.
    assert await client.put(key, b"new") == 2
    assert victim.stop() == CRASH_EXIT_CODE
    for b in others:
        assert await replica_value(cluster, client, b, key) == (b"new", 2)
    assert _prepared_rows(victim, route.pid_text) == 1     # its YES vote, on disk

    victim.start()
    victim.wait_ready()
    await cluster.wait_serving(reactor, cluster.bricks, timeout=WAIT_S)
    await client.maps.refresh()

    async def caught_up() -> bool:
        return await replica_value(cluster, client, victim, key) == (b"new", 2)
    await eventually(caught_up, WAIT_S, "the restarted brick to re-sync the write")
    await eventually(lambda: _nothing_prepared(cluster), WAIT_S, "no prepared transaction")
    assert _prepared_rows(victim, route.pid_text) == 0
    assert any(str(e.get("msg", "")).startswith("restored 1 prepared transactions")
               for e in victim.log_events())
    await client.close()


_COORDINATOR = """
    import sys
    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred
    from dds.lib import DDSClient

    async def main(reactor, seeds, secret, key, value):
        client = await DDSClient.connect(reactor, seeds.split(","), cluster="{cluster}",
                                         secret=secret.encode(), timeout=2.0)
        await client.put(key.encode(), value.encode())

    task.react(lambda reactor, *args: ensureDeferred(main(reactor, *args)), sys.argv[1:])
"""


@pytest.fixture
def patient_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Members hold prepared transactions for ten minutes before asking each other, so
    only a restart can resolve them within the test."""
    cluster = Cluster(tmp_path / "cluster", bricks=3, replication=3, partitions=4,
                      txn_deadline_ms=600_000)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest_twisted.ensureDeferred
async def test_a_whole_cluster_restart_resolves_a_transaction_prepared_everywhere(
        patient_cluster: Cluster) -> None:
    cluster = patient_cluster
    await cluster.init(reactor)
    env = dict(os.environ, DDS_FAILPOINTS="coordinator.after_prepare=crash")
    coordinator = zygote.run(
        [sys.executable, "-c", textwrap.dedent(_COORDINATOR.format(cluster=CLUSTER)),
         ",".join(cluster.seeds), cluster.secret, "in-doubt", "decided-later"],
        env, timeout=60)
    assert coordinator.returncode == CRASH_EXIT_CODE, coordinator.stderr
    assert not await _nothing_prepared(cluster)       # every member voted YES, no decision

    assert await stop(*cluster.bricks) == [0, 0, 0]     # the whole cluster at once
    for b in cluster.bricks:
        b.start()
    for b in cluster.bricks:
        b.wait_ready()

    await eventually(lambda: _nothing_prepared(cluster), WAIT_S,
                     "the restored transaction to be resolved")
    # Resolved is not serving: a member may still be reconciling the RG (it answers
    # NotServing until then), and each replica is read directly below.
    await cluster.wait_serving(reactor, cluster.bricks, timeout=WAIT_S)
    client = await cluster.client(reactor)
    for b in cluster.bricks:     # all prepared means everyone voted YES: commit
        assert await replica_value(cluster, client, b, b"in-doubt") == (b"decided-later", 1)
    await client.close()
