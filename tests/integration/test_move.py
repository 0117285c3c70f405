"""``dds-admin move`` (DESIGN §8) with real brick processes: a partition moves to another
replica group while clients keep writing, some of them with stale maps; no acknowledged
write is lost, the clients converge to the new map, and the source drops its replicas."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList

from dds import failpoints
from dds.tools.cluster import Target
from dds.tools.move import move

from tests.harness.admin import admin as _admin
from tests.harness.aio import call, eventually
from tests.harness.cluster import CLUSTER, Cluster

WAIT_S = 30.0


def _target(cluster: Cluster) -> Target:
    return Target(tuple(("127.0.0.1", b.port) for b in cluster.bricks),
                  cluster.admin_secret.encode(), CLUSTER)


@pytest_twisted.ensureDeferred
async def test_a_partition_moves_under_writes_and_no_acknowledged_write_is_lost(
        cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=6, replication=3, partitions=4, lease_ms=1000)
    await cluster.init(reactor)
    writer = await cluster.client(reactor, timeout=20.0)
    stale = await cluster.client(reactor, timeout=20.0)     # keeps its map until redirected
    cmap = writer.map
    pid = sorted(cmap.partition_rg)[0]
    from_rg = cmap.partition_rg[pid].name
    to_rg = next(name for name in sorted(cmap.rgs) if name != from_rg)
    keys = [k for k in (b"key-%d" % i for i in range(400))
            if writer.router.route(cmap, k).pid == pid][:40]
    acked: dict[bytes, tuple[bytes, int]] = {}
    running = [True]

    async def write(client: Any, name: str) -> None:
        n = 0
        while running[0]:
            key = keys[n % len(keys)]
            value = b"%s-%d" % (name.encode(), n)
            version = await client.put(key, value)
            if key not in acked or acked[key][1] < version:
                acked[key] = (value, version)
            n += 1

    loops = [Deferred.fromCoroutine(write(writer, "w")),
             Deferred.fromCoroutine(write(stale, "s"))]
    await eventually(lambda: _true(len(acked) >= 10), WAIT_S, "writes to start")
    lines: list[str] = []
    result = await move(reactor, _target(cluster), str(pid), to_rg, lines.append)
    await eventually(lambda: _true(len(acked) >= 20), WAIT_S, "more writes after the move")
    running[0] = False
    outcomes = await DeferredList(loops, consumeErrors=True)
    assert all(ok for ok, _ in outcomes), outcomes

    assert result["to_rg"] == to_rg
    assert writer.map.partition_rg[pid].name == to_rg       # converged by StaleMap
    assert stale.map.partition_rg[pid].name == to_rg
    for key, (value, version) in acked.items():
        got = await writer.get(key)
        assert (got.value, got.version) == (value, version), key

    async def source_dropped() -> bool:
        for b in cluster.bricks:
            status = await call(cluster, b, "status", {})
            holds = str(pid) in status["partitions"]
            if holds != (b.id in writer.map.rgs[to_rg].active_members):
                return False
        return True
    await eventually(source_dropped, WAIT_S, "the source RG to drop its replicas")
    jobs = await call(cluster, cluster.bricks[0], "journal_read", {"unfinished": False})
    assert any(j["job"] == result["job"] and j["state"] == "done" for j in jobs["jobs"])
    await writer.close()
    await stale.close()


async def _true(value: bool) -> bool:
    return value


STEPS = ("incoming", "copied", "fenced", "delta", "cutover-out", "cutover-in", "released",
         "dropped")
#: The issue asks for 20 runs: every step, and the cut-over steps more than once.
KILL_AT = [*STEPS, *STEPS, "fenced", "delta", "cutover-out", "cutover-in"]


@pytest_twisted.ensureDeferred
async def test_repair_finishes_or_rolls_back_a_move_killed_at_any_step(
        cluster_factory: Any) -> None:
    """20 runs: ``dds-admin move`` killed right after each journaled step, then
    ``dds-admin repair``.  Every time the partition ends active in exactly one RG on
    every brick, its data is intact, and no job is left unfinished."""
    cluster: Cluster = cluster_factory(bricks=6, replication=3, partitions=4, lease_ms=1000)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=20.0)
    pid = sorted(client.map.partition_rg)[0]
    keys = [k for k in (b"key-%d" % i for i in range(400))
            if client.router.route(client.map, k).pid == pid][:20]
    for k in keys:
        await client.put(k, b"v-" + k)
    outcomes = []
    for run, step in enumerate(KILL_AT):
        await client.maps.refresh()
        here = client.map.partition_rg[pid].name
        there = next(n for n in sorted(client.map.rgs) if n != here)
        killed = _admin(cluster, "move", str(pid), "--to", there,
                        env={failpoints.ENV_VAR: f"move.after_{step}=crash"})
        assert killed.returncode == failpoints.CRASH_EXIT_CODE, killed.stderr
        repaired = _admin(cluster, "repair", "--json")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        report = json.loads(repaired.stdout)
        [reorg] = [s for s in report["steps"] if s["name"] == "reorg"]
        actions = [d["action"] for d in reorg["result"]["resumed"]]
        outcomes.append((step, actions))
        # The last delta and the source's "outgoing" record go together: a move
        # stopped after them is finished (the fence held, every target has the delta).
        expected = "finished" if STEPS.index(step) >= STEPS.index("delta") \
            else "rolled back"
        assert actions == [expected], (run, step, report)

        async def settled() -> bool:
            owners = set()
            for b in cluster.bricks:
                status = await call(cluster, b, "rg_status", {"rg": here})
                other = await call(cluster, b, "rg_status", {"rg": there})
                for rec in (status["record"], other["record"]):
                    if any(p == str(pid) and s == "active" for p, s in rec[4]):
                        owners.add(rec[1])
                    if any(p == str(pid) and s != "active" for p, s in rec[4]):
                        return False        # incoming / outgoing left behind
            return len(owners) == 1
        await eventually(settled, WAIT_S, f"{pid} active in exactly one RG (run {run})")
        await client.maps.refresh()
        for k in keys:
            assert (await client.get(k)).value == b"v-" + k, (run, step, k)
    jobs = _admin(cluster, "jobs", "--json")
    assert jobs.returncode == 0 and json.loads(jobs.stdout)["jobs"] == [], jobs.stdout
    await client.close()
