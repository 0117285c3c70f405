"""Unit tests of dds.bricks.copy.snapshot (recovery's copy, DESIGN §7): real SQLite files in
tmp_path.  Most tests run the "worker thread" inline; one runs the backup in the real
reactor's thread pool while the reactor thread keeps committing."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock, LoopingCall

from dds.bricks.copy import snapshot as snapshot_mod
from dds.bricks.copy.snapshot import (CopyFailed, SnapshotInfo, SnapshotReceiver, apply_delta,
                                 read_chunk, take_snapshot)
from dds.bricks.storage import Storage

PID = "p0.0"    # depth 0: owns every key


def inline(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """``run_in_thread`` that runs the work at once, on this thread."""
    return maybeDeferred(f, *args)


def result_of(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that completes without waiting (inline threads, no timers)."""
    out: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(out.append)
    assert out, "the coroutine did not complete"
    if isinstance(out[0], BaseException) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def fill(storage: Storage, clock: Clock, n: int, start: int = 0, size: int = 100) -> None:
    """Write keys ``k<i>`` (version 1) and commit them."""
    for i in range(start, start + n):
        storage.write(PID, b"k%d" % i, (b"%d-" % i).ljust(size, b"v"), 1)
    clock.advance(0)


def snapshot(storage: Storage, dest: Path) -> SnapshotInfo:
    info: SnapshotInfo = result_of(take_snapshot(storage, PID, dest, inline))
    return info


def stream(info: SnapshotInfo, receiver: SnapshotReceiver, chunk: int = 4096) -> None:
    offset = 0
    while offset < info.size:
        data, checksum = read_chunk(info.path, offset, chunk)
        receiver.write(offset, data, checksum)
        offset += len(data)


def rows_in(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT key, value, version, lsn FROM kv ORDER BY key").fetchall()
    finally:
        conn.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def source(tmp_path: Path, clock: Clock) -> Iterator[Storage]:
    s = Storage(tmp_path / "source", clock)
    s.open_partition(PID)
    fill(s, clock, 500)
    yield s
    s.close()


@pytest.fixture
def target(tmp_path: Path, clock: Clock) -> Iterator[Storage]:
    """A brick with a stale replica: fewer keys, one of them with another value."""
    s = Storage(tmp_path / "target", clock)
    s.open_partition(PID)
    fill(s, clock, 100)
    s.write(PID, b"k1", b"stale", 2)
    clock.advance(0)
    yield s
    s.close()


def replica_state(storage: Storage) -> tuple[int, int, bytes]:
    """What must not change when a copy fails: checksum, last lsn, file bytes."""
    store = storage.open_partition(PID)
    return store.checksum(), store.last_lsn(), storage.partition_path(PID).read_bytes()


# -- snapshots ------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_snapshot_taken_while_writes_continue_holds_exactly_the_rows_up_to_its_lsn(
        tmp_path: Path) -> None:
    storage = Storage(tmp_path / "source", reactor)
    storage.open_partition(PID)
    store = storage.open_partition(PID)
    history: list[tuple[bytes, bytes | None, int, int]] = []
    versions: dict[bytes, int] = {}

    def write(key: bytes, value: bytes | None) -> None:
        versions[key] = versions.get(key, 0) + 1
        storage.write(PID, key, value, versions[key])
        history.append((key, value, versions[key], store.last_lsn()))

    for i in range(20_000):
        write(b"k%d" % i, b"v" * 100)
    await storage.flush()
    turn = [0]

    overlapped = threading.Event()

    def more() -> None:    # overwrites, removes and new keys, committed every turn
        turn[0] += 1
        if turn[0] >= 3:
            overlapped.set()
        for j in range(50):
            n = turn[0] * 50 + j
            write(b"k%d" % (n % 20_000), None if j % 5 == 0 else b"w%d" % n)
            write(b"new%d" % n, b"x")
        storage.flush()

    def in_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        more()      # a commit after take_snapshot was called, before the backup started

        def after_more_commits(*a: Any) -> Any:
            # The backup starts once the writer has committed again meanwhile, so the
            # overlap does not depend on how the threads happen to be scheduled.
            overlapped.wait(30)
            return f(*a)
        r: Any = reactor
        return threads.deferToThreadPool(r, r.getThreadPool(), after_more_commits, *args)

    commits_before = storage.stats["commits"]
    writer = LoopingCall(more)
    writer.start(0.0, now=False)
    info = await take_snapshot(storage, PID, tmp_path / "snap", in_thread)
    commits_during = storage.stats["commits"] - commits_before
    writer.stop()
    await storage.flush()
    try:
        assert commits_during > 1, "the writer did not overlap the snapshot"
        assert store.committed_lsn() > info.lsn
        expected: dict[bytes, tuple[bytes, bytes | None, int, int]] = {}
        for row in history:
            if row[3] <= info.lsn:
                expected[row[0]] = row
        assert rows_in(info.path) == sorted(expected.values())
    finally:
        storage.close()


def test_a_snapshot_leaves_out_staged_writes_and_reports_the_committed_lsn(
        source: Storage, tmp_path: Path) -> None:
    store = source.open_partition(PID)
    committed = store.committed_lsn()
    source.write(PID, b"staged", b"not yet", 1)         # no clock.advance: not committed
    assert store.last_lsn() == committed + 1
    info = snapshot(source, tmp_path / "snap")
    assert info.lsn == committed
    assert b"staged" not in {r[0] for r in rows_in(info.path)}


def test_a_snapshot_is_one_standalone_file(source: Storage, tmp_path: Path) -> None:
    info = snapshot(source, tmp_path / "snap")
    assert [p.name for p in tmp_path.glob("snap*")] == ["snap"]
    moved = tmp_path / "elsewhere.sqlite"
    moved.write_bytes(info.path.read_bytes())
    assert len(rows_in(moved)) == 500
    assert info.size == moved.stat().st_size
    assert moved.read_bytes()[18:20] == b"\x01\x01"      # rollback journal, not WAL


def test_a_snapshot_of_a_partition_not_held_raises_keyerror(source: Storage,
                                                            tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        result_of(take_snapshot(source, "p1.1", tmp_path / "snap", inline))
    assert not (tmp_path / "snap").exists()


def test_read_chunk_returns_the_bytes_and_their_xxh64(source: Storage,
                                                      tmp_path: Path) -> None:
    info = snapshot(source, tmp_path / "snap")
    data, checksum = read_chunk(info.path, 100, 1000)
    assert data == info.path.read_bytes()[100:1100]
    assert checksum == snapshot_mod.xxhash.xxh64_intdigest(data)
    assert read_chunk(info.path, info.size, 10)[0] == b""


# -- receiving and installing ---------------------------------------------------------

def test_a_snapshot_streamed_in_chunks_and_installed_gives_the_source_checksum(
        source: Storage, target: Storage, tmp_path: Path) -> None:
    info = snapshot(source, tmp_path / "snap")
    receiver = SnapshotReceiver(target.data_dir, PID, info.size, info.checksum)
    stream(info, receiver)
    receiver.finish()
    receiver.install(target)
    store = target.open_partition(PID)
    assert store.checksum() == source.open_partition(PID).checksum()
    assert store.last_lsn() == info.lsn
    assert target.read(PID, b"k1").value != b"stale"
    assert not receiver.path.exists()


def test_chunks_received_out_of_order_still_verify(source: Storage, target: Storage,
                                                   tmp_path: Path) -> None:
    info = snapshot(source, tmp_path / "snap")
    receiver = SnapshotReceiver(target.data_dir, PID, info.size, info.checksum)
    offsets = list(range(0, info.size, 4096))
    for offset in reversed(offsets):
        receiver.write(offset, *read_chunk(info.path, offset, 4096))
    receiver.finish()
    receiver.install(target)
    assert target.open_partition(PID).checksum() == source.open_partition(PID).checksum()


def test_installing_drops_the_replicas_cached_reads(source: Storage, target: Storage,
                                                    tmp_path: Path) -> None:
    assert target.read(PID, b"k1").value == b"stale"     # now cached
    info = snapshot(source, tmp_path / "snap")
    receiver = SnapshotReceiver(target.data_dir, PID, info.size, info.checksum)
    stream(info, receiver)
    receiver.finish()
    receiver.install(target)
    assert target.read(PID, b"k1") == source.read(PID, b"k1")


def test_the_delta_after_more_writes_and_removes_makes_the_checksums_equal(
        source: Storage, target: Storage, clock: Clock, tmp_path: Path) -> None:
    info = snapshot(source, tmp_path / "snap")
    receiver = SnapshotReceiver(target.data_dir, PID, info.size, info.checksum)
    stream(info, receiver)
    receiver.finish()
    receiver.install(target)
    fill(source, clock, 50, start=1000)                   # new keys
    for i in range(0, 40, 2):
        source.write(PID, b"k%d" % i, None, 2)            # tombstones
    source.write(PID, b"k1", b"changed", 2)
    source.write(PID, b"k1", b"changed again", 3)         # one key twice
    clock.advance(0)
    src = source.open_partition(PID)
    assert target.open_partition(PID).checksum() != src.checksum()
    rows = [list(r) for r in src.rows_since(info.lsn)]
    assert apply_delta(target, PID, rows) == len(rows)
    dst = target.open_partition(PID)
    assert dst.checksum() == src.checksum()
    assert dst.last_lsn() == src.last_lsn()
    assert target.read(PID, b"k0") == source.read(PID, b"k0")


def test_an_applied_delta_survives_reopening(source: Storage, target: Storage,
                                             clock: Clock, tmp_path: Path) -> None:
    rows = [[b"d1", b"x", 1, 700], [b"d2", None, 4, 701]]
    apply_delta(target, PID, rows)
    target.close()
    again = Storage(target.data_dir, clock)
    try:
        store = again.open_partition(PID)
        assert store.read(b"d2").version == 4 and store.read(b"d2").value is None
        assert store.last_lsn() == 701
    finally:
        again.close()


def test_a_delta_row_never_moves_a_version_back(target: Storage) -> None:
    target.open_partition(PID)
    apply_delta(target, PID, [[b"k1", b"old", 1, 900]])    # k1 is at version 2
    assert target.read(PID, b"k1").value == b"stale"


def test_a_chunk_with_a_wrong_checksum_fails_and_the_replica_is_untouched(
        source: Storage, target: Storage, tmp_path: Path) -> None:
    before = replica_state(target)
    info = snapshot(source, tmp_path / "snap")
    receiver = SnapshotReceiver(target.data_dir, PID, info.size, info.checksum)
    data, checksum = read_chunk(info.path, 4096, 4096)
    with pytest.raises(CopyFailed, match=r"p0\.0.*offset 4096") as e:
        receiver.write(4096, data, checksum ^ 1)
    assert e.value.pid == PID and "checksum" in e.value.reason
    assert receiver.path.stat().st_size == 0              # nothing written
    receiver.abort()
    assert not receiver.path.exists()
    assert replica_state(target) == before


def test_a_whole_file_checksum_mismatch_fails_and_the_replica_is_untouched(
        source: Storage, target: Storage, tmp_path: Path) -> None:
    before = replica_state(target)
    info = snapshot(source, tmp_path / "snap")
    receiver = SnapshotReceiver(target.data_dir, PID, info.size, info.checksum ^ 1)
    stream(info, receiver)
    with pytest.raises(CopyFailed, match="whole-file checksum"):
        receiver.finish()
    assert not receiver.path.exists()
    with pytest.raises(CopyFailed):
        receiver.install(target)
    assert replica_state(target) == before


def test_a_short_file_fails_finish(source: Storage, target: Storage, tmp_path: Path) -> None:
    info = snapshot(source, tmp_path / "snap")
    receiver = SnapshotReceiver(target.data_dir, PID, info.size, info.checksum)
    receiver.write(0, *read_chunk(info.path, 0, 4096))
    with pytest.raises(CopyFailed, match=f"received 4096 bytes, expected {info.size}"):
        receiver.finish()


def test_a_full_disk_while_receiving_fails_removes_the_temp_and_keeps_the_replica(
        source: Storage, target: Storage, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = replica_state(target)
    info = snapshot(source, tmp_path / "snap")
    receiver = SnapshotReceiver(target.data_dir, PID, info.size, info.checksum)
    receiver.write(0, *read_chunk(info.path, 0, 4096))

    def full(fd: int, data: Any, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(snapshot_mod.os, "pwrite", full)
    with pytest.raises(CopyFailed, match="No space left") as e:
        receiver.write(4096, *read_chunk(info.path, 4096, 4096))
    assert "offset 4096" in e.value.reason
    assert not receiver.path.exists()
    assert replica_state(target) == before


def test_a_failing_fsync_at_finish_fails_and_removes_the_temp(
        source: Storage, target: Storage, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = replica_state(target)
    info = snapshot(source, tmp_path / "snap")
    receiver = SnapshotReceiver(target.data_dir, PID, info.size, info.checksum)
    stream(info, receiver)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(snapshot_mod.os, "fsync", failing)
    with pytest.raises(CopyFailed, match="Input/output error"):
        receiver.finish()
    monkeypatch.undo()
    assert not receiver.path.exists()
    assert replica_state(target) == before


def test_installing_a_file_of_another_partition_fails_and_keeps_the_replica(
        tmp_path: Path, target: Storage, clock: Clock) -> None:
    other = Storage(tmp_path / "other", clock)
    other.open_partition("p1.1")
    other.write("p1.1", b"a", b"b", 1)
    clock.advance(0)
    info: SnapshotInfo = result_of(take_snapshot(other, "p1.1", tmp_path / "snap", inline))
    other.close()
    before = replica_state(target)
    receiver = SnapshotReceiver(target.data_dir, PID, info.size, info.checksum)
    stream(info, receiver)
    receiver.finish()
    with pytest.raises(CopyFailed, match="holds partition 'p1.1'"):
        receiver.install(target)
    assert not receiver.path.exists()
    assert replica_state(target) == before


@pytest.mark.parametrize("bad", [
    [b"k", b"v", 1],                        # too short
    [b"k", "text", 1, 900],                 # value not bytes
    ["k", b"v", 1, 900],                    # key not bytes
    [b"k", b"v", 0, 900],                   # version 0
    [b"k", b"v", True, 900],                # bool is not a version
    [b"k", b"v", 1, -1],                    # negative lsn
    {"key": b"k"},                          # not a row at all
])
def test_a_malformed_delta_row_fails_and_nothing_is_applied(target: Storage,
                                                            bad: Any) -> None:
    before = replica_state(target)
    rows = [[b"good", b"v", 1, 800], bad]
    with pytest.raises(CopyFailed, match=r"p0\.0.*delta row 1"):
        apply_delta(target, PID, rows)
    assert replica_state(target) == before
    assert target.read(PID, b"good").version == 0


def test_a_delta_row_of_a_key_outside_the_partition_fails(tmp_path: Path,
                                                         clock: Clock) -> None:
    storage = Storage(tmp_path, clock)
    storage.open_partition("p1.0")
    key = next(b"x%d" % i for i in range(100) if snapshot_mod.PartitionId(1, 1).owns(b"x%d" % i))
    try:
        with pytest.raises(CopyFailed, match="does not belong"):
            apply_delta(storage, "p1.0", [[key, b"v", 1, 5]])
        assert storage.read("p1.0", key).version == 0
    finally:
        storage.close()


def test_installing_discards_a_wal_the_old_replica_left_behind(
        source: Storage, target: Storage, clock: Clock, tmp_path: Path) -> None:
    """Another connection keeps the old replica's WAL from being checkpointed away on
    close; replayed onto the new file it would bring stale rows back (or corrupt it)."""
    path = target.partition_path(PID)
    other = sqlite3.connect(str(path))
    other.execute("SELECT COUNT(*) FROM kv").fetchone()
    try:
        target.write(PID, b"only-in-old-wal", b"x", 1)
        clock.advance(0)
        assert Path(str(path) + "-wal").stat().st_size > 0
        info = snapshot(source, tmp_path / "snap")
        receiver = SnapshotReceiver(target.data_dir, PID, info.size, info.checksum)
        stream(info, receiver)
        receiver.finish()
        receiver.install(target)
    finally:
        other.close()
    store = target.open_partition(PID)
    assert target.read(PID, b"only-in-old-wal").version == 0
    assert store.checksum() == source.open_partition(PID).checksum()


def test_discard_gradually_frees_a_large_file_a_step_at_a_time(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from dds.bricks.copy.snapshot import discard_gradually

    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(20 << 20)
    clock = Clock()
    done = discard_gradually(path, clock, step=8 << 20, interval=0.02)
    assert path.stat().st_size == 12 << 20 and not done.called
    clock.advance(0.02)
    assert path.stat().st_size == 4 << 20
    clock.advance(0.02)
    assert not path.exists() and done.called


def test_files_discarded_on_one_clock_are_freed_one_after_the_other(tmp_path: Path) -> None:
    """A move frees a snapshot and a replica at once: one at a time, not both."""
    from twisted.internet.task import Clock

    from dds.bricks.copy.snapshot import discard_gradually

    a, b = tmp_path / "a", tmp_path / "b"
    for path in (a, b):
        with open(path, "wb") as f:
            f.truncate(3 << 20)
    clock = Clock()
    done_a = discard_gradually(a, clock, step=2 << 20, interval=0.02)
    done_b = discard_gradually(b, clock, step=2 << 20, interval=0.02)
    assert a.stat().st_size == 1 << 20 and b.stat().st_size == 3 << 20
    clock.advance(0.02)
    assert not a.exists() and done_a.called
    assert b.stat().st_size == 1 << 20 and not done_b.called
    clock.advance(0.02)
    assert not b.exists() and done_b.called


def _sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_discard_steps_run_where_the_caller_says(tmp_path: Path) -> None:
    """The brick passes its thread pool: a step's truncate must not hold the reactor."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from dds.bricks.copy.snapshot import discard_gradually

    path = _sparse_file(tmp_path / "big", 5 << 20)
    ran: list[tuple[Any, ...]] = []
    pending: list[Deferred[Any]] = []

    def in_thread(f: Any, *args: Any) -> Deferred[Any]:
        ran.append(args)
        d: Deferred[Any] = Deferred()
        pending.append(d)
        d.addCallback(lambda _: f(*args))
        return d

    clock = Clock()
    done = discard_gradually(path, clock, step=2 << 20, interval=0.02, run_in_thread=in_thread)
    assert ran == [(path, 3 << 20)] and path.stat().st_size == 5 << 20  # not run inline
    pending.pop().callback(None)
    clock.advance(0.02)
    assert ran[-1] == (path, 1 << 20)
    pending.pop().callback(None)
    clock.advance(0.02)
    assert not path.exists() and done.called


def test_a_failed_discard_step_deletes_the_file_in_one_go(tmp_path: Path) -> None:
    from twisted.internet.defer import fail
    from twisted.internet.task import Clock

    from dds.bricks.copy.snapshot import discard_gradually

    path = _sparse_file(tmp_path / "big", 5 << 20)
    clock = Clock()
    done = discard_gradually(path, clock, step=2 << 20, interval=0.02,
                             run_in_thread=lambda f, *a: fail(OSError(5, "I/O error")))
    assert not path.exists() and done.called
