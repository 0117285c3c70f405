"""Unit tests of dds.bricks.storage: real SQLite files in tmp_path, time from a Clock."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from dds.bricks.partstore import PartitionStore, ReadResult
from dds.bricks.storage import SQLITE_FLUSH_S, Storage
from dds.errors import NotServing
from dds.bricks.rowcheck import row_checksum


def _row(key: bytes, value: bytes | None, version: int, lsn: int
         ) -> tuple[bytes, bytes | None, int, int, int]:
    """A row as ``rows_since`` gives it: with its checksum."""
    return (key, value, version, lsn, row_checksum(key, version, value))


def outcome(d: Deferred[Any]) -> list[Any]:
    """Collect what ``d`` fires with (a Failure is consumed, so nothing logs it)."""
    out: list[Any] = []
    d.addBoth(out.append)
    return out


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def storage(tmp_path: Path, clock: Clock) -> Iterator[Storage]:
    s = Storage(tmp_path, clock)
    s.open_partition("p0.0")
    yield s
    s.close()


def on_disk(path: Path, key: bytes) -> tuple[Any, ...] | None:
    """A key's row as another connection sees it in the file."""
    conn = sqlite3.connect(str(path))
    try:
        row: tuple[Any, ...] | None = conn.execute(
            "SELECT value, version, lsn FROM kv WHERE key = ?", (key,)).fetchone()
        return row
    finally:
        conn.close()


class FailingConnection:
    """Stands in for a store's sqlite3 connection and fails COMMIT like a full disk."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def fail_commits(store: PartitionStore) -> sqlite3.Connection:
    """Make the store's commits fail; return its real connection for :func:`heal`."""
    real: sqlite3.Connection = store._conn
    cast(Any, store)._conn = FailingConnection(real)
    return real


def heal(store: PartitionStore, real: sqlite3.Connection) -> None:
    store._conn = real


def fail_log(storage: Storage) -> Any:
    """Make the transaction log's appends fail like a full disk; returns the real
    ``write`` for :func:`heal_log`."""
    real = storage._txlog.write

    def full(records: Any) -> None:
        raise OSError(28, "No space left on device")
    cast(Any, storage._txlog).write = full
    return real


def heal_log(storage: Storage, real: Any) -> None:
    cast(Any, storage._txlog).write = real


# -- basics ---------------------------------------------------------------------------

def test_write_then_read_round_trip(storage: Storage, clock: Clock) -> None:
    storage.write("p0.0", b"k", b"v", 1)
    clock.advance(0)
    assert storage.read("p0.0", b"k") == ReadResult(b"v", 1)


def test_never_written_key_reads_none_at_version_zero(storage: Storage) -> None:
    assert storage.read("p0.0", b"nope") == ReadResult(None, 0)


def test_tombstone_keeps_version(storage: Storage, clock: Clock) -> None:
    storage.write("p0.0", b"k", b"v", 1)
    storage.write("p0.0", b"k", None, 2)
    clock.advance(SQLITE_FLUSH_S)
    assert storage.read("p0.0", b"k") == ReadResult(None, 2)
    assert on_disk(storage.open_partition("p0.0").path, b"k") == (None, 2, 2)


def test_count_excludes_tombstones(storage: Storage, clock: Clock) -> None:
    storage.write("p0.0", b"a", b"1", 1)
    storage.write("p0.0", b"b", b"2", 1)
    clock.advance(0)
    storage.write("p0.0", b"a", None, 2)  # staged only: count sees it too
    assert storage.open_partition("p0.0").count() == 1


def test_lsn_increments_per_write(storage: Storage, clock: Clock) -> None:
    for i in range(3):
        storage.write("p0.0", b"k%d" % i, b"v", 1)
    clock.advance(0)
    assert storage.open_partition("p0.0").last_lsn() == 3


def test_reopen_after_close_keeps_data_and_lsn(tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path, clock)
    s.open_partition("p1.1")
    s.write("p1.1", b"k", b"v", 1)
    s.write("p1.1", b"k", b"w", 2)
    s.close()
    s2 = Storage(tmp_path, clock)
    assert s2.read("p1.1", b"k") == ReadResult(b"w", 2)
    assert s2.open_partition("p1.1").last_lsn() == 2
    s2.close()


def test_partitions_found_after_restart(tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path, clock)
    for pid in ("p3.5", "p1.0", "p3.1"):
        s.open_partition(pid)
    s.close()
    (tmp_path / "unrelated.sqlite").write_bytes(b"")
    s2 = Storage(tmp_path, clock)
    assert s2.partitions() == ["p1.0", "p3.1", "p3.5"]
    assert s2.has_partition("p3.5") and not s2.has_partition("p3.4")
    s2.close()


def test_open_partition_is_idempotent(storage: Storage) -> None:
    assert storage.open_partition("p0.0") is storage.open_partition("p0.0")


def test_file_of_another_partition_is_refused(tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path, clock)
    s.open_partition("p1.0")
    s.close()
    (tmp_path / "p1.0.sqlite").rename(tmp_path / "p1.1.sqlite")
    with pytest.raises(ValueError, match="p1.0"):
        Storage(tmp_path, clock).open_partition("p1.1")


def test_unknown_partition_read_raises_key_error(storage: Storage) -> None:
    with pytest.raises(KeyError):
        storage.read("p9.9", b"k")


@pytest.mark.parametrize("pid", ["../p1.1", "p1", "P1.1", "p1.1/x", "p1.1.sqlite", ""])
def test_invalid_partition_id_rejected(storage: Storage, pid: str) -> None:
    with pytest.raises(ValueError):
        storage.open_partition(pid)


@pytest.mark.parametrize("version", [1, 2])
def test_version_not_above_stored_raises(storage: Storage, clock: Clock, version: int) -> None:
    storage.write("p0.0", b"k", b"v", 1)
    storage.write("p0.0", b"k", None, 2)
    clock.advance(0)
    with pytest.raises(ValueError):
        storage.write("p0.0", b"k", b"x", version)


def test_version_check_reads_the_file_when_not_cached(tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path, clock, cache_entries=0)
    s.open_partition("p0.0")
    s.write("p0.0", b"k", b"v", 3)
    clock.advance(0)
    with pytest.raises(ValueError):
        s.write("p0.0", b"k", b"x", 3)
    s.close()


# -- group commit ---------------------------------------------------------------------

def test_writes_in_one_turn_share_one_log_append(storage: Storage, clock: Clock) -> None:
    for i in range(10):
        storage.write("p0.0", b"k%d" % i, b"v", 1)
    clock.advance(0)
    assert storage.stats["log_writes"] == 1
    assert storage.stats["writes"] == 10


def test_each_turn_appends_separately(storage: Storage, clock: Clock) -> None:
    storage.write("p0.0", b"a", b"v", 1)
    clock.advance(0)
    storage.write("p0.0", b"b", b"v", 1)
    clock.advance(0)
    assert storage.stats["log_writes"] == 2


def test_partition_files_get_their_rows_later_in_one_transaction_each(
        storage: Storage, clock: Clock) -> None:
    storage.open_partition("p1.1")
    storage.write("p0.0", b"a", b"v", 1)
    clock.advance(0)
    storage.write("p1.1", b"a", b"v", 1)
    storage.write("p0.0", b"b", b"v", 1)
    clock.advance(0)
    assert storage.stats["commits"] == 0
    clock.advance(SQLITE_FLUSH_S)
    assert storage.stats["commits"] == 2 and storage.stats["committed_rows"] == 3
    assert on_disk(storage.open_partition("p0.0").path, b"b") == (b"v", 1, 2)


def test_write_deferred_fires_only_after_the_log_append(storage: Storage, clock: Clock) -> None:
    got = outcome(storage.write("p0.0", b"k", b"v", 1))
    assert got == [] and storage.stats["log_writes"] == 0
    clock.advance(0)
    assert got == [None] and storage.stats["log_writes"] == 1


def test_a_restart_redoes_the_committed_writes_a_file_missed(
        tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path, clock)
    s.open_partition("p0.0")
    s.write("p0.0", b"k", b"v", 1)
    s.write("p0.0", b"gone", None, 3)
    clock.advance(0)                        # durable in the log, not in the file yet
    assert on_disk(s.open_partition("p0.0").path, b"k") is None
    for store in s._stores.values():        # the process dies: nothing else is written
        store._conn.close()
    s._txlog.close()
    again = Storage(tmp_path, clock)
    assert again.read("p0.0", b"k") == ReadResult(b"v", 1)
    assert on_disk(again.open_partition("p0.0").path, b"k") == (b"v", 1, 1)
    assert on_disk(again.open_partition("p0.0").path, b"gone") == (None, 3, 2)
    again.close()


def test_deferreds_fire_in_write_order(storage: Storage, clock: Clock) -> None:
    storage.open_partition("p1.1")
    order: list[int] = []
    for i, pid in enumerate(["p1.1", "p0.0", "p1.1", "p0.0"]):
        storage.write(pid, b"k%d" % i, b"v", 1).addCallback(lambda _, i=i: order.append(i))
    clock.advance(0)
    assert order == [0, 1, 2, 3]


def test_staged_write_is_readable_before_commit(storage: Storage) -> None:
    storage.write("p0.0", b"k", b"v", 1)
    assert storage.read("p0.0", b"k") == ReadResult(b"v", 1)
    assert storage.open_partition("p0.0").read(b"k") == ReadResult(b"v", 1)


def test_flush_commits_pending_now(storage: Storage, clock: Clock) -> None:
    got = outcome(storage.write("p0.0", b"k", b"v", 1))
    assert outcome(storage.flush()) == [None]
    assert got == [None]
    assert clock.getDelayedCalls() == []


def test_write_from_a_commit_callback_goes_into_the_next_batch(storage: Storage, clock: Clock) -> None:
    nested: list[Deferred[None]] = []
    storage.write("p0.0", b"a", b"v", 1).addCallback(
        lambda _: nested.append(storage.write("p0.0", b"b", b"v", 1)))
    clock.advance(0)  # Clock also runs the callLater(0) scheduled meanwhile
    assert storage.stats["log_writes"] == 2
    assert outcome(nested[0]) == [None]
    clock.advance(SQLITE_FLUSH_S)
    assert on_disk(storage.open_partition("p0.0").path, b"b") == (b"v", 1, 2)


def test_fsync_mode_uses_synchronous_full(tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path, clock, durability="fsync")
    store = s.open_partition("p0.0")
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    got = outcome(s.write("p0.0", b"k", b"v", 1))
    assert got == []
    clock.advance(0)
    assert got == [None]
    s.close()


# -- memory mode ----------------------------------------------------------------------

def test_memory_mode_acks_at_once(tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path, clock, durability="memory", memory_flush_s=0.5)
    store = s.open_partition("p0.0")
    assert outcome(s.write("p0.0", b"k", b"v", 1)) == [None]
    assert s.read("p0.0", b"k") == ReadResult(b"v", 1)
    assert on_disk(store.path, b"k") is None
    s.close()


def test_memory_mode_flushes_within_bound(tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path, clock, durability="memory", memory_flush_s=0.5)
    store = s.open_partition("p0.0")
    s.write("p0.0", b"k", b"v", 1)
    clock.advance(0.25)
    s.write("p0.0", b"j", b"v", 1)
    clock.advance(0.25)
    assert on_disk(store.path, b"k") == (b"v", 1, 1)
    assert on_disk(store.path, b"j") == (b"v", 1, 2)
    assert s.stats["commits"] == 1 and clock.getDelayedCalls() == []
    s.close()


def test_memory_mode_failed_flush_keeps_writes_and_retries(tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path, clock, durability="memory", memory_flush_s=0.5)
    store = s.open_partition("p0.0")
    real = fail_commits(store)
    s.write("p0.0", b"k", b"v", 1)
    clock.advance(0.5)
    assert s.stats["commit_failures"] == 1
    assert store.read(b"k") == ReadResult(b"v", 1)  # acknowledged: memory stays the truth
    heal(store, real)
    clock.advance(0.5)
    assert on_disk(store.path, b"k") == (b"v", 1, 1)
    s.close()


# -- failed appends and commits --------------------------------------------------------

def test_a_failed_log_append_errbacks_every_write_of_the_batch(
        storage: Storage, clock: Clock) -> None:
    fail_log(storage)
    got = [outcome(storage.write("p0.0", b"k%d" % i, b"v", 1)) for i in range(3)]
    clock.advance(0)
    assert all(isinstance(g[0], Failure) and g[0].check(OSError) for g in got)
    assert storage.stats["log_failures"] == 1 and storage.stats["log_writes"] == 0


def test_a_failed_log_append_drops_its_writes_and_keeps_previous_data(
        storage: Storage, clock: Clock) -> None:
    store = storage.open_partition("p0.0")
    storage.write("p0.0", b"old", b"kept", 1)
    clock.advance(0)
    real = fail_log(storage)
    got = [outcome(storage.write("p0.0", b"new%d" % i, b"x", 1)) for i in range(3)]
    got.append(outcome(storage.write("p0.0", b"old", b"lost", 2)))
    assert storage.read("p0.0", b"old") == ReadResult(b"lost", 2)  # staged, visible
    clock.advance(0)
    assert all(isinstance(g[0], Failure) and g[0].check(OSError) for g in got)
    assert storage.read("p0.0", b"old") == ReadResult(b"kept", 1)
    assert store.read(b"old") == ReadResult(b"kept", 1)
    assert storage.read("p0.0", b"new0") == ReadResult(None, 0)
    assert store.last_lsn() == 1 and store.count() == 1
    heal_log(storage, real)
    assert outcome(storage.write("p0.0", b"old", b"again", 2)) == []  # same version is fine
    clock.advance(SQLITE_FLUSH_S)
    assert on_disk(store.path, b"old") == (b"again", 2, 2)
    assert on_disk(store.path, b"new0") is None


def test_a_failed_file_commit_is_retried_and_its_writes_stay_acknowledged(
        storage: Storage, clock: Clock) -> None:
    store = storage.open_partition("p0.0")
    real = fail_commits(store)
    got = outcome(storage.write("p0.0", b"k", b"v", 1))
    clock.advance(0)
    assert got == [None]                    # durable in the log
    clock.advance(SQLITE_FLUSH_S)
    assert storage.stats["commit_failures"] == 1
    assert storage.read("p0.0", b"k") == ReadResult(b"v", 1)
    heal(store, real)
    clock.advance(SQLITE_FLUSH_S)
    assert on_disk(store.path, b"k") == (b"v", 1, 1)


def test_a_failed_partition_file_does_not_hold_up_the_others(
        storage: Storage, clock: Clock) -> None:
    bad = storage.open_partition("p1.1")
    fail_commits(bad)
    ok = outcome(storage.write("p0.0", b"k", b"v", 1))
    also = outcome(storage.write("p1.1", b"k", b"v", 1))
    clock.advance(SQLITE_FLUSH_S)
    assert ok == [None] and also == [None]
    assert on_disk(storage.open_partition("p0.0").path, b"k") == (b"v", 1, 1)
    assert storage.stats["commit_failures"] == 1


def test_flush_errbacks_with_the_commit_error(storage: Storage) -> None:
    store = storage.open_partition("p0.0")
    fail_commits(store)
    outcome(storage.write("p0.0", b"k", b"v", 1))
    got = outcome(storage.flush())
    assert isinstance(got[0], Failure) and got[0].check(sqlite3.OperationalError)


# -- cache, checksum, copies, drop ----------------------------------------------------

def test_cache_is_bounded(tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path, clock, cache_entries=3)
    s.open_partition("p0.0")
    for i in range(10):
        s.write("p0.0", b"k%d" % i, b"v", 1)
        s.read("p0.0", b"x%d" % i)
    assert s._cache is not None and len(s._cache) == 3
    clock.advance(0)
    assert s.read("p0.0", b"k0") == ReadResult(b"v", 1)  # evicted, read from the file
    s.close()


def test_cache_hit_is_counted(storage: Storage) -> None:
    storage.read("p0.0", b"k")
    storage.read("p0.0", b"k")
    assert storage.stats["reads"] == 2 and storage.stats["cache_hits"] == 1


def test_cache_disabled_with_zero_entries(tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path, clock, cache_entries=0)
    s.open_partition("p0.0")
    s.write("p0.0", b"k", b"v", 1)
    assert s.read("p0.0", b"k") == ReadResult(b"v", 1)
    assert s.stats["cache_hits"] == 0 and s._cache is None
    s.close()


def _filled(storage: Storage, pid: str, rows: list[tuple[bytes, bytes | None, int]]) -> PartitionStore:
    store = storage.open_partition(pid)
    for key, value, version in rows:
        storage.write(pid, key, value, version)
    return store


def test_checksum_equal_for_equal_content(storage: Storage, clock: Clock) -> None:
    a = _filled(storage, "p1.0", [(b"x", b"1", 1), (b"y", b"2", 1), (b"y", None, 2)])
    b = _filled(storage, "p1.1", [(b"y", None, 2), (b"x", b"1", 1)])  # other lsns, order
    assert a.checksum() == b.checksum()  # staged
    clock.advance(0)
    assert a.checksum() == b.checksum()  # committed


@pytest.mark.parametrize("other", [
    [(b"x", b"2", 1)],  # value
    [(b"x", b"1", 2)],  # version
    [(b"x", None, 1)],  # tombstone
    [(b"x", b"1", 1), (b"y", b"", 1)],  # extra empty value
    [(b"x1", b"", 1)],  # key/value boundary
])
def test_checksum_differs_for_different_content(
        storage: Storage, clock: Clock, other: list[tuple[bytes, bytes | None, int]]) -> None:
    a = _filled(storage, "p1.0", [(b"x", b"1", 1)])
    b = _filled(storage, "p1.1", other)
    clock.advance(0)
    assert a.checksum() != b.checksum()


def test_rows_since_returns_later_rows_in_lsn_order(storage: Storage, clock: Clock) -> None:
    store = _filled(storage, "p0.0", [(b"a", b"1", 1), (b"b", b"1", 1), (b"a", None, 2)])
    clock.advance(0)
    storage.write("p0.0", b"c", b"1", 1)  # staged
    assert list(store.rows_since(1)) == [_row(b"b", b"1", 1, 2), _row(b"a", None, 2, 3),
                                         _row(b"c", b"1", 1, 4)]


def test_drop_partition_removes_files(storage: Storage, clock: Clock, tmp_path: Path) -> None:
    storage.write("p0.0", b"k", b"v", 1)
    clock.advance(0)
    assert (tmp_path / "p0.0.sqlite-wal").exists()
    storage.drop_partition("p0.0")
    assert not [f for f in tmp_path.iterdir() if f.name.startswith("p0.0")]
    assert not storage.has_partition("p0.0") and storage.partitions() == []
    storage.open_partition("p0.0")
    assert storage.read("p0.0", b"k") == ReadResult(None, 0)  # nothing stale in the cache


def test_drop_partition_keeps_the_other_partitions_cached(storage: Storage, clock: Clock) -> None:
    storage.open_partition("p1.1")
    storage.write("p1.1", b"k", b"v", 1)
    storage.write("p0.0", b"k", b"w", 1)
    clock.advance(0)
    storage.drop_partition("p0.0")
    assert storage.read("p1.1", b"k") == ReadResult(b"v", 1)
    assert storage.stats["cache_hits"] == 1


def test_drop_partition_fails_its_pending_writes(storage: Storage, clock: Clock) -> None:
    got = outcome(storage.write("p0.0", b"k", b"v", 1))
    storage.drop_partition("p0.0")
    assert isinstance(got[0], Failure) and got[0].check(NotServing)
    clock.advance(0)
    assert storage.stats["commits"] == 0


def test_close_leaves_no_delayed_calls(storage: Storage, clock: Clock) -> None:
    storage.write("p0.0", b"k", b"v", 1)
    storage.close()
    assert clock.getDelayedCalls() == []
    assert on_disk(storage.data_dir / "p0.0.sqlite", b"k") == (b"v", 1, 1)


def test_an_idle_store_commits_on_the_next_turn_despite_a_commit_window(
        tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path / "w", clock, durability="fsync", commit_window_s=0.002)
    s.open_partition("p0.0")
    d = s.write("p0.0", b"k", b"v", 1)
    clock.advance(0)
    assert outcome(d) == [None]
    s.close()


def test_under_load_a_commit_window_gathers_writes_into_one_commit(
        tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path / "w", clock, durability="fsync", commit_window_s=0.002)
    s.open_partition("p0.0")
    s.write("p0.0", b"first", b"v", 1)
    clock.advance(0)                       # commits at once: nothing committed recently
    ds = [s.write("p0.0", b"k%d" % i, b"v", 1) for i in range(3)]
    clock.advance(0)
    ds += [s.write("p0.0", b"j%d" % i, b"v", 1) for i in range(3)]
    clock.advance(0.001)
    assert all(outcome(d) == [] for d in ds)          # still inside the window
    clock.advance(0.001)
    assert all(outcome(d) == [None] for d in ds)
    assert s.stats["log_writes"] == 2
    s.close()


def test_without_fsyncs_to_spread_every_turn_appends_despite_a_commit_window(
        tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path / "w", clock, durability="disk", commit_window_s=0.002)
    s.open_partition("p0.0")
    for i in range(3):
        d = s.write("p0.0", b"k%d" % i, b"v", 1)
        clock.advance(0)
        assert outcome(d) == [None]
    assert s.stats["log_writes"] == 3
    s.close()


def test_a_prepare_record_is_durable_and_found_after_reopening(
        tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path / "p", clock)
    s.open_partition("p0.0")
    d = s.prepare("p0.0", (2 ** 64 - 1, 7), b"k", "put", b"v", 3, (10, 2 ** 64 - 1))
    assert outcome(d) == []                 # not durable before the batch commits
    clock.advance(0)
    assert outcome(d) == [None]
    s.close()
    again = Storage(tmp_path / "p", clock)
    (rec,) = again.prepared()
    assert (rec.txid, rec.pid, rec.key, rec.op, rec.value, rec.new_version, rec.ts) == (
        (2 ** 64 - 1, 7), "p0.0", b"k", "put", b"v", 3, (10, 2 ** 64 - 1))
    again.close()


def test_prepare_records_of_all_partitions_share_one_commit(
        tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path / "p", clock)
    for pid in ("p1.0", "p1.1"):
        s.open_partition(pid)
    ds = [s.prepare(pid, (1, i), b"k", "put", b"v", 1, (1, 1))
          for i, pid in enumerate(["p1.0", "p1.1", "p1.0"])]
    clock.advance(0)
    assert all(outcome(d) == [None] for d in ds)
    assert s.stats["log_writes"] == 1
    assert sorted(r.pid for r in s.prepared()) == ["p1.0", "p1.0", "p1.1"]
    s.close()


def test_a_failed_record_append_fails_the_vote_and_keeps_nothing(
        tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path / "p", clock)
    s.open_partition("p0.0")
    real = fail_log(s)
    d = s.prepare("p0.0", (1, 1), b"k", "put", b"v", 1, (1, 1))
    clock.advance(0)
    (failure,) = outcome(d)
    assert isinstance(failure, Failure) and failure.check(OSError)
    heal_log(s, real)
    assert s.prepared() == []
    s.close()
    assert Storage(tmp_path / "p", clock).prepared() == []


def test_forgetting_a_prepare_record_removes_it(tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path / "p", clock)
    s.open_partition("p0.0")
    s.prepare("p0.0", (1, 1), b"k", "remove", None, 4, (1, 1))
    s.forget_prepared((1, 1))
    clock.advance(0)
    assert s.prepared() == []
    s.close()


def test_a_vote_settled_by_its_commit_is_not_restored(tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path / "p", clock)
    s.open_partition("p0.0")
    s.prepare("p0.0", (1, 1), b"k", "put", b"v", 1, (1, 1))
    s.prepare("p0.0", (1, 2), b"j", "put", b"w", 1, (1, 2))
    clock.advance(0)
    s.write("p0.0", b"k", b"v", 1, txid=(1, 1))
    clock.advance(0)
    assert [r.txid for r in s.prepared()] == [(1, 2)]
    for store in s._stores.values():        # dies without closing
        store._conn.close()
    s._txlog.close()
    again = Storage(tmp_path / "p", clock)
    assert [r.txid for r in again.prepared()] == [(1, 2)]
    assert again.read("p0.0", b"k") == ReadResult(b"v", 1)
    again.close()


def test_the_log_starts_a_new_generation_once_the_files_have_its_writes(
        tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dds.bricks.storage.LOG_ROTATE_BYTES", 1000)
    s = Storage(tmp_path / "p", clock)
    s.open_partition("p0.0")
    s.prepare("p0.0", (1, 1), b"held", "put", b"v", 1, (1, 1))
    for i in range(20):
        s.write("p0.0", b"k%d" % i, b"x" * 100, 1)
        clock.advance(0)
    assert s.stats["log_rotations"] >= 1
    assert len(list((tmp_path / "p").glob("txlog.*"))) == 1
    assert on_disk(s.open_partition("p0.0").path, b"k0") == (b"x" * 100, 1, 1)
    s.close()
    again = Storage(tmp_path / "p", clock)
    assert [r.txid for r in again.prepared()] == [(1, 1)]   # carried into each generation
    again.close()


def test_a_key_written_twice_before_its_file_commit_gets_only_its_newest_row(
        storage: Storage, clock: Clock) -> None:
    store = storage.open_partition("p0.0")
    storage.write("p0.0", b"k", b"old", 1)
    storage.write("p0.0", b"j", b"v", 1)
    storage.write("p0.0", b"k", b"new", 2)
    clock.advance(SQLITE_FLUSH_S)
    assert on_disk(store.path, b"k") == (b"new", 2, 3)
    assert store.committed_lsn() == 3
    assert list(store.rows_since(0)) == [_row(b"j", b"v", 1, 2), _row(b"k", b"new", 2, 3)]


def test_a_torn_last_append_is_ignored_and_what_came_before_is_kept(
        tmp_path: Path, clock: Clock) -> None:
    s = Storage(tmp_path / "t", clock)
    s.open_partition("p0.0")
    s.prepare("p0.0", (1, 1), b"k", "put", b"v", 1, (1, 1))
    clock.advance(0)
    for store in s._stores.values():        # the process dies mid-append
        store._conn.close()
    s._txlog.close()
    (log_file,) = (tmp_path / "t").glob("txlog.*")
    with open(log_file, "ab") as f:
        f.write((500).to_bytes(4, "big") + b"\x00\x00\x00\x00" + b"partial")
    again = Storage(tmp_path / "t", clock)
    assert [r.txid for r in again.prepared()] == [(1, 1)]
    assert len(list((tmp_path / "t").glob("txlog.*"))) == 1
    again.close()


def test_votes_recorded_by_an_earlier_version_in_prepared_sqlite_are_taken_up(
        tmp_path: Path, clock: Clock) -> None:
    d = tmp_path / "old"
    first = Storage(d, clock)
    first.open_partition("p0.0")
    first.close()
    conn = sqlite3.connect(str(d / "prepared.sqlite"))
    conn.execute("CREATE TABLE prepared (txid BLOB PRIMARY KEY, pid TEXT NOT NULL, "
                 "key BLOB NOT NULL, op TEXT NOT NULL, value BLOB, "
                 "new_version INTEGER NOT NULL, ts BLOB NOT NULL)")
    conn.execute("INSERT INTO prepared VALUES (?, ?, ?, ?, ?, ?, ?)",
                 ((5).to_bytes(8, "big") + (6).to_bytes(8, "big"), "p0.0", b"k", "put",
                  b"v", 2, (7).to_bytes(8, "big") + (8).to_bytes(8, "big")))
    conn.commit()
    conn.close()
    s = Storage(d, clock)
    (rec,) = s.prepared()
    assert (rec.txid, rec.pid, rec.key, rec.new_version, rec.ts) == ((5, 6), "p0.0", b"k", 2,
                                                                     (7, 8))
    assert not (d / "prepared.sqlite").exists()
    s.close()
    again = Storage(d, clock)
    assert [r.txid for r in again.prepared()] == [(5, 6)]
    again.close()


def _wal_bytes(path: Path) -> int:
    wal = Path(str(path) + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_given_a_thread_runner_checkpoints_run_there_not_inside_commits(
        tmp_path: Path, clock: Clock) -> None:
    """SQLite's automatic checkpoint (inside a COMMIT, with fsyncs) stalled a brick's
    reactor; with a thread runner the files are checkpointed by it after each sweep."""
    calls: list[tuple[Any, tuple[Any, ...]]] = []

    def run_in_thread(f: Any, *args: Any) -> Deferred[Any]:
        calls.append((f, args))
        return Deferred()           # run below, by hand

    s = Storage(tmp_path / "p", clock, run_in_thread=run_in_thread)
    store = s.open_partition("p0.0")
    assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(2000):
        s.write("p0.0", b"k%d" % i, b"x" * 100, 1)
    clock.advance(0)
    for _ in range(10):
        clock.advance(SQLITE_FLUSH_S)
    assert [args for _f, args in calls] == [(store.path,)]   # one at a time per file
    assert _wal_bytes(store.path) > 0
    f, args = calls[0]
    f(*args)
    # Every row is in the main file now: a reader that ignores the WAL sees them.
    conn = sqlite3.connect(f"file:{store.path}?immutable=1", uri=True)
    assert conn.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 2000
    conn.close()
    s.close()


def test_a_checkpoint_never_creates_a_file_dropped_meanwhile(tmp_path: Path) -> None:
    from dds.bricks.partstore import checkpoint
    with pytest.raises(sqlite3.OperationalError):
        checkpoint(tmp_path / "gone.sqlite")
    assert not (tmp_path / "gone.sqlite").exists()


def test_drop_partition_frees_its_files_gradually_under_other_names(
        storage: Storage, clock: Clock, tmp_path: Path) -> None:
    for i in range(600):     # a WAL of more than one step (1 MB)
        storage.write("p0.0", b"k%d" % i, b"v" * 4000, 1)
    storage.flush()
    assert (tmp_path / "p0.0.sqlite-wal").stat().st_size > 1 << 20
    storage.drop_partition("p0.0")
    left = sorted(f.name for f in tmp_path.iterdir() if f.name.startswith("p0.0"))
    assert "p0.0.sqlite-wal.dropped" in left and not set(left) & {
        "p0.0.sqlite", "p0.0.sqlite-wal", "p0.0.sqlite-shm"}
    clock.pump([0.025] * 200)
    assert not [f for f in tmp_path.iterdir() if f.name.startswith("p0.0")]


def test_a_restart_frees_the_files_a_stop_left_half_deleted(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "p1.1.sqlite.dropped").write_bytes(b"x" * 100)
    (tmp_path / "p1.1.sqlite-wal.dropped").write_bytes(b"x" * 100)
    s = Storage(tmp_path, clock)
    clock.advance(1)
    assert not [f for f in tmp_path.iterdir() if f.name.startswith("p1.1")]
    assert s.partitions() == []
    s.close()


def _staged(tmp_path: Path, rows: list[tuple[bytes, bytes, int]]) -> PartitionStore:
    store = PartitionStore(tmp_path / "p0.0.sqlite", "p0.0")
    for key, value, version in rows:
        store._stage(key, ReadResult(value, version), row_checksum(key, version, value))
    return store


def test_a_commit_skips_a_row_a_newer_staged_row_of_its_key_replaces(tmp_path: Path) -> None:
    store = _staged(tmp_path, [(b"a", b"1", 1), (b"b", b"1", 1), (b"a", b"2", 2)])
    assert store._commit(limit=2) == 2      # a@1 is not written: a@2 is staged
    assert on_disk(store.path, b"a") is None and on_disk(store.path, b"b") == (b"1", 1, 2)
    assert store.read(b"a") == ReadResult(b"2", 2)
    assert list(store.rows_since(0)) == [_row(b"b", b"1", 1, 2), _row(b"a", b"2", 2, 3)]
    assert store._commit() == 1
    assert on_disk(store.path, b"a") == (b"2", 2, 3)
    store.close()


def test_a_commit_writes_a_row_whose_newer_row_is_not_yet_logged(tmp_path: Path) -> None:
    """The newer row (lsn 3) is past ``before``: its log append may still fail."""
    store = _staged(tmp_path, [(b"a", b"1", 1), (b"b", b"1", 1), (b"a", b"2", 2)])
    assert store._commit(before=3) == 2
    assert on_disk(store.path, b"a") == (b"1", 1, 1)
    assert store._unstage_from(3) == [b"a"]
    assert store.read(b"a") == ReadResult(b"1", 1)
    store.close()


def test_a_partial_commit_keeps_only_the_keys_still_staged_in_the_overlay(tmp_path: Path) -> None:
    store = _staged(tmp_path, [(b"a", b"1", 1), (b"b", b"1", 1), (b"c", b"1", 1)])
    store._commit(limit=2)
    assert set(store._overlay) == {b"c"}
    assert [store.read(k) for k in (b"a", b"b", b"c")] == [ReadResult(b"1", 1)] * 3
    store.close()
