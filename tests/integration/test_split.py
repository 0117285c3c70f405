"""``dds-admin split`` and ``merge`` (DESIGN §8) with real brick processes: a partition is
split and merged back in place while 8 clients write; the history checker finds no
violation, every key reads its acknowledged value from every replica, and the replicas
agree.  Then the tool is killed after each journaled step and ``dds-admin repair`` leaves
the key range active in exactly one set of partitions, with the data intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from dds import failpoints
from dds.partition import PartitionId
from dds.records import RGRecord, record_from_wire
from dds.tools.cluster import Target
from dds.tools.split import reshape

from tests.harness.admin import admin as _admin
from tests.harness.aio import call, eventually, replica_value
from tests.harness.cluster import CLUSTER, Cluster
from tests.harness.processes import wait_until
from tests.harness.writers import Writers, nothing_prepared
from tests.verify.history import HistoryRecorder
from tests.verify.linearizability import check_linearizable, check_lost_writes

WAIT_S = 30.0


def _target(cluster: Cluster) -> Target:
    return Target(tuple(("127.0.0.1", b.port) for b in cluster.bricks),
                  cluster.admin_secret.encode(), CLUSTER)


async def _true(value: bool) -> bool:
    return value


async def _record(cluster: Cluster, rg: str) -> RGRecord:
    recs = []
    for b in cluster.bricks:
        data = (await call(cluster, b, "rg_status", {"rg": rg}))["record"]
        if data is not None:
            recs.append(record_from_wire(data))
    best = max(recs, key=lambda r: r.version)
    assert isinstance(best, RGRecord)
    return best


@pytest_twisted.ensureDeferred
async def test_split_then_merge_under_8_writers_loses_nothing_and_replicas_agree(
        cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=6, replication=3, partitions=4, lease_ms=1000)
    await cluster.init(reactor)
    checker = await cluster.client(reactor, timeout=10.0)
    pid = sorted(checker.map.partition_rg)[0]
    rg = checker.map.partition_rg[pid].name
    c0, c1 = pid.children()
    keys = [b"key-%d" % i for i in range(96)]
    moving = {k for k in keys if pid.owns(k)}
    assert len(moving) >= 12

    writers = Writers(cluster, keys, n=8)
    await writers.start()
    lines: list[str] = []
    seen: list[tuple[int, int]] = []
    try:
        await eventually(lambda: _true(len(writers.acks) >= 100), WAIT_S, "writes to flow")
        t_split = time.monotonic()
        split = await reshape(reactor, _target(cluster), "split", str(pid), lines.append,
                              lambda done, total: seen.append((done, total)))
        t_split_end = time.monotonic()
        await eventually(lambda: _true(writers.acked_after(t_split_end, moving) >= 20),
                         WAIT_S, "writes to the children")
        t_merge = time.monotonic()
        merged = await reshape(reactor, _target(cluster), "merge", str(c1), lines.append)
        t_merge_end = time.monotonic()
        await eventually(lambda: _true(writers.acked_after(t_merge_end, moving) >= 20),
                         WAIT_S, "writes to the merged parent")
    finally:
        await writers.stop()

    assert split["state"] == merged["state"] == "done", (split, merged, lines)
    assert split["targets"] == [str(c0), str(c1)] and merged["targets"] == [str(pid)]
    assert merged["sources"] == [str(c0), str(c1)]
    gaps = [writers.max_gap(a, b)[0] for a, b in ((t_split, t_split_end),
                                                  (t_merge, t_merge_end))]
    print(f"split {split['seconds']:.2f}s (fence {split['fence_s']:.3f}s), merge "
          f"{merged['seconds']:.2f}s (fence {merged['fence_s']:.3f}s); longest write gap "
          f"{max(gaps):.3f}s; {len(writers.acks)} writes acknowledged "
          f"({dict(writers.errors)})")
    assert seen, "no progress reported"

    await eventually(lambda: nothing_prepared(cluster, cluster.bricks), WAIT_S,
                     "every transaction to be resolved")

    async def same_map() -> bool:
        digests = [sorted(map(tuple, (await call(cluster, b, "status", {}))["digest"]))
                   for b in cluster.bricks]
        return all(d == digests[0] for d in digests)
    await eventually(same_map, WAIT_S, "every brick to hold the same map")
    await checker.maps.refresh()
    assert checker.map.partition_rg[pid].name == rg
    assert c0 not in checker.map.partition_rg and c1 not in checker.map.partition_rg

    async def files_settled() -> bool:
        rec = checker.map.rgs[rg]
        listed = sorted(str(e.pid) for e in rec.partitions)
        for b in cluster.bricks:
            held = sorted((await call(cluster, b, "status", {}))["partitions"])
            if b.id in rec.active_members and any(p not in held for p in listed):
                return False
            if str(c0) in held or str(c1) in held:
                return False
        return True
    await eventually(files_settled, WAIT_S, "the members to drop the children's replicas")

    # Every key, on every replica: the same value, the last acknowledged one or later.
    final_by_replica: list[dict[bytes, tuple[bytes | None, int]]] = [{}, {}, {}]
    final_gets = HistoryRecorder(99)
    for k in keys:
        route = checker.router.route(checker.map, k)
        values = [await replica_value(cluster, checker, cluster.brick(b.id), k)
                  for b in route.replicas]
        assert len(set(values)) == 1, (k, values)
        for i, v in enumerate(values):
            final_by_replica[i][k] = v
        h = final_gets.invoke("get", k)
        final_gets.complete(h, "ok", result_value=values[0][0], result_version=values[0][1])
    ops = writers.ops()
    assert sum(op.status == "ok" for op in ops) == len(writers.acks) > 100
    for finals in final_by_replica:
        lost = check_lost_writes(ops, finals)
        assert lost.ok, [v.message for v in lost.violations[:5]]
    lin = check_linearizable(ops + final_gets.ops())
    assert lin.ok, [v.message for v in lin.violations[:3]]
    acked_keys = {a.key for a in writers.acks}
    for k in acked_keys:
        assert (await checker.get(k)).value is not None, k

    # Key counts: the replicas of every partition agree, and they add up to the keys.
    total = 0
    for rec in checker.map.rgs.values():
        for entry in rec.partitions:
            answers = [await call(cluster, cluster.brick(b), "checksum",
                                  {"pid": str(entry.pid)}) for b in rec.active_members]
            assert len({(a["count"], a["checksum"]) for a in answers}) == 1, (
                rec.name, str(entry.pid), answers)
            total += answers[0]["count"]
    written = {k for k, (v, _) in final_by_replica[0].items() if v is not None}
    assert total == len(written) and acked_keys <= written
    await checker.close()


# -- killed at every step, then repaired -------------------------------------------------------

STEPS = ("incoming", "prepared", "fenced", "delta", "cutover", "released")
#: (step at which the tool dies); the kind follows from the layout (split a leaf, merge
#: its children).  Rolled-back runs leave the layout; finished ones flip it.
KILL_AT = ("incoming", "prepared", "fenced", "delta", "cutover",     # split
           "incoming", "prepared", "fenced", "delta", "released",    # merge
           "released",                                               # split
           "cutover")                                                # merge


def _proc_state(pid: int) -> str:
    """The process's state letter (``T``: stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest_twisted.ensureDeferred
async def test_repair_finishes_or_rolls_back_a_split_or_merge_killed_at_any_step(
        cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2, lease_ms=1000)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=20.0)
    pid = sorted(client.map.partition_rg)[0]
    rg = client.map.partition_rg[pid].name
    c0, c1 = pid.children()
    keys = [b"key-%d" % i for i in range(60)]
    for k in keys:
        await client.put(k, b"v-" + k)
    leaf = True             # pid is a leaf (else its children are)
    for run, step in enumerate(KILL_AT):
        kind = "split" if leaf else "merge"
        killed = _admin(cluster, kind, str(pid), "--json",
                        env={failpoints.ENV_VAR: f"{kind}.after_{step}=crash"})
        assert killed.returncode == failpoints.CRASH_EXIT_CODE, killed.stdout + killed.stderr
        repaired = _admin(cluster, "repair", "--json")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        report = json.loads(repaired.stdout)
        [reorg] = [s for s in report["steps"] if s["name"] == "reorg"]
        actions = [d["action"] for d in reorg["result"]["resumed"]]
        expected = ("finished" if STEPS.index(step) >= STEPS.index("cutover")
                    else "rolled back")
        assert actions == [expected], (run, kind, step, report)
        if expected == "finished":
            leaf = not leaf
        want = [str(pid)] if leaf else [str(c0), str(c1)]
        gone = [str(c0), str(c1)] if leaf else [str(pid)]

        async def settled() -> bool:
            for b in cluster.bricks:
                rec = record_from_wire((await call(cluster, b, "rg_status",
                                                   {"rg": rg}))["record"])
                assert isinstance(rec, RGRecord)
                entries = {str(e.pid): e.state for e in rec.partitions}
                if any(entries.get(p) != "active" for p in want) or \
                        any(p in entries for p in gone):
                    return False
                status = await call(cluster, b, "status", {})
                if any(p in status["partitions"] for p in gone) or \
                        any(p not in status["partitions"] for p in want):
                    return False
                if status["prepared"]:
                    return False
            return True
        await eventually(settled, WAIT_S, f"{want} active and held, {gone} gone (run {run}, "
                         f"{kind} killed after {step})")
        await client.maps.refresh()
        leaves = client.map.trie.leaves         # tiles the key space exactly once
        assert all(PartitionId.parse(p) in leaves for p in want)
        for k in keys:
            assert (await client.get(k)).value == b"v-" + k, (run, step, k)
        k = keys[run]
        await client.put(k, b"v-" + k)          # writes work (same value: reads above)
        for p in want:
            answers = [await call(cluster, b, "checksum", {"pid": p}) for b in cluster.bricks]
            assert len({(a["count"], a["checksum"]) for a in answers}) == 1, (run, p, answers)
    jobs = _admin(cluster, "jobs", "--json")
    assert jobs.returncode == 0 and json.loads(jobs.stdout)["jobs"] == [], jobs.stdout

    # `dds-admin cancel` while the tool runs: it stops at its next step and rolls back.
    assert leaf
    secret = cluster.root / "secrets" / "admin"
    env = {k: v for k, v in os.environ.items() if k not in ("DDS_SECRET",)}
    env[failpoints.ENV_VAR] = "split.after_prepared=pause"      # SIGSTOP: we continue it
    running = subprocess.Popen(
        [sys.executable, "-m", "dds.tools.admin", "split", str(pid), "--json", "--seeds",
         ",".join(b.address for b in cluster.bricks), "--secret-file", str(secret)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def stopped() -> bool:
            assert running.poll() is None, running.communicate()
            return _proc_state(running.pid) == "T"
        wait_until(stopped, 60, "the split to stop after its prepared step")
        listed = json.loads(_admin(cluster, "jobs", "--json").stdout)["jobs"]
        assert [st["name"] for st in listed[0]["steps"]] == ["incoming", "prepared"]
        cancelled = _admin(cluster, "cancel", listed[0]["job"])
        assert cancelled.returncode == 0, cancelled.stderr
        os.kill(running.pid, signal.SIGCONT)
        out, err = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 1 and "cancelled and rolled back" in err, (out, err)
    after = json.loads(_admin(cluster, "jobs", "--all", "--json").stdout)["jobs"]
    assert [j["state"] for j in after if j["job"] == listed[0]["job"]] == ["rolled-back"]
    await client.maps.refresh()
    assert client.map.partition_rg[pid].name == rg and c0 not in client.map.partition_rg
    assert all(e.state == "active" for e in client.map.rgs[rg].partitions)
    for b in cluster.bricks:
        status = await call(cluster, b, "status", {})
        assert str(c0) not in status["partitions"], status["partitions"]
        split_jobs = await call(cluster, b, "split_status", {})
        assert split_jobs["jobs"] == {}
    for k in keys:
        assert (await client.get(k)).value == b"v-" + k
    await client.close()
