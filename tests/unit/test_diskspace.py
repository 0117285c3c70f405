"""The full-disk state machine (``bricks/diskspace.py``) and the probe of unreadable
partition files (``bricks/damage.py``), on a ``Clock`` and a fake ``statvfs``."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock

from dds.bricks.damage import probe, set_aside_unreadable, unreadable
from dds.bricks.diskspace import DiskSpace, full_error
from dds.bricks.partstore import PartitionStore, ReadResult
from dds.bricks.rowcheck import row_checksum
from dds.errors import StorageFull
from dds.metrics import Metrics

MIB = 1 << 20


class Disk:
    def __init__(self, free: int) -> None:
        self.free = free
        self.full_calls = 0
        self.free_calls = 0

    def statvfs(self, path: Any) -> Any:
        return SimpleNamespace(f_bavail=self.free // 4096, f_frsize=4096)


def make(tmp_path: Path, disk: Disk, min_free: int = 8 * MIB) -> DiskSpace:
    def on_full() -> None:
        disk.full_calls += 1

    def on_free() -> None:
        disk.free_calls += 1
    space = DiskSpace("b1", tmp_path, Clock(), Metrics(), min_free_bytes=min_free,
                      check_s=1.0, on_full=on_full, on_free=on_free,
                      statvfs=disk.statvfs)  # type: ignore[arg-type]
    space.start()           # looks at once: a brick full at start is full at once
    return space


def test_free_space_below_the_minimum_makes_the_brick_full_and_refuse_writes(
        tmp_path: Path) -> None:
    disk = Disk(100 * MIB)
    space = make(tmp_path, disk)
    space.check()
    assert not space.full and disk.full_calls == 0
    disk.free = 4 * MIB
    space.check()
    assert space.full and disk.full_calls == 1
    refusal = space.refusal()
    assert isinstance(refusal, StorageFull) and "below brick.min_free_mb" in refusal.message
    assert space.metrics.snapshot()["storage_full"] == 1
    assert space.metrics.counters["storage_full_refusals_total"] == 1


def test_the_brick_is_free_again_only_past_the_resume_level(tmp_path: Path) -> None:
    disk = Disk(0)
    space = make(tmp_path, disk)
    assert space.full and disk.full_calls == 1
    disk.free = 10 * MIB                # above the minimum, below twice it
    space.check()
    assert space.full and disk.free_calls == 0 and disk.full_calls == 2   # asked again
    disk.free = 16 * MIB
    space.check()
    assert not space.full and disk.free_calls == 1
    assert space.metrics.snapshot()["storage_full"] == 0


def test_a_write_failing_with_enospc_or_sqlite_full_makes_the_brick_full(
        tmp_path: Path) -> None:
    for error in (OSError(errno.ENOSPC, "No space left on device"),
                  sqlite3.OperationalError("database or disk is full")):
        space = make(tmp_path, Disk(100 * MIB))
        assert full_error(error)
        assert space.saw(error) and space.full
    other = make(tmp_path, Disk(100 * MIB))
    assert not other.saw(OSError(errno.EIO, "I/O error")) and not other.full
    assert not full_error(ValueError("x"))


def test_a_short_write_without_errno_looks_at_free_space_at_once(tmp_path: Path) -> None:
    space = make(tmp_path, Disk(0))
    assert space.saw(OSError("short write to txlog.3 (10 of 20 bytes)"))
    assert space.full


def _partition(path: Path, rows: int = 2000) -> None:
    store = PartitionStore(path, path.name[:-len(".sqlite")])
    for i in range(rows):
        store._stage(b"k%d" % i, ReadResult(b"v" * 200, 1),
                     row_checksum(b"k%d" % i, 1, b"v" * 200))
    store._commit()
    store.close()


def test_the_probe_finds_a_zeroed_header_and_a_truncation_and_passes_a_sound_file(
        tmp_path: Path) -> None:
    for name in ("p1.0", "p1.1", "p2.0"):
        _partition(tmp_path / f"{name}.sqlite")
    with open(tmp_path / "p1.0.sqlite", "r+b") as f:
        f.write(b"\0" * 100)
    path = tmp_path / "p1.1.sqlite"
    os.truncate(path, path.stat().st_size - 4096)
    assert "not a database" in (probe(tmp_path / "p1.0.sqlite") or "")
    assert probe(path) is not None
    assert probe(tmp_path / "p2.0.sqlite") is None

    moved = set_aside_unreadable(tmp_path)

    assert sorted(moved) == ["p1.0", "p1.1"]
    left = sorted(f.name for f in tmp_path.glob("p*.sqlite"))
    assert left == ["p2.0.sqlite"]
    quarantined = sorted(f.name for f in (tmp_path / "quarantine").iterdir())
    assert [n for n in quarantined if n.endswith(".needs-copy")] == [
        "p1.0.needs-copy", "p1.1.needs-copy"]
    assert sum(n.endswith(".damaged.sqlite") for n in quarantined) == 2


def test_only_corruption_counts_as_unreadable() -> None:
    assert unreadable(sqlite3.DatabaseError("file is not a database"))
    assert unreadable(sqlite3.DatabaseError("database disk image is malformed"))
    assert not unreadable(sqlite3.OperationalError("database is locked"))
    assert not unreadable(sqlite3.OperationalError("database or disk is full"))
    assert not unreadable(OSError(errno.EIO, "I/O error"))


def test_a_full_brick_looks_at_free_space_often_whatever_its_interval(
        tmp_path: Path) -> None:
    disk = Disk(100 * MIB)
    clock = Clock()
    space = DiskSpace("b1", tmp_path, clock, Metrics(), min_free_bytes=8 * MIB,
                      check_s=600.0, on_full=lambda: None, on_free=lambda: None,
                      statvfs=disk.statvfs)  # type: ignore[arg-type]
    space.start()
    disk.free = 0
    assert space.saw(OSError(errno.ENOSPC, "No space left on device"))
    disk.free = 100 * MIB
    clock.advance(0)
    clock.advance(1.0)
    assert not space.full
    space.stop()
