"""Unit tests of the backup format (``tools/backupfmt.py``): the manifest round trip and
its checks (damaged, another version, not a backup, partitions not the map's), a
partition file's checks, and ``init``'s explicit partition lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from dds.config import parse_cluster_config
from dds.maps import ClusterMap
from dds.partition import PartitionId
from dds.records import ClusterRecord, Member, PartitionEntry, RGRecord

from dds.bricks.storage import Storage
from dds.tools.backupfmt import (MANIFEST, BackupError, Entry, Manifest, check_empty_dir,
                                 file_digest, load_manifest, scan_file, verify_file,
                                 write_manifest)
from dds.tools.placement import PlacementError, plan

P0, P1 = PartitionId(1, 0), PartitionId(1, 1)


def _map() -> ClusterMap:
    return ClusterMap.of([ClusterRecord("dds", 1, 1),
                          RGRecord("rg0", 1, [Member("b1")],
                                   [PartitionEntry(P0, "active"),
                                    PartitionEntry(P1, "active")])])


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    """A complete backup of two partitions, 10 rows each."""
    clock = Clock()
    storage = Storage(tmp_path / "brick", clock)
    dest = tmp_path / "bk"
    (dest / "partitions").mkdir(parents=True)
    entries = []
    for pid in (P0, P1):
        storage.open_partition(str(pid))
        keys = [k for k in (b"k%d" % i for i in range(200)) if pid.owns(k)][:10]
        for k in keys:
            storage.write(str(pid), k, b"value-" + k, 1)
    clock.advance(0)
    sources = {pid: storage.partition_path(str(pid)) for pid in (P0, P1)}
    storage.close()         # checkpointed: each file alone is the whole partition
    for pid in (P0, P1):
        path = dest / "partitions" / f"{pid}.sqlite"
        shutil.copyfile(sources[pid], path)
        size, digest = file_digest(path)
        rows, checksum = scan_file(path, str(pid))
        entries.append(Entry(str(pid), f"partitions/{pid}.sqlite", size, digest, 10, rows,
                             checksum, "b1", 0.1))
    write_manifest(dest, Manifest("dds", _map(), tuple(entries), 1.0, 2.0))
    return dest


def _edit(dest: Path, **changes: object) -> None:
    body = json.loads((dest / MANIFEST).read_text())
    body.update(changes)
    (dest / MANIFEST).write_text(json.dumps(body))


def test_a_manifest_reads_back_as_written_and_every_file_verifies(backup_dir: Path) -> None:
    manifest = load_manifest(backup_dir)
    assert manifest.cluster == "dds" and manifest.map.fp == _map().fp
    assert [e.pid for e in manifest.entries] == ["p1.0", "p1.1"]
    assert all(e.rows == 10 for e in manifest.entries)
    for entry in manifest.entries:
        verify_file(backup_dir, entry)


def test_a_changed_manifest_is_refused_as_damaged(backup_dir: Path) -> None:
    _edit(backup_dir, cluster="other")
    with pytest.raises(BackupError, match="manifest.json is damaged"):
        load_manifest(backup_dir)


def test_a_manifest_of_another_format_version_is_refused(backup_dir: Path) -> None:
    _edit(backup_dir, version=2)
    with pytest.raises(BackupError, match="backup format version 2"):
        load_manifest(backup_dir)


def test_a_directory_without_a_manifest_is_not_a_complete_backup(tmp_path: Path) -> None:
    (tmp_path / "partitions").mkdir()
    with pytest.raises(BackupError, match="not a complete backup"):
        load_manifest(tmp_path)


def test_a_json_file_of_another_kind_is_not_a_backup(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text('{"hello": 1}')
    with pytest.raises(BackupError, match="is not a DDS backup manifest"):
        load_manifest(tmp_path)


def test_a_flipped_byte_in_a_partition_file_is_named(backup_dir: Path) -> None:
    entry = load_manifest(backup_dir).entries[1]
    path = backup_dir / entry.file
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=r"p1\.1\.sqlite is damaged: xxh64"):
        verify_file(backup_dir, entry)


def test_a_missing_partition_file_is_named(backup_dir: Path) -> None:
    entry = load_manifest(backup_dir).entries[0]
    (backup_dir / entry.file).unlink()
    with pytest.raises(BackupError, match=r"p1\.0\.sqlite: missing"):
        verify_file(backup_dir, entry)


def test_a_non_empty_directory_is_refused_for_a_backup(backup_dir: Path,
                                                      tmp_path: Path) -> None:
    check_empty_dir(tmp_path / "new")
    with pytest.raises(BackupError, match="exists and is not empty"):
        check_empty_dir(backup_dir)


def _cfg(bricks: int = 3) -> object:
    return parse_cluster_config({
        "cluster": {"name": "dds", "replication": 3, "partitions": 4},
        "bricks": [{"id": f"b{i}", "address": f"127.0.0.1:{7400 + i}", "host": f"h{i}"}
                   for i in range(bricks)]})


def test_init_places_an_explicit_irregular_partition_list() -> None:
    pids = [PartitionId(2, 0), PartitionId(2, 2), PartitionId(1, 1)]
    records = plan(_cfg(), pids).records  # type: ignore[arg-type]
    placed = sorted(e.pid for r in records if isinstance(r, RGRecord) for e in r.partitions)
    assert placed == sorted(pids)


@pytest.mark.parametrize("pids, problem", [
    ([PartitionId(1, 0)], "do not cover"),
    ([PartitionId(1, 0), PartitionId(1, 1), PartitionId(2, 1)], "overlap"),
    ([PartitionId(1, 0), PartitionId(1, 0), PartitionId(1, 1)], "listed twice"),
    ([], "must not be empty"),
])
def test_init_refuses_a_partition_list_that_does_not_cover_the_keys_once(
        pids: list[PartitionId], problem: str) -> None:
    with pytest.raises(PlacementError, match=problem):
        plan(_cfg(), pids)  # type: ignore[arg-type]


def test_init_names_a_bad_partition_in_its_list(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dds.tools.admin import main

    config = tmp_path / "cluster.toml"
    config.write_text('[cluster]\nname = "dds"\nreplication = 1\n\n'
                      '[[bricks]]\nid = "b1"\naddress = "127.0.0.1:7401"\n')
    result = CliRunner().invoke(main, ["init", "--config", str(config),
                                       "--partitions", "p1.0,p1.x"])
    assert result.exit_code == 2
    assert "not a partition id: 'p1.x'" in result.output
