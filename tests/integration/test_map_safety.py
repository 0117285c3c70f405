"""Issue 13 against real bricks: a forged map record is refused by the brick it is pushed
to (with admin credentials), a version out of range too, and a replica no record lists
is quarantined, not deleted, until its grace period is over."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds.errors import InvalidRequest, Refused
from dds.maps import ClusterMap
from dds.records import RGRecord

from tests.harness.aio import call, eventually
from tests.harness.cluster import Cluster

KEYS = [f"key-{i}".encode() for i in range(64)]
WAIT_S = 30.0


async def _map(cluster: Cluster, brick: Any) -> ClusterMap:
    return ClusterMap.from_wire((await call(cluster, brick, "map_get", {}))["map"])


async def _status(cluster: Cluster, brick: Any) -> dict[str, Any]:
    status: dict[str, Any] = await call(cluster, brick, "status", {})
    return status


async def _gossip_rounds(cluster: Cluster) -> dict[str, int]:
    return {b.id: int((await _status(cluster, b))["metrics"].get("gossip_rounds_total", 0))
            for b in cluster.bricks}


async def _after_gossip(cluster: Cluster, rounds: int = 3) -> None:
    """Until every brick has gossiped ``rounds`` more times: what a refused record would
    have needed to spread (it spread within 5 s before the fix)."""
    start = await _gossip_rounds(cluster)

    async def done() -> bool:
        now = await _gossip_rounds(cluster)
        return all(now[b] >= start[b] + rounds for b in start)
    await eventually(done, WAIT_S, f"{rounds} gossip rounds on every brick")


async def _push(cluster: Cluster, brick: Any, record: list[Any]) -> Any:
    return await call(cluster, brick, "map_push", {"records": [record]})


async def _started(cluster_factory: Any, **kw: Any) -> tuple[Cluster, RGRecord]:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=4, **kw)
    await cluster.init(reactor)
    rg = (await _map(cluster, cluster.brick("b1"))).rgs["rg0"]
    return cluster, rg


@pytest_twisted.ensureDeferred
async def test_a_forged_record_listing_no_partitions_is_refused_and_nothing_is_dropped(
        cluster_factory: Any) -> None:
    cluster, rg = await _started(cluster_factory)
    client = await cluster.client(reactor)
    for k in KEYS:
        await client.put(k, b"before")
    before = {b.id: sorted((await _status(cluster, b))["partitions"]) for b in cluster.bricks}
    forged = rg.with_changes(partitions=[])
    with pytest.raises(Refused) as refused:
        await _push(cluster, cluster.brick("b1"), forged.canonical())
    assert "rg/rg0 at version 2" in refused.value.message
    assert "do not cover the whole key space" in refused.value.message
    await _after_gossip(cluster)
    for b in cluster.bricks:
        status = await _status(cluster, b)
        assert sorted(status["partitions"]) == before[b.id]
        assert status["quarantine"] == []
        assert (await _map(cluster, b)).rgs["rg0"] == rg
    assert (await _status(cluster, cluster.brick("b1")))["metrics"][
        "map_records_refused_total"] == 1
    for k in KEYS:
        assert (await client.get(k)).value == b"before"
        await client.put(k, b"after")
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_version_out_of_range_is_refused_and_later_changes_of_the_group_work(
        cluster_factory: Any) -> None:
    cluster, rg = await _started(cluster_factory)
    b1 = cluster.brick("b1")
    for bad in (2**64 - 1, 2**62):
        wire = rg.canonical()
        wire[2] = bad
        with pytest.raises(InvalidRequest, match=r"rg/rg0: version: version \d+ is out of "
                                                 r"range"):
            await _push(cluster, b1, wire)
    assert (await _map(cluster, b1)).rgs["rg0"] == rg
    reply = await call(cluster, b1, "rg_update", {
        "rg": "rg0", "version": rg.version, "fp": rg.fp,
        "partitions": [[str(e.pid), e.state] for e in rg.partitions],
        "reason": "a change after the refused push"})
    assert reply["record"][2] == rg.version + 1
    client = await cluster.client(reactor)
    await client.put(b"k", b"v")
    assert (await client.get(b"k")).value == b"v"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_replica_no_record_lists_is_quarantined_then_deleted_after_the_grace_period(
        cluster_factory: Any) -> None:
    # 0.001 h = 3.6 s: the sweep runs every 0.9 s.
    cluster, rg = await _started(cluster_factory,
                                 brick_settings={"quarantine_hours": 0.001})
    b3 = cluster.brick("b3")
    cmap = await _map(cluster, b3)
    listed = sorted(str(e.pid) for r in cmap.rgs_of_brick("b3") for e in r.partitions)
    # A stray replica: a partition file of a partition no record lists (a copy of a
    # real one under another name, as a forged record would have left behind).
    b3.stop()
    stray = b3.data_dir / "p5.31.sqlite"
    shutil.copy(b3.data_dir / f"{listed[0]}.sqlite", stray)
    b3.start()
    b3.wait_ready()
    status = await _status(cluster, b3)
    [entry] = status["quarantine"]
    assert entry["pid"] == "p5.31"
    assert (b3.data_dir / "quarantine" / entry["file"]).exists()
    assert not stray.exists()
    assert sorted(status["partitions"]) == listed
    assert status["metrics"]["replicas_quarantined_total"] == 1

    async def swept() -> bool:
        return (await _status(cluster, b3))["quarantine"] == []
    await eventually(swept, WAIT_S, "the quarantined replica to be deleted")
    await eventually(lambda: _no_files(b3.data_dir / "quarantine"), WAIT_S,
                     "the quarantined file to be freed")


async def _no_files(path: Any) -> bool:
    return not any(path.iterdir())


def _damage_map(brick: Any, rg_name: str, pid: str) -> None:
    """What a forged record adopted before bricks checked maps left behind: ``rg_name``
    no longer lists ``pid`` (written into the stopped brick's map file)."""
    import msgpack

    path = brick.data_dir / "map.msgpack"
    cmap = ClusterMap.from_wire(msgpack.unpackb(path.read_bytes(), raw=False))
    rg = cmap.rgs[rg_name]
    damaged = rg.with_changes(partitions=[e for e in rg.partitions if str(e.pid) != pid])
    path.write_bytes(msgpack.packb(cmap.merge([damaged]).map.to_wire(), use_bin_type=True))


@pytest_twisted.ensureDeferred
async def test_repair_restores_a_partition_the_map_lost_from_the_quarantines(
        cluster_factory: Any) -> None:
    from tests.harness.admin import admin_json

    cluster, _rg = await _started(cluster_factory)
    client = await cluster.client(reactor)
    cmap = await _map(cluster, cluster.brick("b1"))
    pid, rg = next((pid, rg) for pid, rg in sorted(cmap.partition_rg.items()))
    keys = [k for k in KEYS if cmap.route(k)[0] == pid]
    assert keys
    for k in keys:
        await client.put(k, b"kept")
    client.close()
    cluster.stop()
    for b in cluster.bricks:
        _damage_map(b, rg.name, str(pid))
    cluster.start()
    for b in cluster.bricks:
        assert [q["pid"] for q in (await _status(cluster, b))["quarantine"]] == [str(pid)]
    checked = admin_json(cluster, "repair", "--step", "coverage", "--dry-run", code=1)
    [step] = [s for s in checked["steps"] if s["name"] == "coverage"]
    assert "do not cover the whole key space" in step["result"]["summary"]
    assert step["result"]["missing"] == [{"pid": str(pid),
                                          "quarantined_on": ["b1", "b2", "b3"]}]
    report = admin_json(cluster, "repair", "--step", "coverage")
    [step] = [s for s in report["steps"] if s["name"] == "coverage"]
    assert step["result"]["restored"] == [{"pid": str(pid), "rg": rg.name,
                                           "members": ["b1", "b2", "b3"]}]
    await cluster.wait_serving(reactor, cluster.bricks)
    client = await cluster.client(reactor)
    for k in keys:
        assert (await client.get(k)).value == b"kept"
        await client.put(k, b"again")
    client.close()
