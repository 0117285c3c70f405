"""``dds-admin txns`` and ``dds-admin repair`` against real brick processes, with a
coordinator (a client process) crashed after PREPARE so that every member holds the
transaction prepared.  The admin tool runs as a subprocess, as an operator runs it.

Waiting is always polling a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds.maps import ClusterMap
from dds import failpoints
from dds.failpoints import CRASH_EXIT_CODE

from tests.harness import zygote
from tests.harness.admin import admin, admin_json
from tests.harness.aio import call, eventually, replica_value
from tests.harness.cluster import CLUSTER, Cluster
from tests.harness.processes import BrickProcess

WAIT_S = 30.0
KEY = b"in-doubt"
VALUE = b"decided-later"

_COORDINATOR = """
    import sys
    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred
    from dds.lib import DDSClient

    async def main(reactor, seeds, secret, key, value):
        client = await DDSClient.connect(reactor, seeds.split(","), cluster="{cluster}",
                                         secret=secret.encode(), timeout=2.0)
        await client.put(key.encode(), value.encode())

    task.react(lambda reactor, *args: ensureDeferred(main(reactor, *args)), sys.argv[1:])
"""


def crash_a_coordinator_after_prepare(cluster: Cluster) -> None:
    """A client process that dies once every member voted YES on its put of KEY."""
    env = {k: v for k, v in os.environ.items() if k != failpoints.ENV_VAR}
    env[failpoints.ENV_VAR] = "coordinator.after_prepare=crash"
    coordinator = zygote.run(
        [sys.executable, "-c", textwrap.dedent(_COORDINATOR.format(cluster=CLUSTER)),
         ",".join(cluster.seeds), cluster.secret, KEY.decode(), VALUE.decode()],
        env, timeout=60)
    assert coordinator.returncode == CRASH_EXIT_CODE, coordinator.stderr


def by_brick(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {b["id"]: b["txns"] for b in report["bricks"]}


def txns_step(report: dict[str, Any]) -> dict[str, Any]:
    [step] = [s for s in report["steps"] if s["name"] == "txns"]
    assert step["ran"] is True
    result: dict[str, Any] = step["result"]
    return result


async def held(cluster: Cluster, bricks: list[BrickProcess] | None = None
               ) -> dict[str, tuple[int, float]]:
    """Per brick: transactions held and locks held."""
    out = {}
    for b in bricks or cluster.bricks:
        status = await call(cluster, b, "status", {})
        out[b.id] = (status["prepared"], status["metrics"].get("locks_held", 0))
    return out


def with_timeouts(tmp_path: Path, txn_deadline_ms: int) -> Cluster:
    return Cluster(tmp_path / "cluster", bricks=3, replication=3, partitions=4,
                   txn_deadline_ms=txn_deadline_ms)


@pytest.fixture
def patient_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Members hold a prepared transaction for ten minutes before termination runs."""
    cluster = with_timeouts(tmp_path, 600_000)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _proc_state(pid: int) -> str:
    """The process's state letter (``T``: stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def hasty_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Termination runs one second after PREPARE (at least twice the coordinator's
    timeout: four seconds with the coordinator above), and again every second."""
    cluster = with_timeouts(tmp_path, 1000)
    try:
        cluster.start()
        yield cluster
    finally:
        # A brick the test left stopped (SIGSTOP) still holds the transaction: it would
        # wait out its shutdown grace (5 s) for it; nothing is checked after the test.
        for b in cluster.bricks:
            if b.alive() and _proc_state(b.pid) == "T":
                b.stop(signal.SIGKILL)
        cluster.stop()


@pytest_twisted.ensureDeferred
async def test_txns_lists_and_repair_resolves_a_transaction_prepared_everywhere(
        patient_cluster: Cluster) -> None:
    cluster = patient_cluster
    await cluster.init(reactor)
    crash_a_coordinator_after_prepare(cluster)

    everything = admin_json(cluster, "txns", "--all")
    assert everything["active"] == 3 and everything["in_doubt"] == 0
    listed = by_brick(everything)
    assert sorted(listed) == [b.id for b in cluster.bricks]
    txids = set()
    for bid, txns in listed.items():
        [t] = txns
        assert (t["key"], t["key_hex"], t["op"]) == (KEY.decode(), KEY.hex(), "put")
        assert t["state"] == "prepared" and t["new_version"] == 1
        assert t["deadline_passed"] is False and t["in_doubt"] is False
        assert t["deadline_s"] >= 600 and 0 <= t["age_s"] < WAIT_S + 60
        txids.add(tuple(t["txid"]))
    assert len(txids) == 1                      # one transaction, on all three members
    [txid] = txids
    human = admin(cluster, "txns", "--all")
    assert human.returncode == 0, human.stderr
    assert f"{txid[0]}:{txid[1]}" in human.stdout and "prepared" in human.stdout
    assert "no in-doubt transactions (3 active, within their deadline)" in human.stdout

    # Not past its deadline: not in doubt.
    report = admin_json(cluster, "txns")
    assert report["in_doubt"] == 0 and all(not t for t in by_brick(report).values())
    human = admin(cluster, "txns")
    assert human.returncode == 0 and "no in-doubt transactions" in human.stdout

    # A dry run shows what would be resolved and changes nothing.
    dry = admin_json(cluster, "repair", "--dry-run", "--before-deadline")
    assert dry["dry_run"] is True
    step = txns_step(dry)
    assert sorted(c["brick"] for c in step["candidates"]) == [b.id for b in cluster.bricks]
    assert step["resolved"] == []
    human = admin(cluster, "repair", "--dry-run", "--before-deadline")
    assert human.returncode == 0, human.stderr
    assert "would resolve 3 transaction(s)" in human.stdout
    assert "all 3 bricks agree on map version" in human.stdout
    # Without --before-deadline, repair leaves a transaction inside its deadline alone:
    # its coordinator might still be deciding it.
    untouched = admin_json(cluster, "repair", "--txns-only")
    assert txns_step(untouched)["candidates"] == []
    assert [s["name"] for s in untouched["steps"] if not s["ran"]] == ["map", "reorg",
                                                                         "coverage"]
    assert await held(cluster) == {b.id: (1, 1) for b in cluster.bricks}
    assert admin_json(cluster, "txns", "--all")["active"] == 3

    # The operator knows the coordinator died: resolve now, by the termination rule.
    fixed = admin_json(cluster, "repair", "--before-deadline")
    assert fixed["ok"] is True
    outcomes = txns_step(fixed)["resolved"]
    assert sorted(o["brick"] for o in outcomes) == [b.id for b in cluster.bricks]
    assert all(o["decision"] == "commit" for o in outcomes)     # all prepared: commit
    assert all(tuple(o["txid"]) == txid for o in outcomes)
    assert {s for o in outcomes for s in o["states"]} <= {"prepared", "committed"}

    assert await held(cluster) == {b.id: (0, 0) for b in cluster.bricks}
    client = await cluster.client(reactor)
    for b in cluster.bricks:
        assert await replica_value(cluster, client, b, KEY) == (VALUE, 1)
    await client.close()
    assert admin_json(cluster, "txns", "--all")["active"] == 0
    after = admin(cluster, "repair")
    assert after.returncode == 0, after.stderr
    assert "no in-doubt transactions" in after.stdout


@pytest_twisted.ensureDeferred
async def test_a_transaction_past_its_deadline_with_two_members_stopped_is_in_doubt(
        hasty_cluster: Cluster) -> None:
    """With two of three members stopped the third can neither decide (it needs every
    member's answer) nor exclude them (a record change needs a majority of votes): the
    transaction stays prepared, ``txns`` and ``repair`` say so, and it is committed once
    the members answer again."""
    cluster = hasty_cluster
    await cluster.init(reactor)
    b1, b2, b3 = cluster.bricks
    crash_a_coordinator_after_prepare(cluster)
    for b in (b2, b3):
        b.send_signal(signal.SIGSTOP)       # before the deadline: termination cannot end
    live = [b1]

    async def past_deadline() -> bool:
        txns = (await call(cluster, b1, "txns", {}))["txns"]
        return len(txns) == 1 and bool(txns[0]["deadline_passed"])
    await eventually(past_deadline, WAIT_S, "the deadline to pass on the live member")

    report = admin_json(cluster, "txns", "--timeout", "1", seeds=live)
    assert report["in_doubt"] == 1 and sorted(report["unreachable"]) == [b2.id, b3.id]
    [t] = by_brick(report)[b1.id]
    assert t["in_doubt"] is True and t["state"] == "prepared" and t["key"] == "in-doubt"
    human = admin(cluster, "txns", "--timeout", "1", seeds=live)
    assert human.returncode == 0, human.stderr
    assert "1 in-doubt transaction(s) on 1 brick(s)" in human.stdout
    assert "prepared, in doubt" in human.stdout and f"{b3.id} (" in human.stdout

    # With b2 and b3 stopped the rule cannot decide: repair says so and fails.
    stuck = admin_json(cluster, "repair", "--timeout", "1", code=1, seeds=live)
    step = txns_step(stuck)
    assert stuck["ok"] is False and step["still_in_doubt"] == 1
    assert sorted(u["brick"] for u in step["unreachable"]) == [b2.id, b3.id]
    assert step["resolved"] and all(o["decision"] == "in-doubt" and "unreachable" in o["states"]
               for o in step["resolved"]), step
    assert await held(cluster, live) == {b1.id: (1, 1)}

    for b in (b2, b3):
        b.send_signal(signal.SIGCONT)

    async def resolved() -> bool:
        return await held(cluster) == {b.id: (0, 0) for b in cluster.bricks}
    await eventually(resolved, WAIT_S, "every member to be done with the transaction")
    client = await cluster.client(reactor)
    for b in cluster.bricks:
        assert await replica_value(cluster, client, b, KEY) == (VALUE, 1)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_transaction_past_its_deadline_with_one_member_stopped_is_committed_by_the_others(
        hasty_cluster: Cluster) -> None:
    """DESIGN §4: a participant that cannot be reached is excluded first; the remaining
    participants then decide among themselves (all prepared: commit)."""
    cluster = hasty_cluster
    await cluster.init(reactor)
    b1, b2, b3 = cluster.bricks
    crash_a_coordinator_after_prepare(cluster)
    b3.send_signal(signal.SIGSTOP)
    live = [b1, b2]

    async def decided() -> bool:
        return await held(cluster, live) == {b.id: (0, 0) for b in live}
    await eventually(decided, WAIT_S, "the live members to decide without b3")
    client = await cluster.client(reactor)
    for b in live:
        assert await replica_value(cluster, client, b, KEY) == (VALUE, 1)
    await client.close()
    for b in live:
        held_map = ClusterMap.from_wire((await call(cluster, b, "map_get", {}))["map"])
        _pid, rg = held_map.route(KEY)
        assert b3.id not in rg.active_members      # excluded from the transaction's RG
