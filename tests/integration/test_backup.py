"""``dds-admin backup`` and ``restore`` (issue 17) with real brick processes: a backup
taken while clients write, restored into a cluster of another size, compared key by key
with what was acknowledged; damaged backups and non-empty targets refused with nothing
changed; an irregular trie (after a split) restored."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from dds.connect import open_connection
from dds.errors import PermissionDenied
from dds.maps import ClusterMap
from dds.tools.backup import backup
from dds.tools.backupfmt import MANIFEST, BackupError, load_manifest
from dds.tools.cluster import Target
from dds.tools.errors import AdminError
from dds.tools.reorg import QuietView
from dds.tools.restore import restore
from dds.tools.split import reshape

from tests.harness.admin import admin
from tests.harness.aio import call, eventually, replica_value
from tests.harness.cluster import CLUSTER, Cluster
from tests.harness.writers import Writers

WAIT_S = 60.0


def _target(cluster: Cluster) -> Target:
    return Target(tuple(("127.0.0.1", b.port) for b in cluster.bricks),
                  cluster.admin_secret.encode(), CLUSTER)


async def _true(value: bool) -> bool:
    return value


async def _held_map(cluster: Cluster) -> dict[str, int]:
    """Records each brick holds (0: not initialized)."""
    return {b.id: len((await call(cluster, b, "map_get", {}))["map"]) for b in cluster.bricks}


async def _replicas_agree(cluster: Cluster, cmap: ClusterMap) -> dict[str, set[int]]:
    out = {}
    for pid, rec in cmap.partition_rg.items():
        out[str(pid)] = {(await call(cluster, cluster.brick(b), "checksum",
                                     {"pid": str(pid)}))["checksum"]
                         for b in rec.active_members}
    return out


@pytest_twisted.ensureDeferred
async def test_backup_under_4_writers_restores_into_fewer_bricks_with_every_acked_write(
        cluster_factory: Any, tmp_path: Path) -> None:
    src: Cluster = cluster_factory(bricks=4, replication=3, partitions=4, lease_ms=1000)
    await src.init(reactor)
    keys = [b"bk-%d" % i for i in range(120)]
    writers = Writers(src, keys, n=4)
    await writers.start()
    try:
        await eventually(lambda: _true(len(writers.acks) >= 150), WAIT_S, "writes to flow")
        began = time.monotonic()
        before = [a for a in writers.acks if a.t < began]
        report = await backup(reactor, _target(src), tmp_path / "bk", QuietView())
        ended = time.monotonic()
        await eventually(lambda: _true(writers.acked_after(ended) >= 20), WAIT_S,
                         "writes after the backup")
    finally:
        await writers.stop()
    assert report["partitions"] == 4
    assert writers.acked_after(began) > 0 and any(a.t < ended for a in writers.acks
                                                  if a.t > began), "no write during it"

    dst: Cluster = cluster_factory(bricks=3, replication=3, partitions=16, lease_ms=1000)
    restored = await restore(reactor, dst.cluster_config(), _target(dst), tmp_path / "bk",
                             QuietView())
    assert restored["partitions"] == 4 and restored["bricks"] == 3
    await dst.wait_serving(reactor, dst.bricks)
    client = await dst.client(reactor, timeout=10.0)
    try:
        assert sorted(map(str, client.map.partition_rg)) == sorted(
            e["pid"] for e in report["entries"])
        newest: dict[bytes, int] = {}
        for a in before:
            newest[a.key] = max(newest.get(a.key, 0), a.version)
        written: dict[bytes, set[bytes]] = {}
        acked_at = {(a.key, a.version): a.value for a in writers.acks}
        for op in writers.ops():
            if op.kind == "put" and op.value is not None:
                written.setdefault(op.key, set()).add(op.value)
        for key in keys:
            route = client.router.route(client.map, key)
            got = {rec.id: await replica_value(dst, client, dst.brick(rec.id), key)
                   for rec in route.replicas}
            assert len(set(got.values())) == 1, f"replicas of {key!r} differ: {got}"
            value, version = next(iter(got.values()))
            assert version >= newest.get(key, 0), (
                f"{key!r} restored at v{version}, acknowledged at v{newest[key]} before "
                "the backup began")
            if value is not None:
                assert value in written.get(key, set()), f"{key!r}: invented {value!r}"
            if (key, version) in acked_at:
                assert value == acked_at[(key, version)]
    finally:
        await client.close()
    for pid, sums in (await _replicas_agree(dst, client.map)).items():
        assert len(sums) == 1, f"replicas of {pid} disagree"


@pytest.fixture(scope="module")
def small_backup(shared_cluster_factory: Any, tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[Cluster, Path]:
    """A 3-brick cluster with a few keys, and a backup of it."""
    src: Cluster = shared_cluster_factory(bricks=3, replication=3, partitions=4)
    dest = tmp_path_factory.mktemp("backups") / "small"

    async def fill() -> None:
        client = await src.client(reactor, timeout=10.0)
        try:
            for i in range(40):
                await client.put(b"small-%d" % i, b"v%d" % i)
        finally:
            await client.close()
        await backup(reactor, _target(src), dest, QuietView())
    pytest_twisted.blockon(Deferred.fromCoroutine(fill()))
    return src, dest


@pytest_twisted.ensureDeferred
async def test_restore_refuses_a_flipped_byte_naming_the_file_and_changes_nothing(
        small_backup: tuple[Cluster, Path], cluster_factory: Any, tmp_path: Path) -> None:
    _src, original = small_backup
    copy = tmp_path / "damaged"
    shutil.copytree(original, copy)
    entry = load_manifest(copy).entries[1]
    path = copy / entry.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    dst: Cluster = cluster_factory(bricks=3, replication=3)
    with pytest.raises(BackupError, match=f"{entry.pid}.sqlite is damaged"):
        await restore(reactor, dst.cluster_config(), _target(dst), copy, QuietView())
    assert await _held_map(dst) == {"b1": 0, "b2": 0, "b3": 0}


@pytest_twisted.ensureDeferred
async def test_restore_refuses_a_cluster_that_holds_a_map(
        small_backup: tuple[Cluster, Path]) -> None:
    src, dest = small_backup
    before = await _replicas_agree(src, ClusterMap.from_wire(
        (await call(src, src.bricks[0], "map_get", {}))["map"]))
    with pytest.raises(AdminError, match="brick b1 already holds a map"):
        await restore(reactor, src.cluster_config(), _target(src), dest, QuietView())
    after = await _replicas_agree(src, ClusterMap.from_wire(
        (await call(src, src.bricks[0], "map_get", {}))["map"]))
    assert after == before


def test_backup_refuses_a_directory_that_is_not_empty(
        small_backup: tuple[Cluster, Path]) -> None:
    src, dest = small_backup
    manifest = (dest / MANIFEST).read_text()
    result = admin(src, "backup", str(dest))
    assert result.returncode == 1
    assert "exists and is not empty" in result.stderr
    assert (dest / MANIFEST).read_text() == manifest


def test_backup_command_prints_its_report_as_json(
        small_backup: tuple[Cluster, Path], tmp_path: Path) -> None:
    src, _ = small_backup
    result = admin(src, "backup", str(tmp_path / "again"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["partitions"] == 4 and report["bytes"] > 0 and report["mb_s"] > 0
    assert load_manifest(tmp_path / "again").bytes == report["bytes"]


@pytest_twisted.ensureDeferred
async def test_a_backup_after_a_split_restores_its_irregular_partitions(
        cluster_factory: Any, tmp_path: Path) -> None:
    src: Cluster = cluster_factory(bricks=3, replication=3, partitions=2, lease_ms=1000)
    await src.init(reactor)
    client = await src.client(reactor, timeout=10.0)
    try:
        written = {b"split-%d" % i: b"x%d" % i for i in range(60)}
        for k, v in written.items():
            await client.put(k, v)
        pid = sorted(client.map.partition_rg)[0]
    finally:
        await client.close()
    await reshape(reactor, _target(src), "split", str(pid), lambda s: None, None)
    report = await backup(reactor, _target(src), tmp_path / "bk", QuietView())
    pids = sorted(e["pid"] for e in report["entries"])
    assert pids == sorted([str(c) for c in pid.children()] + ["p1.1"])

    dst: Cluster = cluster_factory(bricks=4, replication=2, lease_ms=1000)
    await restore(reactor, dst.cluster_config(), _target(dst), tmp_path / "bk",
                  QuietView())
    await dst.wait_serving(reactor, dst.bricks)
    client = await dst.client(reactor, timeout=10.0)
    try:
        assert sorted(map(str, client.map.partition_rg)) == pids
        for k, v in written.items():
            assert (await client.get(k)).value == v
    finally:
        await client.close()


@pytest.mark.parametrize("role", ["client", "brick"])
@pytest_twisted.ensureDeferred
async def test_backup_and_restore_requests_are_refused_to_all_but_the_admin_role(
        small_backup: tuple[Cluster, Path], role: str) -> None:
    src, _ = small_backup
    conn = await open_connection(reactor, "127.0.0.1", src.bricks[0].port,
                                 node_id=f"test-{role}", cluster=CLUSTER,
                                 credentials=src.credentials(role), max_frame=16 << 20)
    try:
        for mtype, body in (("backup_begin", {"pid": "p2.0"}),
                            ("restore_begin", {"pid": "p2.0", "size": 1, "checksum": 0})):
            with pytest.raises(PermissionDenied, match=f"not allowed for the {role} role"):
                await conn.call(mtype, body, timeout=10)
    finally:
        conn.close()
    assert not (src.bricks[0].data_dir / "backups").exists() or not list(
        (src.bricks[0].data_dir / "backups").iterdir())


class _Steps(QuietView):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def step(self, text: str) -> None:
        self.lines.append(text)


@pytest_twisted.ensureDeferred
async def test_a_partition_whose_member_is_down_is_taken_from_another(
        cluster_factory: Any, tmp_path: Path) -> None:
    src: Cluster = cluster_factory(bricks=3, replication=3, partitions=4, lease_ms=20000)
    await src.init(reactor)
    client = await src.client(reactor, timeout=10.0)
    try:
        for i in range(20):
            await client.put(b"down-%d" % i, b"v%d" % i)
    finally:
        await client.close()
    src.brick("b1").stop(signal.SIGKILL)
    view = _Steps()
    report = await backup(reactor, _target(src), tmp_path / "bk", view, timeout=5.0)
    assert report["partitions"] == 4
    assert all(e["brick"] != "b1" for e in report["entries"])
    assert any("b1 failed" in line for line in view.lines), view.lines
    manifest = load_manifest(tmp_path / "bk")
    assert sum(e.rows for e in manifest.entries) == 20


def test_restore_command_prints_its_report_as_json(
        small_backup: tuple[Cluster, Path], cluster_factory: Any, tmp_path: Path) -> None:
    from tests.harness.admin import clean_env
    _src, dest = small_backup
    dst: Cluster = cluster_factory(bricks=3, replication=2)
    config = tmp_path / "new.toml"
    config.write_text(f'[cluster]\nname = "{CLUSTER}"\nreplication = 2\n\n' + "".join(
        f'[[bricks]]\nid = "{b.id}"\naddress = "{b.address}"\n\n' for b in dst.bricks))
    result = subprocess.run(
        [sys.executable, "-m", "dds.tools.admin", "restore", str(dest), "--config",
         str(config), "--secret-file", str(dst.root / "secrets" / "admin"), "--json"],
        env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["partitions"] == 4 and report["bricks"] == 3
    assert report["bytes"] == load_manifest(dest).bytes and report["mb_s"] > 0
