"""The library tries another replica when one cannot serve a read (issue 13): a replica
that answers ``ReplicaDamaged`` or an internal error costs the caller nothing while another
replica can serve the key.  Writes are not retried on an internal error.

Bricks are real ``Brick`` objects on the in-memory network; the failing replica's storage
read is replaced by one that raises, so every read routed to it fails on the brick.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dds.bricks.server import Brick
from dds.errors import DDSError, InternalError, ReplicaDamaged
from dds.lib.client import DDSClient, GetResult
from tests.sim.network import SimCluster

KEY = b"the-key"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    c = SimCluster(tmp_path, n=3, latency=0.001)
    yield c
    c.close()


def broken(brick: Brick, error: BaseException) -> None:
    """Every storage read of ``brick`` raises ``error`` from now on."""
    def read(pid: str, key: bytes) -> Any:
        raise error
    brick.storage.read = read      # type: ignore[method-assign]


def reads_from_every_replica(cluster: SimCluster, client: DDSClient, n: int = 60
                             ) -> list[GetResult]:
    """``n`` reads: the library picks replicas at random, so the broken one gets some."""
    return [cluster.run(client.get(KEY)) for _ in range(n)]


@pytest.mark.parametrize("error", [ReplicaDamaged("bad file"), RuntimeError("bug")],
                         ids=["replica-damaged", "internal-error"])
def test_a_read_is_served_by_another_replica_when_one_cannot(
        cluster: SimCluster, error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    client = cluster.client(timeout=5.0)
    version = cluster.run(client.put(KEY, b"value"))
    bad = cluster.replicas(KEY)[0]
    broken(bad, error)
    caplog.set_level(logging.DEBUG, logger="dds.lib")

    results = reads_from_every_replica(cluster, client)

    assert results == [GetResult(b"value", version)] * len(results)
    retried = client.metrics.counters["get_replica_errors_total"]
    assert retried > 0, "the broken replica was never picked: the test proves nothing"
    lines = [r for r in caplog.records if "trying another replica" in r.getMessage()]
    assert len(lines) == retried and all(r.levelno == logging.DEBUG for r in lines)
    assert bad.id in lines[0].getMessage()


def test_a_read_that_no_replica_can_serve_fails_with_the_replicas_error(
        cluster: SimCluster) -> None:
    client = cluster.client(timeout=5.0)
    cluster.run(client.put(KEY, b"value"))
    for b in cluster.replicas(KEY):
        broken(b, ReplicaDamaged(f"{b.id}: bad file"))
    began = cluster.clock.seconds()

    error = cluster.fail_of(client.get(KEY))

    assert isinstance(error, ReplicaDamaged), error
    assert cluster.clock.seconds() - began < 1.0, "waited for the deadline instead"


def test_a_write_is_not_retried_on_an_internal_error(cluster: SimCluster) -> None:
    client = cluster.client(timeout=5.0)
    cluster.run(client.put(KEY, b"one"))
    cluster.net.deliver_in_flight()         # its one-way COMMITs applied (parallel commit)
    bad = cluster.replicas(KEY)[0]
    broken(bad, RuntimeError("bug"))       # the PREPARE's read of the key fails there

    error = cluster.fail_of(client.put(KEY, b"two"))

    assert isinstance(error, DDSError) and isinstance(error, InternalError), error
    assert client.metrics.counters["write_retries_total"] == 0
    # Nothing applied anywhere: the other members' YES votes were undone.
    pid = cluster.pid(KEY)
    assert [b.storage.read(pid, KEY).version for b in cluster.replicas(KEY)[1:]] == [1, 1]
    assert cluster.locks_held() == {b.id: 0 for b in cluster.bricks}
