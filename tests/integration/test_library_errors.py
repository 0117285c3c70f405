"""The errors a service developer meets first (issue 14), against real bricks: a wrong
secret and a cluster that is down."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds.errors import AuthenticationFailed, Unavailable
from dds.lib import DDSClient

from tests.harness.aio import eventually
from tests.harness.cluster import CLUSTER

#: Far below the client's timeout: "fails fast" means without waiting for it.
_FAST_S = 3.0


@pytest_twisted.ensureDeferred
async def test_a_wrong_secret_is_authentication_failed_naming_the_seed(
        cluster_factory: Any) -> None:
    cluster = cluster_factory(bricks=3, replication=3, partitions=4)
    await cluster.init(reactor)
    seed = cluster.seeds[0]
    with pytest.raises(AuthenticationFailed) as info:
        await DDSClient.connect(reactor, [seed], cluster=CLUSTER, secret=b"not-the-secret")
    assert info.value.retryable is False
    assert seed in info.value.message
    assert "refused the credentials" in info.value.message


async def _down_cluster(cluster_factory: Any) -> tuple[Any, DDSClient]:
    """A client that knew the cluster, whose bricks have all stopped since (their ports
    are closed: every connection is refused), once it has seen its connections close: a
    request already sent when its brick died may have arrived, and its write is rightly
    ``Indeterminate``."""
    cluster = cluster_factory(bricks=3, replication=3, partitions=4)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    await client.put(b"k", b"v")
    for brick in cluster.bricks:
        brick.stop()

    async def all_closed() -> bool:
        return not client.connections.open
    await eventually(all_closed, 10.0, "the client to see its connections close")
    return cluster, client


@pytest_twisted.ensureDeferred
async def test_a_get_with_every_brick_down_fails_fast_naming_the_addresses(
        cluster_factory: Any) -> None:
    cluster, client = await _down_cluster(cluster_factory)
    started = reactor.seconds()
    with pytest.raises(Unavailable) as info:
        await client.get(b"k")
    assert reactor.seconds() - started < _FAST_S
    for address in cluster.seeds:
        assert address in info.value.message
    assert "refused" in info.value.message
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_put_with_every_brick_down_fails_fast_naming_the_addresses(
        cluster_factory: Any) -> None:
    cluster, client = await _down_cluster(cluster_factory)
    started = reactor.seconds()
    with pytest.raises(Unavailable) as info:
        await client.put(b"k", b"w")
    assert reactor.seconds() - started < _FAST_S
    for address in cluster.seeds:
        assert address in info.value.message
    assert "refused" in info.value.message
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_get_still_succeeds_while_one_replica_answers(cluster_factory: Any) -> None:
    cluster = cluster_factory(bricks=3, replication=3, partitions=4)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    await client.put(b"k", b"v")
    cluster.brick("b1").stop()
    cluster.brick("b2").stop()
    assert (await client.get(b"k")).value == b"v"
    await client.close()
