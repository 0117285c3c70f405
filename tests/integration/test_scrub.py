"""``dds-admin scrub``, end to end against real brick processes: a clean cluster scrubs
clean; a replica changed behind its brick's back is reported with the exact key, and
``--fix`` re-copies it.

The admin tool runs as a subprocess (it runs its own reactor, the test process already
runs one).
"""

from __future__ import annotations

import json
import signal
import sqlite3
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from dds.bricks.rowcheck import row_checksum

from tests.harness.aio import replica_value
from tests.harness.cluster import Cluster
from tests.integration.test_admin_membership import admin

LEASE_MS = 1000


def scrub(cluster: Cluster, *args: str) -> tuple[int, dict[str, Any]]:
    result = admin(cluster, "scrub", "--json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest_twisted.ensureDeferred
async def test_a_clean_cluster_scrubs_clean(cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2,
                                       lease_ms=LEASE_MS)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    for i in range(200):
        await client.put(b"key%d" % i, b"v" * 50)
    for i in range(0, 200, 10):
        await client.remove(b"key%d" % i)
    await client.close()

    code, report = scrub(cluster)
    assert code == 0, report
    assert report["ok"] and report["errors"] == []
    assert (report["partitions_checked"], report["partitions_differing"],
            report["keys_differing"], report["fixes_done"]) == (2, 0, 0, 0)
    rows = [p["rows"] for p in report["partitions"]]
    assert all(len(set(r.values())) == 1 and len(r) == 3 for r in rows)
    assert sum(next(iter(r.values())) for r in rows) == 200     # tombstones included

    human = admin(cluster, "scrub", "p1.0", "--buckets", "8")
    assert human.returncode == 0, human.stderr
    assert "all replicas agree: 1 partition(s)" in " ".join(human.stdout.split())


@pytest_twisted.ensureDeferred
async def test_a_tampered_replica_is_reported_and_fixed(cluster_factory: Any) -> None:
    # The brick must come back with the tampered file, not re-sync it on its own.
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2,
                                       lease_ms=LEASE_MS,
                                       brick_settings={"recover_on_start": False})
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    for i in range(100):
        await client.put(b"key%d" % i, b"value-%d" % i)
    victim_key = b"key42"
    pid = str(client.router.route(client.map, victim_key).pid)
    await client.close()

    victim = cluster.brick("b3")
    assert victim.stop(signal.SIGTERM) == 0
    conn = sqlite3.connect(str(victim.data_dir / f"{pid}.sqlite"))
    with conn:
        # A diverged replica whose rows are intact (with a checksum of their own), so
        # that only the comparison with the other replicas can find it.
        changed = conn.execute("UPDATE kv SET value = ?, checksum = ? WHERE key = ?",
                               (b"bit rot", row_checksum(victim_key, 1, b"bit rot"),
                                victim_key)).rowcount
    conn.close()
    assert changed == 1
    victim.start()
    victim.wait_ready()
    await cluster.wait_serving(reactor, cluster.bricks)

    code, report = scrub(cluster)
    assert code == 1, report
    assert not report["ok"] and report["errors"] == []
    assert (report["partitions_differing"], report["keys_differing"],
            report["keys_divergent"]) == (1, 1, 1)
    part = next(p for p in report["partitions"] if p["state"] != "clean")
    assert part["pid"] == pid and part["minority"] == ["b3"]
    assert sorted(part["majority"]) == ["b1", "b2"]
    [key] = part["keys"]
    assert key["key"] == "key42" and key["divergent"]
    replicas = key["replicas"]
    assert {replicas[b]["version"] for b in ("b1", "b2", "b3")} == {1}
    assert replicas["b1"]["value_hash"] == replicas["b2"]["value_hash"] \
        != replicas["b3"]["value_hash"]

    human = admin(cluster, "scrub", pid)
    assert human.returncode == 1
    text = " ".join(human.stdout.split())
    assert "key42" in text and "minority b3" in text and "diverged" in text
    assert "seen twice" in text

    code, report = scrub(cluster, "--fix")
    assert code == 0, report
    assert report["ok"] and report["fixes_done"] == 1 and report["partitions_fixed"] == 1
    [fix] = report["fixes"]
    assert (fix["brick"], fix["ok"]) == ("b3", True)

    code, report = scrub(cluster)
    assert code == 0 and report["partitions_differing"] == 0, report
    client = await cluster.client(reactor, timeout=10.0)
    assert await replica_value(cluster, client, victim, victim_key) == (b"value-42", 1)
    await client.close()
