"""``dds-admin add-brick`` / ``remove-brick`` (DESIGN §8) with real brick processes: a
3-brick cluster grows to 6 bricks and shrinks back to 3 while clients write; after each
phase every partition's replicas agree and every acknowledged write is readable.  And
``dds-admin repair`` settles an add-brick killed right after a new member joined."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds import failpoints
from dds.records import RGRecord, record_from_wire
from dds.tools import membership as m
from dds.tools.cluster import Target

from tests.harness.admin import admin, admin_json
from tests.harness.aio import call, eventually
from tests.harness.cluster import CLUSTER, Cluster
from tests.harness.processes import BrickProcess
from tests.harness.writers import Writers, nothing_prepared

WAIT_S = 30.0
#: A put prepared on a member just before it is removed from the RG waits for that
#: member's COMMIT acknowledgement, which never comes (it dropped the replica and the
#: prepared transaction with it), until the client's timeout: ``Indeterminate``, though
#: the write committed on every remaining member.  A brick/library gap (see
#: docs/operations.md, add-brick); a short timeout keeps such a stall short here.
WRITE_TIMEOUT_S = 8.0
OPTIONS = m.Options(parallel=3, timeout=60.0)


def _target(cluster: Cluster) -> Target:
    return Target(tuple(("127.0.0.1", b.port) for b in cluster.bricks[:3]),
                  cluster.admin_secret.encode(), CLUSTER)


async def _new_bricks(cluster: Cluster, names: list[str]) -> list[BrickProcess]:
    """Bricks started like the cluster's own (same secret and timeouts), not in the map."""
    made = [BrickProcess(name, cluster.root, CLUSTER, "disk",
                         "[timeouts]\nlease_ms = 1000\n") for name in names]
    for b in made:
        b.start()
    cluster.bricks.extend(made)          # stopped with the cluster

    async def ready() -> bool:
        return all((b.data_dir / "ready.json").exists() for b in made)
    await eventually(ready, WAIT_S, "the new bricks to start")
    for b in made:
        b.wait_ready()                   # reads the ports; the file is there already
    return made


async def _records(cluster: Cluster, bricks: list[BrickProcess]) -> dict[str, RGRecord]:
    """The newest record of every RG among ``bricks``."""
    best: dict[str, RGRecord] = {}
    for b in bricks:
        reply = await call(cluster, b, "map_get", {})
        for wire in reply["map"]:
            rec = record_from_wire(wire)
            if isinstance(rec, RGRecord) and (rec.name not in best
                                              or rec.version > best[rec.name].version):
                best[rec.name] = rec
    return best


async def _verify(cluster: Cluster, writers: Writers, members: set[str]) -> None:
    """Every RG has 3 active members, all among ``members`` and on distinct hosts; the
    replicas of every partition agree; every acknowledged write reads back."""
    live = [b for b in cluster.bricks if b.alive()]
    await eventually(lambda: nothing_prepared(cluster, live), WAIT_S, "no prepared txns")
    rgs = await _records(cluster, live)
    for rec in rgs.values():
        assert len(rec.members) == 3 and len(rec.active_members) == 3, rec
        assert set(rec.active_members) <= members, rec
    by_id = {b.id: b for b in cluster.bricks}

    async def replicas_agree() -> bool:
        for rec in (await _records(cluster, live)).values():
            for entry in rec.partitions:
                sums = {(await call(cluster, by_id[b], "checksum",
                                    {"pid": str(entry.pid)}))["checksum"]
                        for b in rec.active_members}
                if len(sums) != 1:
                    return False
        return True
    await eventually(replicas_agree, WAIT_S, "the replicas of every partition to agree")
    client = await cluster.client(reactor, timeout=20.0)
    latest: dict[bytes, tuple[int, bytes]] = {}
    for a in writers.acks:
        if a.key not in latest or a.version > latest[a.key][0]:
            latest[a.key] = (a.version, a.value)
    for key, (version, value) in latest.items():
        got = await client.get(key)
        # A later put may have happened without its ack (indeterminate): never older.
        assert got.version >= version, (key, got, version)
        if got.version == version:
            assert got.value == value, key
    await client.close()


@pytest_twisted.ensureDeferred
async def test_grow_3_to_6_and_shrink_back_under_load(cluster_factory: Any) -> None:
    t0 = time.monotonic()
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=8, lease_ms=1000)
    await cluster.init(reactor)
    new = await _new_bricks(cluster, ["b4", "b5", "b6"])
    keys = [b"key-%d" % i for i in range(300)]
    loader = await cluster.client(reactor, timeout=20.0)
    for k in keys:
        await loader.put(k, b"x" * 200)
    await loader.close()
    target = _target(cluster)
    lines: list[str] = []

    # -- grow: 3 → 6, one brick at a time, under writes --------------------------------
    writers = Writers(cluster, keys, n=4, timeout=WRITE_TIMEOUT_S)
    await writers.start()
    reports = []
    for b in new:
        before = len(writers.acks)
        report = await m.add_brick(reactor, target, b.address, brick_id=b.id, host=b.id,
                                   rebalance=True, options=OPTIONS, view=m.QuietView(),
                                   say=lines.append)
        assert report["ok"], (report["errors"], report["changes"], lines[-10:])
        assert all(c["outcome"] == "done" for c in report["changes"]), report
        assert report["changes"], report            # every new brick got replicas
        assert len(writers.acks) > before           # writes went on meanwhile
        reports.append(report)
    assert reports[-1]["plan"]["reached"], reports[-1]["plan"]
    await writers.stop()
    assert len(writers.acks) > 50, writers.errors
    assert set(writers.errors) <= {"indeterminate"}, writers.first_errors
    await _verify(cluster, writers, {b.id for b in cluster.bricks})
    loads = reports[-1]["plan"]["loads_after"]
    assert max(loads.values()) - min(loads.values()) <= 2, loads       # ±1 of the mean

    # -- shrink: 6 → 3 (one brick, then two at once), under writes -----------------------
    writers = Writers(cluster, keys, n=4, timeout=WRITE_TIMEOUT_S, seed=2)
    await writers.start()
    for gone in (["b4"], ["b5", "b6"]):
        report = await m.remove_brick(reactor, target, gone, drain=True, force=False,
                                      options=OPTIONS, view=m.QuietView(),
                                      say=lines.append)
        assert report["ok"], (report["errors"], report["changes"], lines[-10:])
        assert sorted(report["retired"]) == gone, report
    await writers.stop()
    assert set(writers.errors) <= {"indeterminate"}, writers.first_errors
    await _verify(cluster, writers, {"b1", "b2", "b3"})
    reply = await call(cluster, cluster.bricks[0], "map_get", {})
    hosts = {r[1]: r[5] for r in reply["map"] if r[0] == "brick"}
    assert all(hosts[b].startswith(m.RETIRED) for b in ("b4", "b5", "b6")), hosts
    jobs = await call(cluster, cluster.bricks[0], "journal_read", {"unfinished": True})
    assert jobs["jobs"] == [], jobs

    # -- the retired bricks are stopped: they are retired, not down ----------------------
    for b in new:
        assert b.stop() == 0
    seeds = cluster.bricks[:3]
    status = admin_json(cluster, "status", seeds=seeds)
    assert status["ok"], status
    retired = {b["id"]: b for b in status["bricks"] if b["retired"]}
    assert sorted(retired) == ["b4", "b5", "b6"] and not any(
        b["up"] for b in retired.values())
    human = admin(cluster, "status", seeds=seeds)
    assert "retired" in human.stdout and "down" not in human.stdout, human.stdout
    dry = admin(cluster, "repair", "--dry-run", seeds=seeds)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    print(f"grow and shrink took {time.monotonic() - t0:.1f}s; {len(lines)} lines")


@pytest.mark.parametrize("dies", [False, True], ids=["new-brick-lives", "new-brick-dies"])
@pytest_twisted.ensureDeferred
async def test_repair_settles_an_add_brick_killed_after_a_member_joined(
        cluster_factory: Any, dies: bool) -> None:
    """The tool dies right after the first new member joined (recovering).  Repair
    finishes that change when the new member is active and serves (it waits for its
    recovery), and rolls it back when the new brick died meanwhile (the old member
    stays); it starts no other change, and the job ends."""
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=4, lease_ms=1000)
    await cluster.init(reactor)
    [b4] = await _new_bricks(cluster, ["b4"])
    client = await cluster.client(reactor, timeout=20.0)
    keys = [b"k-%d" % i for i in range(100)]
    for k in keys:
        await client.put(k, b"v-" + k)
    dry = _admin(cluster, "add-brick", b4.address, "--host", "b4", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)["changes"]
    joins = [i for i, c in enumerate(planned) if c["kind"] in ("replace", "add")]
    assert joins and all(planned[i]["new"] == "b4" for i in joins), planned
    first = planned[joins[0]]
    killed = _admin(cluster, "add-brick", b4.address, "--host", "b4", "--json",
                    "--parallel", "1",
                    env={failpoints.ENV_VAR: "membership.after_added=crash"})
    assert killed.returncode == failpoints.CRASH_EXIT_CODE, killed.stderr
    live = cluster.bricks[:3]
    if dies:
        async def joined() -> bool:
            return (await _records(cluster, live))[first["rg"]].member_state("b4") \
                == "active"
        await eventually(joined, WAIT_S, "b4 to become active")
        b4.stop()
    repaired = _admin(cluster, "repair", "--json")
    report = json.loads(repaired.stdout)
    [reorg] = [s for s in report["steps"] if s["name"] == "reorg"]
    assert not reorg["result"]["left"], reorg
    # a dead brick's journal cannot be read: repair says so (exit status 1)
    assert [u["brick"] for u in reorg["result"]["unreachable"]] == (["b4"] if dies else [])
    assert repaired.returncode == (1 if dies else 0), repaired.stdout + repaired.stderr
    [action] = [d["action"] for d in reorg["result"]["resumed"]]
    rgs = await _records(cluster, live)
    # --parallel 1: the changes ran in plan order, and the tool died right after the
    # first new member joined.
    rec = rgs[first["rg"]]
    assert all(len(r.active_members) == len(r.members) == 3 for r in rgs.values()), rgs
    if dies:
        assert rec.member_state("b4") is None and rec.member_state(first["old"]) == "active"
        assert action == f"stopped: {joins[0]} of {len(planned)} change(s) done, 1 rolled " \
            "back; run `dds-admin rebalance` again to go on", action
    else:
        assert rec.member_state("b4") == "active", rec
        assert first["old"] is None or rec.member_state(first["old"]) is None, rec
        if joins[0] < len(planned) - 1:
            assert action == f"stopped: {joins[0] + 1} of {len(planned)} change(s) done; " \
                "run `dds-admin rebalance` again to go on", action
        else:
            assert action == "finished", action
    jobs = _admin(cluster, "jobs", "--json")
    assert json.loads(jobs.stdout)["jobs"] == [], jobs.stdout
    await client.maps.refresh()
    for k in keys:
        assert (await client.get(k)).value == b"v-" + k
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_cancel_rolls_back_the_change_whose_copy_is_running(
        cluster_factory: Any) -> None:
    """``dds-admin cancel`` while the new member cannot finish its copy (every source
    fails it, so its recovery retries): the tool removes the new member again (the old
    one stays) and exits 1, cancelled."""
    from dds.tools.jobs import cancel

    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=4, lease_ms=1000)
    await cluster.init(reactor)
    [b4] = await _new_bricks(cluster, ["b4"])
    client = await cluster.client(reactor, timeout=20.0)
    keys = [b"k-%d" % i for i in range(100)]
    for k in keys:
        await client.put(k, b"v-" + k)
    live = cluster.bricks[:3]
    for b in live:       # every possible source fails the copy's middle chunk
        await call(cluster, b, "failpoint", {"name": "copy.mid", "action": "error"})
    secret = cluster.root / "secrets" / "admin"
    env = {k: v for k, v in os.environ.items()
           if k not in ("DDS_SECRET", failpoints.ENV_VAR)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dds.tools.admin", "add-brick", b4.address, "--host", "b4",
         "--json", "--seeds", ",".join(b.address for b in live), "--secret-file",
         str(secret)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        job: list[str] = []

        async def joining() -> bool:
            jobs = await call(cluster, b4, "journal_read", {"unfinished": True})
            for j in jobs["jobs"]:
                if j["kind"] == "add-brick" and any(s["name"].endswith(".added")
                                                    for s in j["steps"]):
                    job.append(j["job"])
                    return True
            return False
        await eventually(joining, WAIT_S, "the new member to join")
        await cancel(reactor, _target(cluster), job[0])

        async def exited() -> bool:
            return proc.poll() is not None
        await eventually(exited, WAIT_S, "the tool to stop")
    finally:
        if proc.poll() is None:
            proc.kill()
        for b in live:
            await call(cluster, b, "failpoint", {"name": "copy.mid", "action": None})
    out, err = proc.communicate()
    assert proc.returncode == 1, out + err
    report = json.loads(out)
    assert report["cancelled"] and not report["ok"], report
    [change] = [c for c in report["changes"] if c["new"] == "b4"][:1]
    assert change["outcome"] == "rolled back", report["changes"]
    rec = (await _records(cluster, live))[change["rg"]]
    assert rec.member_state("b4") is None and rec.member_state(change["old"]) == "active"
    jobs = await call(cluster, live[0], "journal_read", {"job": job[0]})
    assert jobs["jobs"][0]["state"] == "cancelled", jobs
    await client.maps.refresh()
    for k in keys:
        assert (await client.get(k)).value == b"v-" + k
    await client.close()


def _admin(cluster: Cluster, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    """Through the first three bricks: the ones that stay for the whole test."""
    return admin(cluster, *args, seeds=cluster.bricks[:3], env=env)
