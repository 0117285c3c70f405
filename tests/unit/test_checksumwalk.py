"""The background checksum walk: migration of files written before checksums, in
batches, whatever the scrub rate; the scrubber at its rate, finding damaged rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.internet.task import Clock

from dds.bricks.checksumwalk import MIGRATE_PAUSE_S, MIGRATE_ROWS, SCRUB_TICK_S, ChecksumWalk
from dds.bricks.partstore import ReadResult
from dds.bricks.rowcheck import ChecksumMismatch
from dds.bricks.copy.snapshot import CopyFailed, SnapshotReceiver, _hash_file
from dds.bricks.storage import Storage
from dds.metrics import Metrics

from tests.unit.test_rowcheck import P, _old_schema_file, damage, key_in, written

import pytest


def nulls(path: Path) -> int:
    conn = sqlite3.connect(str(path))
    try:
        n: int = conn.execute("SELECT COUNT(*) FROM kv WHERE checksum IS NULL").fetchone()[0]
        return n
    finally:
        conn.close()


def test_a_schema_1_file_is_migrated_in_batches_while_reads_go_on(tmp_path: Path) -> None:
    count = 2 * MIGRATE_ROWS + 7
    keys = [key_in(P, i) for i in range(count)]
    _old_schema_file(tmp_path / f"{P}.sqlite", P,
                     [(k, b"v%d" % i, 1, i + 1) for i, k in enumerate(keys)])
    clock = Clock()
    s = Storage(tmp_path, clock)
    metrics = Metrics()
    walk = ChecksumWalk(s, clock, metrics, scrub_mb_s=0.0, on_damage=lambda p, k: None)
    walk.start()
    path = s.open_partition(P).path        # opening adds the column
    assert nulls(path) == count
    clock.advance(MIGRATE_PAUSE_S)      # one batch at a time
    assert nulls(path) == count - MIGRATE_ROWS
    assert s.read(P, keys[-1]) == ReadResult(b"v%d" % (count - 1), 1)   # served meanwhile
    s.write(P, keys[-1], b"new", 2)     # a write during the migration has its own
    s.flush()
    for _ in range(5):
        clock.advance(MIGRATE_PAUSE_S)
    assert nulls(path) == 0
    assert metrics.counters["checksums_migrated_total"] == count - 1
    assert not s.open_partition(P).checksums_missing
    assert metrics.snapshot()["checksum_migrations_pending"] == 0
    s.close()
    s = Storage(tmp_path, clock)        # the flag is kept in the file
    assert not s.open_partition(P).checksums_missing
    s.close()


def test_the_scrubber_finds_a_damaged_row_and_reports_progress(tmp_path: Path) -> None:
    keys = [key_in(P, i) for i in range(50)]
    s = written(tmp_path, {k: b"x" * 100 for k in keys})
    path = s.partition_path(P)
    s.close()
    damage(path, keys[30], b"y" * 100)
    clock = Clock()
    s = Storage(tmp_path, clock)
    found: list[tuple[str, bytes]] = []
    metrics = Metrics()
    walk = ChecksumWalk(s, clock, metrics, scrub_mb_s=0.002, on_damage=lambda p, k: found.append((p, k)))
    walk.start()
    clock.advance(SCRUB_TICK_S)         # 500 bytes a tick: a few rows
    assert found == [] and 0 < walk.bytes_verified <= 600
    for _ in range(100):
        if walk.last_pass_completed:
            break
        clock.advance(SCRUB_TICK_S)
    assert found == [(P, keys[30])]
    assert metrics.snapshot()["scrub_pass"] == 1
    assert metrics.snapshot()["scrub_last_pass_completed_seconds"] == clock.seconds()
    assert walk.status()["pass"] == 1
    walk.stop()
    s.close()


def test_a_scrub_rate_of_zero_scrubs_nothing(tmp_path: Path) -> None:
    key = key_in(P, 0)
    s = written(tmp_path, {key: b"value"})
    path = s.partition_path(P)
    s.close()
    damage(path, key, b"valuf")
    clock = Clock()
    s = Storage(tmp_path, clock)
    found: list[tuple[str, bytes]] = []
    walk = ChecksumWalk(s, clock, Metrics(), scrub_mb_s=0.0, on_damage=lambda p, k: found.append((p, k)))
    walk.start()
    clock.pump([SCRUB_TICK_S] * 20)
    assert found == [] and walk.pass_number == 0
    s.close()


def test_a_received_snapshot_with_a_damaged_row_is_not_installed(tmp_path: Path) -> None:
    keys = [key_in(P, i) for i in range(3)]
    src = written(tmp_path / "src", {k: b"value" for k in keys})
    path = src.partition_path(P)
    src.close()
    damage(path, keys[1], b"valuf")
    data = path.read_bytes()
    size, checksum = _hash_file(path)
    receiver = SnapshotReceiver(tmp_path, P, size, checksum)
    receiver.write(0, data, _hash_file(path)[1])
    receiver.finish(fsync=False)
    with pytest.raises(CopyFailed) as e:
        receiver.verify_rows()
    assert P in str(e.value) and repr(keys[1]) in str(e.value)
    assert not receiver.path.exists()
    assert ChecksumMismatch   # (the exception the brick's own reads raise)


def test_a_new_pass_waits_a_minute_after_the_last_one_started(tmp_path: Path) -> None:
    from dds.bricks.checksumwalk import SCRUB_MIN_PASS_S
    s = written(tmp_path, {key_in(P, 0): b"value"})
    clock = Clock()
    walk = ChecksumWalk(s, clock, Metrics(), scrub_mb_s=1.0, on_damage=lambda p, k: None)
    walk.start()
    clock.pump([SCRUB_TICK_S] * 8)
    assert walk.pass_number == 1 and walk.last_pass_completed > 0
    clock.pump([SCRUB_TICK_S] * int(SCRUB_MIN_PASS_S / SCRUB_TICK_S - 10))
    assert walk.pass_number == 1
    clock.pump([SCRUB_TICK_S] * 12)
    assert walk.pass_number == 2
    walk.stop()
    s.close()
