"""The working core end to end: real brick processes on loopback, real clients."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList

from dds.errors import Exists, VersionMismatch
from dds.lib import DDSClient

from tests.harness.aio import stop
from tests.harness.cluster import Cluster


async def _gather(ds: list[Any]) -> list[Any]:
    results = await DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
    return [r for _ok, r in results]


async def _read_every_replica(cluster: Cluster, client: DDSClient,
                              keys: list[bytes]) -> dict[str, dict[bytes, Any]]:
    """Read each key directly from every replica of its RG (bypassing replica choice)."""
    conns = {b.id: await cluster.admin_connection(reactor, b) for b in cluster.bricks}
    seen: dict[str, dict[bytes, Any]] = {b.id: {} for b in cluster.bricks}
    calls, where = [], []
    for key in keys:
        route = client.router.route(client.map, key)
        for brick in route.replicas:
            calls.append(conns[brick.id].call("get", {"key": key, **route.ref()}))
            where.append((brick.id, key))
    for (bid, key), reply in zip(where, await _gather(calls)):
        seen[bid][key] = (reply["value"], reply["version"])
    for c in conns.values():
        c.close()
    return seen


@pytest_twisted.ensureDeferred
async def test_ten_thousand_puts_are_readable_from_every_replica(cluster_factory: Any) -> None:
    cluster = cluster_factory(bricks=6, replication=3, partitions=16)
    await cluster.init(reactor)
    client = await cluster.client(reactor)
    keys = [b"key-%05d" % i for i in range(10_000)]
    for start in range(0, len(keys), 500):
        await _gather([client.put(k, b"value-" + k) for k in keys[start:start + 500]])
    results = await _gather([client.get(k) for k in keys])
    assert [(r.value, r.version) for r in results] == [(b"value-" + k, 1) for k in keys]
    seen = await _read_every_replica(cluster, client, keys)
    copies = sum(len(v) for v in seen.values())
    assert copies == 3 * len(keys)
    for bid, values in seen.items():
        for key, got in values.items():
            assert got == (b"value-" + key, 1), f"{bid} has {got} for {key!r}"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_library_holding_an_old_map_is_corrected_and_succeeds(cluster_factory: Any
                                                                       ) -> None:
    cluster = cluster_factory(bricks=3, replication=3, partitions=4)
    await cluster.init(reactor)
    old = await cluster.client(reactor)
    rg = next(iter(old.map.rgs.values()))
    # Advance the RG record behind the library's back (a new version, members reordered).
    newer = rg.with_changes(members=tuple(reversed(rg.members)))
    for b in cluster.bricks:
        conn = await cluster.admin_connection(reactor, b)
        await conn.call("map_push", {"records": [newer.canonical()]})
        conn.close()
    key = next(k for k in (b"k%d" % i for i in range(1000))
               if old.map.route(k)[1].name == rg.name)
    assert await old.put(key, b"after-change") == 1
    assert old.map.rgs[rg.name].version == newer.version
    assert old.metrics.counters["map_repairs_total"] >= 1
    assert (await old.get(key)).value == b"after-change"
    await old.close()


@pytest_twisted.ensureDeferred
async def test_racing_compare_and_put_increments_lose_no_increment(cluster_factory: Any
                                                                   ) -> None:
    cluster = cluster_factory(bricks=3, replication=3, partitions=4)
    await cluster.init(reactor)
    clients = [await cluster.client(reactor, timeout=30.0) for _ in range(16)]
    per_client = 10
    key = b"counter"

    async def incrementer(client: DDSClient) -> int:
        done = conflicts = 0
        while done < per_client:
            r = await client.get(key)
            current = int(r.value or b"0")
            try:
                await client.compare_and_put(key, b"%d" % (current + 1), r.version)
                done += 1
            except VersionMismatch:
                conflicts += 1
        return conflicts

    from twisted.internet.defer import Deferred
    await _gather([Deferred.fromCoroutine(incrementer(c)) for c in clients])
    final = await clients[0].get(key)
    assert int(final.value or b"0") == 16 * per_client
    assert final.version == 16 * per_client
    for c in clients:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_create_from_eight_clients_succeeds_exactly_once(cluster_factory: Any) -> None:
    cluster = cluster_factory(bricks=3, replication=3, partitions=4)
    await cluster.init(reactor)
    clients = [await cluster.client(reactor) for _ in range(8)]
    results = await DeferredList([c.create(b"only-once", b"from-%d" % i)
                                  for i, c in enumerate(clients)], consumeErrors=True)
    winners = [r for ok, r in results if ok]
    losers = [r.value for ok, r in results if not ok]
    assert winners == [1]
    assert len(losers) == 7 and all(isinstance(e, Exists) for e in losers)
    value = (await clients[0].get(b"only-once")).value
    assert value is not None and value.startswith(b"from-")
    for c in clients:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_a_brick_restarted_with_sigterm_keeps_its_data(cluster_factory: Any) -> None:
    # Its own files, not a copy from the others: no re-sync on start.
    cluster = cluster_factory(bricks=3, replication=3, partitions=4,
                              brick_settings={"recover_on_start": False})
    await cluster.init(reactor)
    client = await cluster.client(reactor)
    keys = [b"durable-%d" % i for i in range(300)]
    await _gather([client.put(k, k[::-1]) for k in keys])
    b1 = cluster.brick("b1")
    assert await stop(b1) == [0]
    assert any(e.get("msg") == "brick b1 stopped cleanly" for e in b1.log_events())
    b1.start()
    b1.wait_ready()
    await cluster.wait_serving(reactor, cluster.bricks)
    seen = await _read_every_replica(cluster, client, keys)
    assert seen["b1"] == {k: (k[::-1], 1) for k in keys}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_brick_runs_on_the_lean_epoll_reactor(cluster_factory: Any) -> None:
    cluster = cluster_factory(bricks=1, replication=1, partitions=1)
    await cluster.init(reactor)
    b1 = cluster.brick("b1")
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{b1.http_port}/healthz",
                                               timeout=10).read())
    assert health["reactor"] == "LeanEPollReactor"
    from dds.version import VERSION
    assert any(e.get("msg") == f"brick b1 (dds {VERSION}) runs on LeanEPollReactor"
               for e in b1.log_events())


def _health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        reply = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
        return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest_twisted.ensureDeferred
async def test_healthz_says_503_while_a_restarted_brick_resyncs_and_200_after(
        cluster_factory: Any) -> None:
    """A rolling restart waits for 200: a restarted brick that cannot re-sync yet (the
    other members are stopped) is not healthy, and names the RGs it is re-syncing."""
    from tests.harness.aio import eventually

    cluster = cluster_factory(bricks=3, replication=3, partitions=4)
    await cluster.init(reactor)
    b1, others = cluster.brick("b1"), [cluster.brick("b2"), cluster.brick("b3")]
    assert _health(b1.http_port)[0] == 200
    assert b1.stop(signal.SIGTERM) == 0
    for b in others:
        b.send_signal(signal.SIGSTOP)
    try:
        b1.start()
        b1.wait_ready()
        code, health = _health(b1.http_port)
        assert code == 503 and health["resyncing"] == ["rg0", "rg1", "rg2"], health
    finally:
        for b in others:
            b.send_signal(signal.SIGCONT)

    async def healthy() -> bool:
        return _health(b1.http_port)[0] == 200
    await eventually(healthy, 60.0, "b1 to re-sync and report healthy")
