"""A partition file's lineage and its lsn → time table (the change stream's positions,
``bricks/partstore.py``)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from twisted.internet.task import Clock

from dds.bricks.partstore import PartitionStore, ReadResult
from dds.bricks.rowcheck import row_checksum
from dds.bricks.storage import Storage


def _write(store: PartitionStore, key: bytes, version: int) -> None:
    value = b"v%d" % version
    store._stage(key, ReadResult(value, version), row_checksum(key, version, value))
    store._commit()


def test_a_cleanly_closed_file_keeps_its_lineage(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p1.0.sqlite", "p1.0")
    lineage = store.lineage
    _write(store, b"a", 1)
    store.close()
    again = PartitionStore(tmp_path / "p1.0.sqlite", "p1.0")
    assert again.lineage == lineage and not again.forked_on_open
    again.close()


def test_a_file_not_closed_cleanly_gets_a_new_lineage_descending_from_the_old(
        tmp_path: Path) -> None:
    path = tmp_path / "p1.0.sqlite"
    store = PartitionStore(path, "p1.0")
    _write(store, b"a", 1)
    _write(store, b"b", 1)
    copy = tmp_path / "crashed" / "p1.0.sqlite"
    copy.parent.mkdir()
    shutil.copy(path, copy)       # the file as a kill -9 leaves it: still marked open
    for suffix in ("-wal", "-shm"):
        if Path(str(path) + suffix).exists():
            shutil.copy(Path(str(path) + suffix), Path(str(copy) + suffix))
    reopened = PartitionStore(copy, "p1.0")
    assert reopened.forked_on_open
    assert reopened.lineage != store.lineage
    assert reopened.ancestors == [(store.lineage, 2)]
    assert reopened.exact_from(store.lineage, 2)
    assert not reopened.exact_from(store.lineage, 3)
    store.close()
    reopened.close()


def test_an_installed_copy_is_exact_for_its_parent_up_to_the_last_copied_row(
        tmp_path: Path) -> None:
    source = Storage(tmp_path / "src", Clock())
    src = source.open_partition("p1.0")
    for i in range(3):
        _write(src, b"k%d" % i, 1)
    snapshot = tmp_path / "snap.sqlite"
    source.flush()
    conn = sqlite3.connect(str(snapshot))
    sqlite3.connect(str(source.partition_path("p1.0"))).backup(conn)
    conn.close()
    _write(src, b"late", 1)                     # lsn 4: comes with the delta
    target = Storage(tmp_path / "dst", Clock())
    target.open_partition("p1.0")
    store = target.replace_partition("p1.0", snapshot)
    assert store.lineage != src.lineage
    assert store.exact_from(src.lineage, 3) and not store.exact_from(src.lineage, 4)
    target.apply_rows("p1.0", list(src.rows_since(3)))
    assert store.exact_from(src.lineage, 4)
    _write(store, b"own", 1)                    # its own numbering from here on
    target.apply_rows("p1.0", [])
    assert not store.exact_from(src.lineage, 5)
    source.close()
    target.close()


def test_lsn_before_is_the_last_sample_strictly_before_the_time(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p1.0.sqlite", "p1.0")
    now = [100.0]
    store.wall = lambda: now[0]
    _write(store, b"a", 1)              # sampled: lsn 1 at 100
    now[0] = 100.5
    _write(store, b"b", 1)              # within the second: not sampled
    now[0] = 101.5
    _write(store, b"c", 1)              # lsn 3 at 101.5
    assert store.lsn_before(100.0) == 0         # nothing known: from the beginning
    assert store.lsn_before(100.01) == 1
    assert store.lsn_before(101.5) == 1
    assert store.lsn_before(200.0) == 3
    store.close()


def test_undurable_since_is_the_time_the_first_undurable_row_was_staged(
        tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p1.0.sqlite", "p1.0")
    now = [10.0]
    store.wall = lambda: now[0]
    assert store.undurable_since() is None
    store._stage(b"a", ReadResult(b"x", 1), row_checksum(b"a", 1, b"x"))
    now[0] = 12.0
    store._stage(b"b", ReadResult(b"x", 1), row_checksum(b"b", 1, b"x"))
    assert store.undurable_since() == 10.0
    store._commit()
    assert store.undurable_since() is None
    store.close()
