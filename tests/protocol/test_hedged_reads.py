"""Reads do not wait on a paused replica: a read its replica has not answered within the
hedge delay goes to a second replica too, and the first valid answer wins."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from dds.errors import Timeout
from dds.lib import DDSClient, GetResult
from dds.lib.hedging import CAP_S, FLOOR_S, HedgeDelay

from tests.sim.network import SimCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    c = SimCluster(tmp_path, n=3)
    yield c
    c.net.resume(c.bricks[0].id)
    c.close()


def _connected_everywhere(cluster: SimCluster, client: DDSClient) -> None:
    """Reads until the client holds a connection to every brick (the fast path, and
    hedging, use open connections only)."""
    for i in range(200):
        cluster.run(client.get(b"warm-%d" % i))
        if len(client.connections.open) == len(cluster.bricks):
            return
    raise AssertionError("the client never connected to every brick")


def _reads_from(cluster: SimCluster, client: DDSClient, paused: str, n: int
                ) -> list[float]:
    """How long each of ``n`` reads of keys ``paused`` holds took (a read goes to the
    least loaded replica, ties broken at random: some go to ``paused`` first)."""
    took = []
    i = 0
    while len(took) < n:
        i += 1
        key = b"k%d" % i
        if paused not in {b.id for b in cluster.replicas(key)}:
            continue
        start = cluster.clock.seconds()
        got = _outcome(cluster, client.get(key))
        took.append(cluster.clock.seconds() - start if got == GetResult(None, 0)
                    else float("inf"))
    return took


def _outcome(cluster: SimCluster, d: object) -> object:
    """The result, or the DDSError it failed with."""
    try:
        return cluster.run(d)  # type: ignore[arg-type]
    except Timeout as e:
        return e


def test_a_paused_replica_costs_a_read_at_most_the_hedge_delay(cluster: SimCluster) -> None:
    client = cluster.client(timeout=10.0, rng=random.Random(7))
    _connected_everywhere(cluster, client)
    cluster.net.pause(cluster.bricks[0].id, stop_process=True)
    took = _reads_from(cluster, client, cluster.bricks[0].id, 30)
    assert max(took) <= CAP_S + 0.01                 # not the 10 s timeout
    assert client.metrics.value("get_hedged") >= 1


def test_without_hedging_a_read_waits_for_the_paused_replica(cluster: SimCluster) -> None:
    """The same scenario with ``hedge=False``: the test above can fail."""
    client = cluster.client(timeout=1.0, hedge=False, rng=random.Random(7))
    _connected_everywhere(cluster, client)
    cluster.net.pause(cluster.bricks[0].id, stop_process=True)
    took = _reads_from(cluster, client, cluster.bricks[0].id, 30)
    assert max(took) == float("inf")         # a read that went to b0 timed out
    assert client.metrics.value("get_hedged") == 0


def test_the_hedge_delay_follows_the_p99_between_floor_and_cap() -> None:
    delay = HedgeDelay()
    assert delay.delay() == CAP_S                    # nothing seen yet
    for _ in range(512):
        delay.observe(0.001)
    assert delay.delay() == FLOOR_S
    for _ in range(512):
        delay.observe(0.020)
    assert delay.delay() == pytest.approx(0.020)
    for _ in range(512):
        delay.observe(3.0)
    assert delay.delay() == CAP_S
