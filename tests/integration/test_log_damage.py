"""A brick whose transaction log was found damaged at start copies again every replica the
damaged batch held (here the one partition of the flipped write; an undecodable batch
would mean all of them) before serving it, even when it restarts before the copy (the
needs-copy markers outlive the damaged log), and even when no other member serves the RG
at first."""

from __future__ import annotations

import signal
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from dds.bricks.needscopy import QUARANTINE_DIR, marked
from tests.faults.bitflip import flip_stored_byte
from tests.harness.aio import eventually, replica_value
from tests.harness.cluster import Cluster

LEASE_MS = 1000


async def written(cluster_factory: Any) -> tuple[Cluster, list[bytes]]:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2,
                                       lease_ms=LEASE_MS,
                                       brick_settings={"recover_on_start": False})
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    keys = [b"key%d" % i for i in range(8)]
    for key in keys:
        await client.put(key, b"value of " + key)
    await client.close()
    return cluster, keys


def damage_log(cluster: Cluster, brick_id: str) -> None:
    brick = cluster.brick(brick_id)
    assert brick.stop(signal.SIGTERM) == 0
    what, key = flip_stored_byte(brick.data_dir, "log", 0)
    assert key is not None and "logged write" in what, what


@pytest_twisted.ensureDeferred
async def test_a_brick_whose_log_was_damaged_copies_the_replica_it_held_before_serving(
        cluster_factory: Any) -> None:
    cluster, keys = await written(cluster_factory)
    damage_log(cluster, "b3")
    victim = cluster.brick("b3")
    victim.start()
    victim.wait_ready()
    await cluster.wait_serving(reactor, cluster.bricks)

    async def copied() -> bool:
        return cluster.metric("b3", "replicas_damaged_recopied_total") >= 1
    await eventually(copied, 60, "b3 to copy the damaged write's replica again")
    assert cluster.metric("b3", "txlog_damaged_records") >= 1
    assert marked(victim.data_dir) == {}
    # Only the flipped write's partition was in doubt: the other was not copied.
    assert cluster.metric("b3", "replicas_damaged_recopied_total") == 1
    client = await cluster.client(reactor, timeout=10.0)
    for key in keys:
        assert await replica_value(cluster, client, victim, key) == (b"value of " + key, 1)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_damaged_log_is_not_forgotten_by_a_second_restart_with_nobody_serving(
        cluster_factory: Any) -> None:
    """The whole RG stops; b3's log is damaged.  b3 starts alone (no quorum: it can do
    nothing) and stops again, so its damaged log is gone.  Then all three start: nobody
    serves the RGs, b1 and b2 (sound) reconcile them, and b3 must still copy."""
    cluster, keys = await written(cluster_factory)
    for b in ("b1", "b2"):
        assert cluster.brick(b).stop(signal.SIGTERM) == 0
    damage_log(cluster, "b3")
    victim = cluster.brick("b3")
    victim.start()
    victim.wait_ready()
    assert len(marked(victim.data_dir)) == 1       # the flipped write's partition
    assert (victim.data_dir / QUARANTINE_DIR).is_dir()
    assert victim.stop(signal.SIGTERM) == 0
    assert "transaction log was damaged" in " ".join(marked(victim.data_dir).values())
    for b in cluster.bricks:
        b.start()
    for b in cluster.bricks:
        b.wait_ready()

    async def copied() -> bool:
        return cluster.metric("b3", "replicas_damaged_recopied_total") >= 1
    await eventually(copied, 90, "b3 to copy the damaged write's replica again")
    assert marked(victim.data_dir) == {}
    await cluster.wait_serving(reactor, cluster.bricks)
    client = await cluster.client(reactor, timeout=10.0)
    for key in keys:
        assert await replica_value(cluster, client, victim, key) == (b"value of " + key, 1)
    await client.close()
