"""Unreadable partition files on real bricks (issue 13, "a replica file that cannot be
read"): the brick starts, sets the file aside in its quarantine directory naming it,
serves its other partitions, answers for the damaged one with ``ReplicaDamaged`` and
copies it again from its RG; the library reads from another replica meanwhile; ``scrub
--fix`` repairs such a replica instead of reporting it "not compared".

Throughout, a probe reads another partition from the damaged brick itself, and every
acknowledged write is read back at the end from every replica.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from dds.lib import DDSClient
from dds.errors import ConnectionLost
from tests.harness.aio import Background, call, eventually, every_replica_holds, stop
from tests.harness.cluster import Cluster
from tests.harness.processes import BrickProcess
from tests.integration.test_scrub import scrub

LEASE_MS = 1000
VICTIM = "b3"
#: b3 is in rg0 (p2.0), rg1 (p2.1) and rg2 (p2.2) of the 4-brick, 4-partition layout.
DAMAGED, OTHER = "p2.0", "p2.1"


def make(cluster_factory: Any, **brick_settings: Any) -> Cluster:
    cluster: Cluster = cluster_factory(bricks=4, replication=3, partitions=4,
                                       lease_ms=LEASE_MS, brick_settings=brick_settings)
    return cluster


async def fill(client: DDSClient, n: int = 400) -> dict[bytes, bytes]:
    """``n`` acknowledged writes of about 1 KB (so the table spans many pages)."""
    written = {}
    for i in range(n):
        key, value = b"key%04d" % i, b"value-%04d-" % i + b"x" * 1000
        await client.put(key, value)
        written[key] = value
    return written


async def log_past(cluster: Cluster, client: DDSClient, written: dict[bytes, bytes],
                   pid: str) -> None:
    """Write to other partitions until the victim's transaction log has started a new
    generation: then its start redoes no write of ``pid`` (the log generation that held
    them is retired), and the damage of ``pid``'s file is found by a read."""
    i = 0
    while cluster.metric(VICTIM, "storage_log_rotations_total") < 1:
        for _ in range(20):
            key = b"big%04d" % i
            i += 1
            if str(client.router.route(client.map, key).pid) in (pid, "p2.3"):
                continue            # p2.3: not on the victim
            written[key] = b"%04d" % i * (64 << 10)
            await client.put(key, written[key])
        assert i < 2000, "the victim's log never rotated"


def keys_of(client: DDSClient, written: dict[bytes, bytes], pid: str) -> list[bytes]:
    keys = [k for k in written if str(client.router.route(client.map, k).pid) == pid]
    assert keys, f"no key of {pid}"
    return keys


def zero_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"\0" * 100)


def break_table(path: Path) -> None:
    """Overwrite the root page of the ``kv`` table with garbage: the file still opens
    (its schema, ``meta`` and the lsn index are intact), every read of a row fails."""
    conn = sqlite3.connect(str(path))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'kv'"
                            ).fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)


class Probe(Background):
    """Reads of ``keys`` from one brick directly, one after another, until stopped:
    each latency, and every answer that was not the written value.  A lost connection
    ends it (recorded as a wrong answer)."""

    def __init__(self, cluster: Cluster, client: DDSClient, brick: BrickProcess,
                 keys: list[bytes], written: dict[bytes, bytes]) -> None:
        super().__init__()
        self.cluster, self.client, self.brick = cluster, client, brick
        self.keys, self.written = keys, written
        self.latencies: list[float] = []
        self.wrong: list[Any] = []
        self._stop = False
        self.done: Deferred[None] = Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        conn = await self.cluster.admin_connection(reactor, self.brick)
        try:
            i = 0
            while not self._stop:
                key = self.keys[i % len(self.keys)]
                i += 1
                route = self.client.router.route(self.client.map, key)
                began = time.monotonic()
                try:
                    reply = await conn.call("get", {"key": key, **route.ref()}, timeout=5)
                except ConnectionLost as e:
                    self.wrong.append((key, repr(e)))
                    break
                except Exception as e:       # noqa: BLE001 -- recorded, asserted below
                    self.wrong.append((key, repr(e)))
                    await self.settle()
                    continue
                self.latencies.append(time.monotonic() - began)
                if reply["value"] != self.written[key]:
                    self.wrong.append((key, reply["value"][:20]))
        finally:
            conn.close()

    async def stop(self) -> str:
        self._stop = True
        await self.done
        lat = sorted(self.latencies)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
        return (f"probe of {self.brick.id}: {len(lat)} reads, p50 "
                f"{lat[len(lat) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
                f"max {lat[-1] * 1000:.1f} ms")


async def serves(cluster: Cluster, brick: BrickProcess, rg: str) -> bool:
    status = await call(cluster, brick, "status", {})
    return (status["members"].get(rg) == "active" and rg not in status["blocked"]
            and status["leases"].get(rg, {}).get("state") == "valid")


async def healed(cluster: Cluster, brick: BrickProcess) -> bool:
    status = await call(cluster, brick, "status", {})
    return (all(s == "active" for s in status["members"].values())
            and not status["blocked"]
            and status["metrics"].get("damaged_replicas", 0) == 0)


def damaged_files(brick: BrickProcess, pid: str) -> list[Path]:
    return sorted((brick.data_dir / "quarantine").glob(f"{pid}.*.damaged.sqlite"))


@pytest.mark.parametrize("damage,found", [
    (zero_header, "file is not a database"),
    # Found when the brick redoes the transaction log's writes into the file at start:
    # then every file is checked in depth.
    (break_table, "quick_check"),
], ids=["header-zeroed", "table-overwritten"])
@pytest_twisted.ensureDeferred
async def test_a_brick_with_an_unreadable_partition_file_starts_and_recopies_it(
        cluster_factory: Any, damage: Callable[[Path], None], found: str) -> None:
    # recover_on_start off: the restart itself re-syncs nothing, so what is re-copied is
    # the damaged partition's RG alone, while the brick serves its other RGs.
    cluster = make(cluster_factory, recover_on_start=False)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    written = await fill(client)
    victim = cluster.brick(VICTIM)
    assert await stop(victim) == [0]
    path = victim.data_dir / f"{DAMAGED}.sqlite"
    damage(path)

    victim.start()
    victim.wait_ready()                 # it used to exit: "file is not a database"
    await eventually(lambda: serves(cluster, victim, "rg1"), 30, f"{VICTIM} to serve rg1")
    probe = Probe(cluster, client, victim, keys_of(client, written, OTHER), written)
    await eventually(lambda: healed(cluster, victim), 60, f"{VICTIM} to re-copy {DAMAGED}")
    print(await probe.stop())

    assert probe.wrong == []
    assert len(damaged_files(victim, DAMAGED)) == 1
    lines = [e for e in victim.log_events() if e["level"] == "error"
             and str(path) in str(e["msg"]) and found in str(e["msg"])]
    assert lines, "the log does not name the unreadable file"
    status = await call(cluster, victim, "status", {})
    assert [q["damaged"] for q in status["quarantine"]] == [True]
    await every_replica_holds(cluster, client, written)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_partition_file_found_unreadable_by_a_read_is_set_aside_and_recopied(
        cluster_factory: Any) -> None:
    # recover_on_start off: the brick must serve the damaged file (and find it damaged)
    # rather than replace it by its restart's re-sync.  No read cache: reads reach the
    # file.
    cluster = make(cluster_factory, recover_on_start=False, cache_entries=0)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    written = await fill(client)
    await log_past(cluster, client, written, DAMAGED)
    victim = cluster.brick(VICTIM)
    assert await stop(victim) == [0]
    break_table(victim.data_dir / f"{DAMAGED}.sqlite")
    victim.start()
    victim.wait_ready()
    await cluster.wait_serving(reactor, [victim])
    await eventually(lambda: serves(cluster, victim, "rg1"), 30, f"{VICTIM} to serve rg1")
    probe = Probe(cluster, client, victim, keys_of(client, written, OTHER), written)

    # Reads of the damaged partition from the damaged brick itself: ReplicaDamaged
    # (never the bytes, never an internal error), or not serving once it re-syncs.
    key = keys_of(client, written, DAMAGED)[0]
    route = client.router.route(client.map, key)
    try:
        await call(cluster, victim, "get", {"key": key, **route.ref()})
        raise AssertionError("the damaged replica answered a read")
    except Exception as e:            # noqa: BLE001 -- checked just below
        assert type(e).__name__ == "ReplicaDamaged", repr(e)
    # A write to it there applies nothing (refused before any vote).
    body = {"txid": [9, 1], "ts": [1, 9], "op": "put", "key": key, "value": b"new",
            "expected_version": None, "timeout_ms": 1000, **route.ref()}
    try:
        await call(cluster, victim, "prepare", body)
        raise AssertionError("the damaged replica voted on a write")
    except Exception as e:            # noqa: BLE001 -- checked just below
        assert type(e).__name__ in ("ReplicaDamaged", "NotServing", "StaleMap"), repr(e)
    # (Other writes may still be prepared there: parallel commit reports them done
    # before their one-way COMMITs are applied.)
    txns = (await call(cluster, victim, "txns", {}))["txns"]
    assert [9, 1] not in [t["txid"] for t in txns]
    # Through the library, every read of the partition gets the written value.
    reader = await cluster.client(reactor, timeout=10.0)
    damaged_keys = keys_of(client, written, DAMAGED)
    for i in range(400):
        k = damaged_keys[i % len(damaged_keys)]
        assert (await reader.get(k)).value == written[k]

    await eventually(lambda: healed(cluster, victim), 60, f"{VICTIM} to re-copy {DAMAGED}")
    print(await probe.stop())
    assert probe.wrong == []
    assert cluster.metric(VICTIM, "replicas_damaged_total") == 1
    assert len(damaged_files(victim, DAMAGED)) == 1
    assert any(e["level"] == "error" and DAMAGED in str(e["msg"])
               and "malformed" in str(e["msg"]) for e in victim.log_events())
    await every_replica_holds(cluster, client, written)
    await reader.close()
    await client.close()


@pytest_twisted.ensureDeferred
async def test_scrub_fix_repairs_an_unreadable_replica(cluster_factory: Any) -> None:
    cluster = make(cluster_factory, recover_on_start=False, cache_entries=0)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    written = await fill(client, 200)
    await log_past(cluster, client, written, DAMAGED)
    victim = cluster.brick(VICTIM)
    assert await stop(victim) == [0]
    break_table(victim.data_dir / f"{DAMAGED}.sqlite")
    victim.start()
    victim.wait_ready()
    await cluster.wait_serving(reactor, [victim])

    code, report = scrub(cluster, DAMAGED, "--fix")

    assert code == 0, report
    assert report["ok"] and report["partitions_damaged"] == 1, report
    assert report["replicas_damaged"] == [f"{VICTIM}:{DAMAGED}"]
    assert [p["fixed"] for p in report["partitions"]] == [True]
    assert [f["brick"] for f in report["fixes"]] == [VICTIM]
    code, again = scrub(cluster, DAMAGED)
    assert code == 0 and again["partitions_damaged"] == 0, again
    await every_replica_holds(cluster, client, written)
    await client.close()
