"""A reorganization's write fence outlives its tool by the renewal lapse only (issue 15:
no fence held past its bound).  ``dds-admin split`` and ``dds-admin move`` are killed
right after they fenced writes (``*.after_fenced=crash``): writes to the partition go on
without an operator, well within the client's deadline (before, a split's fence held
30 s and a move's until ``dds-admin repair``), and repair rolls the job back."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from dds import failpoints
from dds.partition import PartitionId

from tests.harness.admin import admin as _admin
from tests.harness.aio import call, eventually
from tests.harness.cluster import Cluster

#: The client's deadline for the write after the kill: shorter than a split fence's long
#: bound (30 s), so an unrenewed fence held that long fails the test.
WRITE_TIMEOUT_S = 20.0


def _keys(client: Any, pid: PartitionId, n: int) -> list[bytes]:
    keys = [k for k in (b"key-%d" % i for i in range(2000))
            if client.router.route(client.map, k).pid == pid]
    return keys[:n]


async def _committed_everywhere(cluster: Cluster) -> None:
    """No brick holds a prepared transaction: the COMMITs of the puts above went out.
    ``_admin`` blocks this process's reactor, and a COMMIT still queued in the client
    would keep its transaction prepared until termination, longer than a fence's drain
    bound (the split would fail ``Timeout`` before its failpoint)."""
    async def none_prepared() -> bool:
        for b in cluster.bricks:
            if (await call(cluster, b, "status", {}))["prepared"]:
                return False
        return True
    await eventually(none_prepared, 30.0, "every transaction committed on every brick")


async def _true(value: bool) -> bool:
    return value


def _repaired(cluster: Cluster) -> list[str]:
    repaired = _admin(cluster, "repair", "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    [reorg] = [s for s in json.loads(repaired.stdout)["steps"] if s["name"] == "reorg"]
    return [d["action"] for d in reorg["result"]["resumed"]]


@pytest_twisted.ensureDeferred
async def test_a_split_whose_tool_dies_under_the_fence_takes_writes_again_after_the_lapse(
        cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2, lease_ms=1000)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=WRITE_TIMEOUT_S)
    pid = sorted(client.map.partition_rg)[0]
    keys = _keys(client, pid, 5)
    for k in keys:
        await client.put(k, b"before")
    await _committed_everywhere(cluster)
    killed = _admin(cluster, "split", str(pid), "--json",
                    env={failpoints.ENV_VAR: "split.after_fenced=crash"})
    assert killed.returncode == failpoints.CRASH_EXIT_CODE, killed.stdout + killed.stderr

    await client.put(keys[0], b"after")         # the fence lapsed: no repair needed
    fences = []
    for b in cluster.bricks:
        jobs = (await call(cluster, b, "split_status", {}))["jobs"]
        fences += [j["leader_fence"] for j in jobs.values() if j["leader_fence"]]
    [leader] = fences
    assert not leader["held"] and "no renewal from its tool" in leader["why"], leader
    assert _repaired(cluster) == ["rolled back"]
    await client.maps.refresh()
    assert client.map.partition_rg[pid] is not None
    assert (await client.get(keys[0])).value == b"after"
    assert [(await client.get(k)).value for k in keys[1:]] == [b"before"] * 4
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_move_whose_tool_dies_under_the_fence_takes_writes_again_after_the_lapse(
        cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=6, replication=3, partitions=4, lease_ms=1000)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=WRITE_TIMEOUT_S)
    pid = sorted(client.map.partition_rg)[0]
    here = client.map.partition_rg[pid].name
    there = next(n for n in sorted(client.map.rgs) if n != here)
    keys = _keys(client, pid, 5)
    for k in keys:
        await client.put(k, b"before")
    await _committed_everywhere(cluster)
    killed = _admin(cluster, "move", str(pid), "--to", there,
                    env={failpoints.ENV_VAR: "move.after_fenced=crash"})
    assert killed.returncode == failpoints.CRASH_EXIT_CODE, killed.stdout + killed.stderr

    await client.put(keys[0], b"after")         # the fence lapsed: no repair needed
    lapsed = []
    for b in cluster.bricks:
        copies = (await call(cluster, b, "status", {})).get("copies", [])
        lapsed += [c for c in copies if "no renewal from its holder" in c["reason"]]
    assert len(lapsed) == 1 and lapsed[0]["state"] == "cancelled", lapsed
    assert _repaired(cluster) == ["rolled back"]
    await client.maps.refresh()
    assert client.map.partition_rg[pid].name == here
    assert (await client.get(keys[0])).value == b"after"
    assert [(await client.get(k)).value for k in keys[1:]] == [b"before"] * 4
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_recovering_brick_killed_under_its_sources_fence_costs_writes_the_lapse_only(
        cluster_factory: Any) -> None:
    """The recovering brick renews its source's fence from ``copy_fence`` to ``readmit``:
    killed in between, the source lifts the fence ~2 s later, not after
    ``timeouts.copy_fence_ms`` (10 s, longer than this client's deadline)."""
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=1, lease_ms=1000)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=8.0)
    for i in range(5):
        await client.put(b"key-%d" % i, b"before")
    await _committed_everywhere(cluster)
    victim = cluster.bricks[-1]
    await call(cluster, victim, "failpoint", {"name": "recovery.after_fence",
                                              "action": "crash"})
    assert await call(cluster, victim, "recover", {"rg": "rg0"}) == {"started": ["rg0"]}

    async def lapsed() -> list[dict[str, Any]]:
        found = []
        for b in cluster.bricks[:-1]:
            copies = (await call(cluster, b, "status", {})).get("copies", [])
            found += [c for c in copies if c["target"] == victim.id and c["reason"]]
        return found
    await eventually(lapsed, 30.0, f"a copy session to {victim.id} to end")
    await eventually(lambda: _true(not victim.alive()), 30.0, f"{victim.id} to crash")
    assert victim.stop() == failpoints.CRASH_EXIT_CODE
    await client.put(b"key-0", b"after")        # the source's fence lapsed
    [session] = await lapsed()
    assert "no renewal from its holder" in session["reason"], session
    assert (await client.get(b"key-0")).value == b"after"
    await client.close()
