"""The map and the journal are as durable as the brick's data (docs/architecture.md):
fsynced in ``fsync`` mode only.  Bricks on the memory network; fsyncs counted."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from dds.bricks import atomicfile
from tests.sim.network import SimCluster


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = atomicfile.os.fsync

    def counted(fd: int) -> None:
        calls.append(fd)
        real(fd)
    monkeypatch.setattr(atomicfile.os, "fsync", counted)
    return calls


@pytest.mark.parametrize("mode, synced", [("fsync", True), ("disk", False),
                                          ("memory", False)])
def test_an_adopted_map_record_is_fsynced_only_in_fsync_mode(
        tmp_path: Path, fsyncs: list[int], mode: str, synced: bool) -> None:
    cluster = SimCluster(tmp_path, n=1, config={"brick": {"durability": mode}})
    try:
        brick = cluster.bricks[0]
        newer = attrs.evolve(cluster.records[0], version=cluster.records[0].version + 1)
        del fsyncs[:]
        cluster.push(newer)
        assert brick.maps.map.cluster is not None
        assert brick.maps.map.cluster.version == newer.version
        assert bool(fsyncs) is synced
    finally:
        cluster.close()


@pytest.mark.parametrize("mode, level", [("fsync", 2), ("disk", 1), ("memory", 1)])
def test_the_journal_commits_with_the_mode_s_sqlite_synchronous_level(
        tmp_path: Path, mode: str, level: int) -> None:
    cluster = SimCluster(tmp_path, n=1, config={"brick": {"durability": mode}})
    try:
        conn = cluster.bricks[0].journal._db()
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level  # FULL=2, NORMAL=1
    finally:
        cluster.close()
