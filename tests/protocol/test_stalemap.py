"""Map checks on every data operation and map repair by the library (DESIGN §2).

Bricks and clients get different versions of the RG record by hand (``SimCluster.push``
to bricks, ``MapCache.adopt`` to a client); gossip is off, so nothing else moves them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from dds.bricks.partstore import ReadResult
from dds.errors import (DDSError, Divergence, InvalidRequest, KeyTooLarge, StaleMap, ValueTooLarge)
from dds.lib.client import DDSClient, GetResult
from dds.maps import ClusterMap
from dds.partition import PartitionId
from dds.records import Member, PartitionEntry, RGRecord
from tests.sim.network import SimCluster

NEVER = ReadResult(None, 0)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    # A little latency, so that a client retrying without pause still lets time pass.
    c = SimCluster(tmp_path, n=3, max_key_bytes=64, max_value_bytes=1024, latency=0.001)
    yield c
    c.close()


@pytest.fixture
def client(cluster: SimCluster) -> DDSClient:
    return cluster.client(timeout=5.0)


def reordered(rg: RGRecord) -> RGRecord:
    return rg.with_changes(members=tuple(reversed(rg.members)))


def bumped(rg: RGRecord) -> RGRecord:
    return rg.with_changes()


def with_record(cmap: ClusterMap, record: RGRecord) -> ClusterMap:
    return ClusterMap({**cmap.records, record.record_id: record})


def everywhere(cluster: SimCluster, key: bytes, expected: ReadResult) -> bool:
    return all(r == expected for r in cluster.read_settled(key).values())


def stale_total(cluster: SimCluster) -> int:
    return sum(b.metrics.counters["stale_map_total"] for b in cluster.bricks)


# -- the library's map is older than the bricks' -----------------------------------------


@pytest.mark.parametrize("change", [reordered, bumped], ids=["members-reordered",
                                                               "version-only"])
@pytest.mark.parametrize("op", ["get", "put"])
def test_client_with_an_old_record_gets_stale_map_adopts_the_bricks_and_succeeds(
        cluster: SimCluster, client: DDSClient, change: Any, op: str) -> None:
    new = change(cluster.rg())
    cluster.push(new)
    assert client.map.rgs["rg0"].version == 1
    if op == "put":
        assert cluster.run(client.put(b"k", b"v")) == 1
        assert everywhere(cluster, b"k", ReadResult(b"v", 1))
    else:
        assert cluster.run(client.get(b"k")) == GetResult(None, 0)
    assert client.map.rgs["rg0"] == new
    assert stale_total(cluster) >= 1
    assert client.metrics.counters["map_repairs_total"] >= 1


# -- the library's map is newer than the bricks' -----------------------------------------


def test_a_record_only_a_client_holds_is_never_adopted_from_the_client(
        cluster: SimCluster, client: DDSClient) -> None:
    """A client's push is a hint, not a map change (DESIGN §10: a client may fetch the
    map but not change it): a made-up record stays the client's alone."""
    old = cluster.rg()
    new = reordered(old)
    client.maps.adopt([new], source="test")
    error = cluster.fail_of(client.get(b"k"))
    assert isinstance(error, DDSError)
    assert all(b.maps.map.rgs["rg0"] == old for b in cluster.bricks)
    assert sum(b.metrics.value("requests", type="map_push") for b in cluster.bricks) >= 1


def test_a_brick_behind_learns_a_newer_record_from_its_peers_when_a_client_hints(
        cluster: SimCluster, client: DDSClient) -> None:
    """The library has a record newer than the brick it asked, because another brick
    had it: its push makes the brick that is behind ask its RG's members at once."""
    new = bumped(cluster.rg())
    behind = cluster.bricks[0]
    cluster.push(new, to=cluster.bricks[1:])
    client.maps.adopt([new], source="test")
    conn = cluster.run(client.connections.get(behind.config.brick.host,
                                               behind.config.brick.port))
    stale = StaleMap("behind", behind.maps.map.rgs["rg0"].canonical())
    cluster.run(client.maps.repair(stale, conn))
    cluster.net.advance(1.0)
    assert behind.maps.map.rgs["rg0"] == new
    assert behind.metrics.value("requests", type="map_push") == 1


# -- the library's map lacks a record ----------------------------------------------------


def _move_partition(cluster: SimCluster) -> tuple[bytes, RGRecord, RGRecord]:
    """Move one partition from rg0 to a new group rg1 (same bricks), on every brick.
    Returns a key of that partition and the new records."""
    key = next(k for k in (b"m%d" % i for i in range(1000)) if cluster.pid(k) == "p2.3")
    moved = PartitionId.parse("p2.3")
    old = cluster.rg()
    rg0 = old.with_changes(partitions=tuple(e for e in old.partitions if e.pid != moved))
    rg1 = RGRecord("rg1", 1, old.members, [PartitionEntry(moved)])
    cluster.push(rg0, rg1)
    return key, rg0, rg1


@pytest.mark.parametrize("op", ["get", "put"])
def test_client_whose_map_lacks_the_new_rg_record_fetches_it(
        cluster: SimCluster, client: DDSClient, op: str) -> None:
    key, rg0, rg1 = _move_partition(cluster)
    assert "rg1" not in client.map.rgs
    if op == "get":
        assert cluster.run(client.get(key)) == GetResult(None, 0)
    else:
        assert cluster.run(client.put(key, b"v")) == 1
        assert everywhere(cluster, key, ReadResult(b"v", 1))
    assert client.map.rgs == {"rg0": rg0, "rg1": rg1}


def test_client_whose_map_does_not_cover_the_key_fetches_the_map(
        cluster: SimCluster, client: DDSClient) -> None:
    client.maps.map = ClusterMap({k: r for k, r in client.map.records.items()
                                  if k != "rg/rg0"})
    assert cluster.run(client.get(b"k")) == GetResult(None, 0)
    assert client.map.rgs["rg0"] == cluster.rg()


def _grow_rg(cluster: SimCluster) -> tuple[RGRecord, Any]:
    """Add brick b3 to rg0 (record v2, with b3's brick record), on every brick."""
    b3 = cluster.add_brick(3)
    cluster.bricks.append(b3)
    old = cluster.rg()
    new = old.with_changes(members=(*old.members, Member("b3")))
    cluster.push(*cluster.records, to=[b3])
    cluster.push(cluster.brick_record(3), new)
    return new, b3


def test_client_whose_map_lacks_a_members_brick_record_fetches_it(
        cluster: SimCluster, client: DDSClient) -> None:
    new, b3 = _grow_rg(cluster)
    assert cluster.run(client.get(b"k")) == GetResult(None, 0)   # learns rg0 v2
    assert client.map.rgs["rg0"] == new
    assert cluster.run(client.put(b"k", b"v")) == 1
    assert "b3" in client.map.bricks
    assert everywhere(cluster, b"k", ReadResult(b"v", 1))
    assert b3.storage.read(cluster.pid(b"k"), b"k") == ReadResult(b"v", 1)


def test_write_after_a_stale_map_reaches_a_new_member(cluster: SimCluster,
                                                      client: DDSClient) -> None:
    """The write path re-fetches the whole map, so it does learn the new brick record."""
    new, b3 = _grow_rg(cluster)
    assert cluster.run(client.put(b"k", b"v")) == 1
    assert client.map.rgs["rg0"] == new and "b3" in client.map.bricks
    assert everywhere(cluster, b"k", ReadResult(b"v", 1))
    assert b3.storage.read(cluster.pid(b"k"), b"k") == ReadResult(b"v", 1)


# -- a caller's wrong fingerprint is a stale map, not a divergence (issue 13) ------------
#
# A divergence is two *bricks* holding different records at one version (gossip or a push
# finds it).  A caller's record at the brick's version with another fingerprint is the
# caller's mistake (a stale, corrupted or made-up view): the brick answers ``StaleMap``
# with its record, counts nothing as divergence and logs no alarm; the library adopts the
# brick's record and goes on.


def _made_up(cluster: SimCluster, client: DDSClient) -> RGRecord:
    """Give the client another rg0 at the bricks' version: same version, other fp."""
    mine = attrs.evolve(cluster.rg(), members=tuple(reversed(cluster.rg().members)))
    assert mine.version == cluster.rg().version and mine.fp != cluster.rg().fp
    client.maps.map = with_record(client.map, mine)
    return mine


def divergence_total(cluster: SimCluster) -> int:
    return sum(b.metrics.counters["map_divergence_total"] for b in cluster.bricks)


@pytest.fixture
def alarms() -> Iterator[list[str]]:
    """The "MAP DIVERGENCE" log lines emitted meanwhile."""
    from twisted.logger import formatEvent, globalLogPublisher
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if "MAP DIVERGENCE" in text:
            seen.append(text)
    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_a_made_up_fingerprint_at_the_current_version_is_a_stale_map(
        cluster: SimCluster, alarms: list[str]) -> None:
    key = b"k"
    conn = cluster.raw(0)
    ref = {**cluster.ref(key), "rg_fp": cluster.rg().fp ^ 0x5A5A}
    error = cluster.fail_of(conn.call("get", {"key": key, **ref}))
    assert isinstance(error, StaleMap) and not isinstance(error, Divergence)
    assert error.data == cluster.rg().canonical()       # the brick's record, to repair
    body = {**cluster.prepare_body(key, (1, 1)), "rg_fp": ref["rg_fp"]}
    error = cluster.fail_of(conn.call("prepare", body))
    assert isinstance(error, StaleMap) and not isinstance(error, Divergence)
    assert divergence_total(cluster) == 0 and alarms == []
    assert everywhere(cluster, key, NEVER) and len(cluster.bricks[0].locks) == 0


def test_a_client_with_a_made_up_record_reads_after_adopting_the_bricks(
        cluster: SimCluster, client: DDSClient, alarms: list[str]) -> None:
    _made_up(cluster, client)
    assert cluster.run(client.get(b"k")) == GetResult(None, 0)
    assert client.map.rgs["rg0"] == cluster.rg()
    assert divergence_total(cluster) == 0 and alarms == []
    assert all(b.maps.map.rgs["rg0"].fp == cluster.records[-1].fp for b in cluster.bricks)


def test_a_client_with_a_made_up_record_writes_after_adopting_the_bricks(
        cluster: SimCluster, client: DDSClient, alarms: list[str]) -> None:
    _made_up(cluster, client)
    assert cluster.run(client.put(b"k", b"v")) == 1
    assert client.map.rgs["rg0"] == cluster.rg()
    assert everywhere(cluster, b"k", ReadResult(b"v", 1))
    assert divergence_total(cluster) == 0 and alarms == []
    assert all(len(b.locks) == 0 for b in cluster.bricks)


def test_a_pushed_divergent_record_is_refused_and_counted(cluster: SimCluster,
                                                         alarms: list[str]) -> None:
    """A brick offering another record at the same version is a real divergence between
    bricks' records: still refused, counted and logged loudly."""
    brick = cluster.bricks[0]
    theirs = attrs.evolve(cluster.rg(), members=tuple(reversed(cluster.rg().members)))
    conn = cluster.raw(brick)
    reply = cluster.run(conn.call("map_push", {"records": [theirs.canonical()]}))
    assert reply == {"adopted": 0, "conflicts": ["rg/rg0"]}
    assert brick.maps.map.rgs["rg0"] == cluster.records[-1]
    assert brick.metrics.counters["map_divergence_total"] == 1
    assert len(alarms) == 1


# -- requests the brick must refuse ------------------------------------------------------


def _other_partition_key(cluster: SimCluster, key: bytes) -> bytes:
    pid = cluster.pid(key)
    return next(k for k in (b"x%d" % i for i in range(1000)) if cluster.pid(k) != pid)


@pytest.mark.parametrize("pid", ["banana", "p1.5", "p99.0", "", "p2.3.1"])
def test_an_unknown_partition_id_is_refused_with_invalid_request(
        cluster: SimCluster, pid: str) -> None:
    key = b"k"
    conn = cluster.raw(0)
    body = {**cluster.prepare_body(key, (1, 1)), "pid": pid}
    error = cluster.fail_of(conn.call("prepare", body))
    assert isinstance(error, InvalidRequest)
    error = cluster.fail_of(conn.call("get", {"key": key, **cluster.ref(key), "pid": pid}))
    assert isinstance(error, InvalidRequest)
    assert everywhere(cluster, key, NEVER) and len(cluster.bricks[0].locks) == 0


def test_a_partition_the_rg_does_not_serve_is_refused_with_stale_map(
        cluster: SimCluster) -> None:
    """DESIGN §2: a partition not listed active in the brick's record is StaleMap."""
    key = b"k"
    conn = cluster.raw(0)
    deeper = str(PartitionId.parse(cluster.pid(key)).children()[0])
    error = cluster.fail_of(conn.call("prepare", {**cluster.prepare_body(key, (1, 2)),
                                                  "pid": deeper}))
    assert isinstance(error, StaleMap) and not isinstance(error, Divergence)
    assert everywhere(cluster, key, NEVER) and len(cluster.bricks[0].locks) == 0
    assert not cluster.bricks[0].participant.active


def test_a_key_outside_the_partition_is_refused_with_invalid_request(
        cluster: SimCluster) -> None:
    key = b"k"
    stray = _other_partition_key(cluster, key)
    conn = cluster.raw(0)
    body = {**cluster.prepare_body(stray, (1, 3)), "pid": cluster.pid(key)}
    error = cluster.fail_of(conn.call("prepare", body))
    assert isinstance(error, InvalidRequest) and "does not belong" in error.message
    error = cluster.fail_of(conn.call("get", {"key": stray, **cluster.ref(key)}))
    assert isinstance(error, InvalidRequest)
    brick = cluster.bricks[0]
    assert brick.storage.read(cluster.pid(key), stray) == NEVER
    assert everywhere(cluster, stray, NEVER)
    assert len(brick.locks) == 0 and not brick.participant.active


@pytest.mark.parametrize("what", ["key", "value"])
def test_oversize_key_or_value_is_refused_by_the_brick(cluster: SimCluster,
                                                       what: str) -> None:
    key, value = (b"k" * 65, b"v") if what == "key" else (b"k", b"v" * 1025)
    conn = cluster.raw(0)
    body = cluster.prepare_body(key, (1, 4), value=value)
    error = cluster.fail_of(conn.call("prepare", body))
    assert isinstance(error, KeyTooLarge if what == "key" else ValueTooLarge)
    assert isinstance(error, InvalidRequest)
    brick = cluster.bricks[0]
    assert len(brick.locks) == 0 and not brick.participant.active
    if what == "value":
        assert everywhere(cluster, key, NEVER)


@pytest.mark.parametrize("call", ["get-key", "put-key", "put-value", "create-value",
                                  "cas-value"])
def test_oversize_key_or_value_is_refused_by_the_client_before_any_io(
        cluster: SimCluster, client: DDSClient, call: str) -> None:
    big_key, big_value = b"k" * 65, b"v" * 1025
    before = (cluster.net.bytes_sent, cluster.net.connects)
    d = {"get-key": lambda: client.get(big_key),
         "put-key": lambda: client.put(big_key, b"v"),
         "put-value": lambda: client.put(b"k", big_value),
         "create-value": lambda: client.create(b"k", big_value),
         "cas-value": lambda: client.compare_and_put(b"k", big_value, 0)}[call]()
    assert d.called                          # failed at once, without pumping
    error = cluster.fail_of(d)
    assert isinstance(error, KeyTooLarge if call.endswith("key") else ValueTooLarge)
    assert (cluster.net.bytes_sent, cluster.net.connects) == before
