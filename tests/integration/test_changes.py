"""The change stream (DESIGN §12, issue 17) with real brick processes: every acknowledged
write appears, in version order per key; a checkpointed position resumes after a clean
restart of the serving brick (exactly), after it is killed (on another replica, nothing
missed), after a move of the partition to another RG, and after a split (the stream ends
naming the children, which continue it).

"Nothing missed" is checked against the acknowledged writes: a consumer that applies each
change whose version is newer than the one it holds must end with every key at its last
acknowledged version (the stream is compacted and at least once, so a later version of a
key stands for the earlier ones)."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList

from dds.changemsgs import ReadChanges
from dds.lib import DDSClient
from dds.lib.changes import ChangeCursor
from dds.partition import PartitionId
from dds.tools.cluster import Target
from dds.tools.move import move
from dds.tools.split import reshape

from tests.harness.aio import eventually
from tests.harness.cluster import CLUSTER, Cluster

WAIT_S = 60.0


def _target(cluster: Cluster) -> Target:
    return Target(tuple(("127.0.0.1", b.port) for b in cluster.bricks),
                  cluster.admin_secret.encode(), CLUSTER)


def _keys(pid: PartitionId, n: int, tag: str = "key") -> list[bytes]:
    return [k for k in (b"%s-%d" % (tag.encode(), i) for i in range(40 * n))
            if pid.owns(k)][:n]


class Consumer:
    """Applies changes as a consumer should (only a newer version of a key) and keeps
    what it saw, per key in stream order."""

    def __init__(self) -> None:
        self.state: dict[bytes, int] = {}
        self.seen: dict[bytes, list[int]] = {}

    def apply(self, cursor_changes: Any) -> None:
        for c in cursor_changes:
            self.seen.setdefault(c.key, []).append(c.version)
            if c.version > self.state.get(c.key, 0):
                self.state[c.key] = c.version

    def covers(self, acked: dict[bytes, int]) -> bool:
        return all(self.state.get(k, 0) >= v for k, v in acked.items())


async def _catch_up(cursor: ChangeCursor, consumer: Consumer, acked: dict[bytes, int],
                    what: str) -> None:
    """Read pages until the consumer holds every acknowledged write (a write is
    acknowledged once every replica voted: its COMMIT may reach a replica a moment
    later, so the end of the stream is read again until then)."""
    async def caught_up() -> bool:
        while True:
            page = await cursor.next_page()
            consumer.apply(page.changes)
            if not page.more:
                return consumer.covers(acked)
    await eventually(caught_up, WAIT_S, what)


async def _write(client: DDSClient, keys: list[bytes], rounds: int,
                 acked: dict[bytes, int]) -> None:
    for r in range(rounds):
        for k in keys:
            acked[k] = await client.put(k, b"%s=%d" % (k, r))


async def _setup(cluster_factory: Any, **kw: Any) -> tuple[Cluster, DDSClient, PartitionId]:
    cluster: Cluster = cluster_factory(bricks=kw.pop("bricks", 3), replication=3,
                                       partitions=4, lease_ms=1000, **kw)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=20.0)
    return cluster, client, sorted(client.map.partition_rg)[0]


@pytest_twisted.ensureDeferred
async def test_every_acknowledged_write_appears_with_versions_increasing_per_key(
        cluster_factory: Any) -> None:
    cluster, client, pid = await _setup(cluster_factory)
    keys = _keys(pid, 12)
    acked: dict[bytes, int] = {}
    consumer = Consumer()
    cursor = client.changes(str(pid), limit=7)      # small pages: many page boundaries
    writing = [True]

    async def read_while_writing() -> None:
        while writing[0]:
            consumer.apply((await cursor.next_page()).changes)
    reader = Deferred.fromCoroutine(read_while_writing())
    await _write(client, keys, 6, acked)
    writing[0] = False
    await reader
    await _catch_up(cursor, consumer, acked, "every acknowledged write in the stream")
    assert set(consumer.state) == set(acked)
    for key, versions in consumer.seen.items():
        assert versions == sorted(set(versions)), (key, versions)   # no repeat, no going back
        assert versions[-1] == acked[key]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_position_resumes_exactly_on_the_same_brick_after_a_clean_restart(
        cluster_factory: Any) -> None:
    cluster, client, pid = await _setup(cluster_factory,
                                        brick_settings={"recover_on_start": False})
    before, after = _keys(pid, 6, "before"), _keys(pid, 6, "after")
    acked: dict[bytes, int] = {}
    await _write(client, before, 2, acked)
    cursor = client.changes(str(pid))
    await _catch_up(cursor, Consumer(), acked, "the writes before the restart")
    assert cursor.brick is not None
    brick = cluster.brick(cursor.brick)
    checkpoint = cursor.position

    brick.stop()                    # SIGTERM: a clean stop
    brick.start()
    brick.wait_ready()
    await cluster.wait_serving(reactor, [brick])
    later: dict[bytes, int] = {}
    await _write(client, after, 1, later)
    conn = await cluster.admin_connection(reactor, brick)
    rg = client.map.partition_rg[pid]
    got: list[bytes] = []

    async def read_from_checkpoint() -> bool:
        reply = await conn.send(ReadChanges(str(pid), rg.name, rg.version, rg.fp,
                                            checkpoint))
        assert reply["translated"] == "exact"
        got[:] = [row[0] for row in reply["changes"]]
        return set(got) >= set(later)
    await eventually(read_from_checkpoint, WAIT_S, "the writes after the restart")
    assert sorted(got) == sorted(later)         # nothing from before the checkpoint again
    conn.transport.loseConnection()
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_position_resumes_on_another_replica_when_the_serving_brick_dies(
        cluster_factory: Any) -> None:
    cluster, client, pid = await _setup(cluster_factory, bricks=4)
    keys = _keys(pid, 10)
    acked: dict[bytes, int] = {}
    # Writes over a few seconds, so that the other replicas' time tables hold samples
    # older than the checkpoint's safe time minus the skew allowed (1 s).
    until = time.monotonic() + 3.0
    while time.monotonic() < until:
        await _write(client, keys, 1, acked)
    consumer = Consumer()
    cursor = client.changes(str(pid))
    await _catch_up(cursor, consumer, acked, "the writes before the kill")
    checkpoint = cursor.position
    assert cursor.brick is not None
    victim = cluster.brick(cursor.brick)
    victim.stop(signal.SIGKILL)             # the brick that served the stream dies
    await _write(client, keys, 2, acked)
    resumed = client.changes(str(pid), checkpoint)
    first = await resumed.next_page()
    consumer.apply(first.changes)
    assert resumed.brick != victim.id
    assert resumed.translated == "time"     # another file: by its time table, not from
                                            # its beginning
    await _catch_up(resumed, consumer, acked, "the stream on another replica")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_the_stream_follows_the_partition_moved_to_another_rg(
        cluster_factory: Any) -> None:
    cluster, client, pid = await _setup(cluster_factory, bricks=6)
    keys = _keys(pid, 10)
    acked: dict[bytes, int] = {}
    await _write(client, keys, 2, acked)
    consumer = Consumer()
    cursor = client.changes(str(pid))
    await _catch_up(cursor, consumer, acked, "the writes before the move")
    from_rg = client.map.partition_rg[pid].name
    to_rg = next(name for name in sorted(client.map.rgs) if name != from_rg)
    await move(reactor, _target(cluster), str(pid), to_rg, lambda line: None)
    await _write(client, keys, 2, acked)
    await _catch_up(cursor, consumer, acked, "the writes after the move")
    moved = client.map.partition_rg[pid]
    assert moved.name == to_rg and cursor.brick in moved.active_members
    await client.close()


@pytest_twisted.ensureDeferred
async def test_the_stream_of_a_split_partition_ends_and_its_children_continue_it(
        cluster_factory: Any) -> None:
    cluster, client, pid = await _setup(cluster_factory)
    keys = _keys(pid, 16)
    acked: dict[bytes, int] = {}
    await _write(client, keys, 2, acked)
    consumer = Consumer()
    cursor = client.changes(str(pid))
    await _catch_up(cursor, consumer, acked, "the writes before the split")
    await reshape(reactor, _target(cluster), "split", str(pid), lambda line: None,
                  lambda done, total: None)
    await _write(client, keys, 2, acked)
    page = await cursor.next_page()
    assert page.ended
    assert set(page.successors) == {str(c) for c in pid.children()}
    children = [client.changes(child, page.position) for child in page.successors]
    results = await DeferredList([Deferred.fromCoroutine(
        _catch_up(c, consumer, {k: v for k, v in acked.items()
                                if PartitionId.parse(c.partition).owns(k)},
                  f"the writes to {c.partition}"))
        for c in children], consumeErrors=True)
    assert all(ok for ok, _ in results), results
    assert consumer.covers(acked)
    await client.close()
