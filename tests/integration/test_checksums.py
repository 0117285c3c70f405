"""Row checksums on real bricks (issue 13, "A damaged value is served"): a byte flipped
in a stopped brick's partition file is never served; the brick answers
``ReplicaDamaged`` and repairs the key from its RG by itself, on a read or by its
scrubber; a partition file written before checksums is migrated online."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds.errors import ReplicaDamaged

from tests.harness.aio import call, eventually, replica_value
from tests.harness.cluster import Cluster
from tests.harness.processes import BrickProcess
from tests.integration.test_admin_membership import admin

LEASE_MS = 1000


def flip_value(brick: BrickProcess, pid: str, value: bytes) -> int:
    """Flip one bit in the middle of every copy of ``value`` in the stopped brick's
    partition file (SQLite's own structure stays intact); returns how many."""
    path = brick.data_dir / f"{pid}.sqlite"
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")     # every row in the file itself
    conn.close()
    data = bytearray(path.read_bytes())
    n = 0
    at = data.find(value)
    while at >= 0:
        data[at + len(value) // 2] ^= 0x04
        n += 1
        at = data.find(value, at + 1)
    path.write_bytes(bytes(data))
    return n


async def damaged_cluster(cluster_factory: Any, keys: int = 1, victims: tuple[str, ...] = ("b3",),
                          scrub_mb_s: float = 0.0) -> tuple[Cluster, list[bytes], str]:
    """Three bricks, ``keys`` keys of one partition written, each key's value flipped on
    disk in the ``victims`` while they were stopped; victims restarted with the damage
    (no re-sync on start).  Returns the cluster, the keys and their partition."""
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2,
                                       lease_ms=LEASE_MS,
                                       brick_settings={"recover_on_start": False,
                                                       "scrub_mb_s": scrub_mb_s})
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    pid = str(client.router.route(client.map, b"key0").pid)
    chosen = [k for k in (b"key%d" % i for i in range(1000))
              if str(client.router.route(client.map, k).pid) == pid][:keys]
    for key in chosen:
        await client.put(key, value_of(key))
    await client.close()
    for victim in victims:
        brick = cluster.brick(victim)
        assert brick.stop(signal.SIGTERM) == 0
        for key in chosen:
            assert flip_value(brick, pid, value_of(key)) >= 1
    for victim in victims:
        cluster.brick(victim).start()
    for victim in victims:
        cluster.brick(victim).wait_ready()
    await cluster.wait_serving(reactor, cluster.bricks)
    return cluster, chosen, pid


def value_of(key: bytes) -> bytes:
    return b"<checksummed value of " + key + b">" * 8


@pytest_twisted.ensureDeferred
async def test_a_damaged_value_is_refused_then_repaired_from_the_rg(cluster_factory: Any
                                                                   ) -> None:
    cluster, (key,), _pid = await damaged_cluster(cluster_factory)
    client = await cluster.client(reactor, timeout=10.0)
    victim = cluster.brick("b3")
    with pytest.raises(ReplicaDamaged) as e:
        await replica_value(cluster, client, victim, key)
    assert repr(key) in e.value.message

    async def repaired() -> bool:
        try:
            return await replica_value(cluster, client, victim, key) == (value_of(key), 1)
        except ReplicaDamaged:
            return False
    await eventually(repaired, 30, "b3 to repair the damaged key")
    assert cluster.metric("b3", "checksum_failures_total") >= 1
    assert cluster.metric("b3", "checksum_repairs_total") == 1
    assert cluster.metric("b3", "errors_total", code="replica_damaged") >= 1
    assert await replica_value(cluster, client, cluster.brick("b1"), key) == (value_of(key), 1)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_the_scrubber_repairs_a_damaged_value_nobody_reads(cluster_factory: Any
                                                                ) -> None:
    cluster, (key,), _pid = await damaged_cluster(cluster_factory, scrub_mb_s=1.0)

    async def repaired() -> bool:
        return cluster.metric("b3", "checksum_repairs_total") >= 1
    await eventually(repaired, 60, "b3's scrubber to find and repair the damaged key")

    async def passed() -> bool:
        return cluster.metric("b3", "scrub_last_pass_completed_seconds") > 0
    await eventually(passed, 60, "b3's scrubber to complete a pass")
    assert cluster.metric("b3", "scrub_pass") >= 1
    status = await call(cluster, cluster.brick("b3"), "status", {})
    assert status["scrub"]["pass"] >= 1 and status["scrub"]["scrub_mb_s"] == 1.0
    shown = admin(cluster, "status", "--json")
    b3 = next(b for b in json.loads(shown.stdout)["bricks"] if b["id"] == "b3")
    assert b3["scrub"]["pass"] >= 1
    assert "scrub: b1 pass" in " ".join(admin(cluster, "status").stdout.split())
    client = await cluster.client(reactor, timeout=10.0)
    assert await replica_value(cluster, client, cluster.brick("b3"), key) == (value_of(key), 1)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_library_read_with_damaged_replicas_returns_the_right_value(
        cluster_factory: Any) -> None:
    # Needs the library to read another replica on ReplicaDamaged (H2's change).
    cluster, keys, _pid = await damaged_cluster(cluster_factory, keys=10,
                                                victims=("b2", "b3"))
    client = await cluster.client(reactor, timeout=10.0)
    for key in keys:
        assert (await client.get(key)).value == value_of(key)
    await client.close()


def to_schema_1(path: Path) -> int:
    """Turn a partition file into what the code before checksums wrote (schema 1: no
    checksum column); returns its rows."""
    conn = sqlite3.connect(str(path))
    with conn:
        conn.execute("ALTER TABLE kv DROP COLUMN checksum")
        conn.execute("UPDATE meta SET value = 1 WHERE name = 'schema_version'")
        conn.execute("DELETE FROM meta WHERE name = 'checksums_missing'")
        rows: int = conn.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
    conn.close()
    return rows


@pytest_twisted.ensureDeferred
async def test_a_file_written_before_checksums_is_migrated_while_serving(
        cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2,
                                       lease_ms=LEASE_MS,
                                       brick_settings={"recover_on_start": False})
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    for i in range(300):
        await client.put(b"key%d" % i, b"value %d" % i)
    await client.close()
    victim = cluster.brick("b3")
    assert victim.stop(signal.SIGTERM) == 0
    for path in victim.data_dir.glob("txlog.*"):
        path.unlink()       # clean stop: the files hold every write
    rows = sum(to_schema_1(p) for p in victim.data_dir.glob("p*.sqlite"))
    assert rows == 300
    victim.start()
    victim.wait_ready()
    await cluster.wait_serving(reactor, cluster.bricks)

    async def migrated() -> bool:
        return (cluster.metric("b3", "checksums_migrated_total") == rows
                and cluster.metric("b3", "checksum_migrations_pending") == 0)
    await eventually(migrated, 60, "b3 to give every row a checksum")
    client = await cluster.client(reactor, timeout=10.0)
    for i in range(0, 300, 37):
        assert await replica_value(cluster, client, victim, b"key%d" % i) == (
            b"value %d" % i, 1)
    await client.close()
    for path in victim.data_dir.glob("p*.sqlite"):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        meta = dict(conn.execute("SELECT name, value FROM meta"))
        nulls = conn.execute("SELECT COUNT(*) FROM kv WHERE checksum IS NULL").fetchone()[0]
        conn.close()
        assert (int(meta["schema_version"]), int(meta["checksums_missing"]), nulls) == (2, 0, 0)
