"""Row checksums (issue 13): computed at staging, kept in the file and the log, verified
on every read from the file and every install; damaged rows never served."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from dds.bricks.partstore import PartitionStore, ReadResult
from dds.bricks.rowcheck import ChecksumMismatch, row_checksum, verify_file_rows
from dds.bricks.copy.snapshot import CopyFailed, apply_delta
from dds.bricks.storage import Storage
from dds.bricks.txlog import log_files
from dds.errors import ReplicaDamaged
from dds.partition import PartitionId

P = "p1.0"


def key_in(pid: str, i: int) -> bytes:
    owner = PartitionId.parse(pid)
    n = 0
    while True:
        key = b"k%d" % n
        if owner.owns(key):
            if i == 0:
                return key
            i -= 1
        n += 1


def damage(path: Path, key: bytes, value: bytes | None) -> None:
    """Change a stored value behind the brick's back, checksum left as it was (what a
    flipped bit on disk does)."""
    conn = sqlite3.connect(str(path))
    with conn:
        assert conn.execute("UPDATE kv SET value = ? WHERE key = ?", (value, key)).rowcount == 1
    conn.close()


def written(tmp_path: Path, rows: dict[bytes, bytes | None]) -> Storage:
    """A storage with ``rows`` (version 1) of partition P committed to its file."""
    s = Storage(tmp_path, Clock(), cache_entries=100)
    s.open_partition(P)
    for key, value in rows.items():
        s.write(P, key, value, 1)
    s.flush()
    return s


def test_the_checksum_covers_key_version_value_and_removal() -> None:
    base = row_checksum(b"k", 1, b"v")
    assert base == row_checksum(b"k", 1, b"v")
    others = {row_checksum(b"j", 1, b"v"), row_checksum(b"k", 2, b"v"),
              row_checksum(b"k", 1, b"w"), row_checksum(b"k", 1, None),
              row_checksum(b"k", 1, b"")}
    assert base not in others and len(others) == 5
    assert all(-(1 << 63) <= c < 1 << 63 for c in others | {base})


def test_a_damaged_value_is_never_returned_and_is_reported(tmp_path: Path) -> None:
    key = key_in(P, 0)
    s = written(tmp_path, {key: b"good value"})
    path = s.partition_path(P)
    s.close()
    damage(path, key, b"good valuf")
    s = Storage(tmp_path, Clock(), cache_entries=100)
    found: list[tuple[str, bytes]] = []
    s.on_damage = lambda pid, k: found.append((pid, k))
    with pytest.raises(ReplicaDamaged) as e:
        s.read(P, key)
    assert P in str(e.value) and repr(key) in str(e.value)
    assert found == [(P, key)]
    with pytest.raises(ReplicaDamaged):     # not cached: the second read fails too
        s.read(P, key)
    assert len(found) == 2
    s.close()


def test_a_damaged_tombstone_is_detected(tmp_path: Path) -> None:
    key = key_in(P, 0)
    s = written(tmp_path, {key: None})
    path = s.partition_path(P)
    s.close()
    damage(path, key, b"resurrected")
    store = PartitionStore(path, P)
    with pytest.raises(ChecksumMismatch):
        store.read(key)
    store.close()


def test_the_checksum_computed_at_staging_is_the_one_stored(tmp_path: Path) -> None:
    key = key_in(P, 0)
    s = Storage(tmp_path, Clock())
    s.open_partition(P)
    wrong = row_checksum(key, 1, b"other")
    s.write(P, key, b"value", 1, checksum=wrong)     # as if the value changed in memory
    s.flush()
    s.close()
    store = PartitionStore(tmp_path / f"{P}.sqlite", P)
    with pytest.raises(ChecksumMismatch):
        store.read(key)
    store.close()


def test_a_repair_replaces_a_damaged_row_even_at_a_lower_version(tmp_path: Path) -> None:
    key = key_in(P, 0)
    s = written(tmp_path, {key: b"one"})
    s.write(P, key, b"two", 7)
    s.flush()
    path = s.partition_path(P)
    s.close()
    damage(path, key, b"tw0")
    s = Storage(tmp_path, Clock(), cache_entries=100)
    assert s.file_row_damaged(P, key)
    s.repair_row(P, key, b"two", 2, row_checksum(key, 2, b"two"))
    assert s.read(P, key) == ReadResult(b"two", 2)
    s.flush()
    assert not s.file_row_damaged(P, key)
    with pytest.raises(ValueError):
        s.repair_row(P, key, b"two", 3, row_checksum(key, 2, b"two"))
    s.close()


def test_the_log_never_redoes_an_older_write_over_a_damaged_row(tmp_path: Path) -> None:
    key = key_in(P, 0)
    s = written(tmp_path, {key: b"old"})       # logged at version 1
    rows = [[key, b"new", 5, 9, row_checksum(key, 5, b"new")]]
    s.apply_rows(P, [tuple(r) for r in rows])  # a copy's row: in the file, not the log
    path = s.partition_path(P)
    s._txlog.close()                           # dies: the log keeps version 1's record
    for store in s._stores.values():
        store._conn.close()
    damage(path, key, b"neW")
    s = Storage(tmp_path, Clock(), cache_entries=100)
    assert s.file_row_damaged(P, key)          # left to the self-repair, not to the log
    with pytest.raises(ReplicaDamaged):
        s.read(P, key)
    s.close()


def _old_schema_file(path: Path, pid: str, rows: list[tuple[bytes, bytes | None, int, int]]
                     ) -> None:
    """A partition file exactly as the code before checksums wrote it (schema 1)."""
    conn = sqlite3.connect(str(path))
    with conn:
        conn.execute("CREATE TABLE [kv] ([key] BLOB PRIMARY KEY, [value] BLOB, "
                     "[version] INTEGER NOT NULL, [lsn] INTEGER NOT NULL)")
        conn.execute("CREATE INDEX [idx_kv_lsn] ON [kv] ([lsn])")
        conn.execute("CREATE TABLE [meta] ([name] TEXT PRIMARY KEY, [value] ANY)")
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("schema_version", 1), ("partition", pid), ("last_lsn", len(rows))])
        conn.executemany("INSERT INTO kv VALUES (?, ?, ?, ?)", rows)
    conn.close()


def test_a_schema_1_file_is_served_unverified_until_migrated(tmp_path: Path) -> None:
    keys = [key_in(P, i) for i in range(3)]
    _old_schema_file(tmp_path / f"{P}.sqlite", P,
                     [(k, b"v%d" % i, 1, i + 1) for i, k in enumerate(keys)])
    s = Storage(tmp_path, Clock())
    store = s.open_partition(P)
    assert store.checksums_missing
    assert [s.read(P, k) for k in keys] == [ReadResult(b"v%d" % i, 1) for i in range(3)]
    assert verify_file_rows(store.path, P) == 0      # nothing carries a checksum yet
    s.close()


def test_rows_with_a_checksum_in_a_copied_file_are_all_verified(tmp_path: Path) -> None:
    keys = [key_in(P, i) for i in range(5)]
    s = written(tmp_path, {k: b"value" for k in keys})
    path = s.partition_path(P)
    s.close()
    assert verify_file_rows(path, P) == 5
    damage(path, keys[3], b"valuf")
    with pytest.raises(ChecksumMismatch) as e:
        verify_file_rows(path, P)
    assert e.value.key == keys[3] and P in str(e.value)


def test_a_delta_row_failing_its_checksum_fails_the_copy_naming_partition_and_key(
        tmp_path: Path) -> None:
    key = key_in(P, 0)
    s = written(tmp_path, {})
    good = [key, b"value", 1, 5, row_checksum(key, 1, b"value")]
    bad = [key, b"valuf", 1, 6, row_checksum(key, 1, b"value")]
    with pytest.raises(CopyFailed) as e:
        apply_delta(s, P, [good, bad])
    assert P in str(e.value) and repr(key) in str(e.value)
    assert s.read(P, key) == ReadResult(None, 0)          # nothing applied
    assert apply_delta(s, P, [good]) == 1
    assert s.read(P, key) == ReadResult(b"value", 1)
    s.close()


def test_a_delta_from_a_source_without_checksums_is_applied_with_computed_ones(
        tmp_path: Path) -> None:
    key = key_in(P, 0)
    s = written(tmp_path, {})
    assert apply_delta(s, P, [[key, b"value", 1, 5]]) == 1
    s.flush()
    assert verify_file_rows(s.partition_path(P), P) == 1
    s.close()


def test_a_damaged_log_batch_does_not_hide_the_batches_after_it(tmp_path: Path) -> None:
    keys, log = _three_batches_then_die(tmp_path)
    data = bytearray(log.read_bytes())
    at = data.index(b"value-1")
    data[at + 6] ^= 0x01                # "value-1" -> "value-0": still decodes
    log.write_bytes(bytes(data))
    s = Storage(tmp_path, Clock())
    assert s.read(P, keys[0]) == ReadResult(b"value-0", 1)
    assert s.read(P, keys[1]) == ReadResult(None, 0)       # its record failed its checksum
    assert s.read(P, keys[2]) == ReadResult(b"value-2", 1)  # read past the damage
    assert len(s.log_damage) == 2       # the batch, and the record in it
    s.close()


def test_a_source_never_snapshots_a_damaged_row_and_has_it_repaired(tmp_path: Path) -> None:
    from twisted.internet.defer import Deferred, maybeDeferred

    from dds.bricks.copy.snapshot import take_snapshot
    keys = [key_in(P, i) for i in range(3)]
    s = written(tmp_path, {k: b"value" for k in keys})
    path = s.partition_path(P)
    s.close()
    damage(path, keys[2], b"valuf")
    s = Storage(tmp_path, Clock())
    found: list[tuple[str, bytes]] = []
    s.on_damage = lambda pid, k: found.append((pid, k))
    dest = tmp_path / "snap"
    d = Deferred.fromCoroutine(take_snapshot(s, P, dest, maybeDeferred))
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert [f.type for f in failures] == [ChecksumMismatch]
    assert found == [(P, keys[2])] and not dest.exists()
    s.close()


def test_only_a_brick_may_ask_for_a_members_row() -> None:
    from dds.messages import RowRead, roles_of
    assert roles_of("row_read") == frozenset({"brick"})
    assert RowRead(pid=P, key=b"k", rg="rg0").to_wire() == {"pid": P, "key": b"k", "rg": "rg0"}


def _three_batches_then_die(tmp_path: Path) -> tuple[list[bytes], Path]:
    keys = [key_in(P, i) for i in range(3)]
    s = Storage(tmp_path, Clock())
    s.open_partition(P)
    s.open_partition("p1.1")
    for i, key in enumerate(keys):      # three appends, three batches
        s.write(P, key, b"value-%d" % i, 1)
        s.flush(files=False)
    (log,) = log_files(tmp_path)
    s._txlog.close()
    for store in s._stores.values():    # dies before the files get the rows
        store._conn.close()
    return keys, log


def _flip_log_bit(log: Path, offset: int, mask: int) -> None:
    """XOR ``mask`` into the log's byte at ``offset`` (a flipped bit on disk)."""
    data = bytearray(log.read_bytes())
    data[offset] ^= mask
    log.write_bytes(bytes(data))


def test_a_damaged_log_marks_the_replicas_its_damaged_batch_held_before_it_is_retired(
        tmp_path: Path) -> None:
    """A flipped byte in a write's value: the batch still decodes, so it is known to
    hold only that write of P.  P is copied again; p1.1 (untouched) keeps serving."""
    from dds.bricks.needscopy import marked
    _keys, log = _three_batches_then_die(tmp_path)
    _flip_log_bit(log, log.read_bytes().index(b"value-1") + 6, 0x01)
    s = Storage(tmp_path, Clock())
    s.close()
    why = marked(tmp_path)
    assert set(why) == {P}
    assert "transaction log was damaged" in why[P]
    again = Storage(tmp_path, Clock())  # the damaged log is gone; the markers stay
    assert again.log_damage == [] and set(marked(tmp_path)) == {P}
    again.close()


def test_a_damaged_batch_that_no_longer_decodes_marks_every_replica(
        tmp_path: Path) -> None:
    """Which partitions an undecodable batch held is unknown: all are copied again."""
    from dds.bricks.needscopy import marked
    _keys, log = _three_batches_then_die(tmp_path)
    _flip_log_bit(log, 8, 0x02)          # the first batch's array header: 1 record -> 3
    s = Storage(tmp_path, Clock())
    assert s.log_damage
    s.close()
    assert set(marked(tmp_path)) == {P, "p1.1"}


def test_a_damaged_txid_marks_the_partition_of_the_vote_it_may_settle(
        tmp_path: Path) -> None:
    """A commit's write in P settles its vote by txid, which no checksum covers: a
    flipped txid may settle another transaction's vote, here one in p1.1, whose replica
    then lacks a YES vote.  Both partitions are copied again."""
    from dds.bricks.needscopy import marked
    other = key_in("p1.1", 0)
    s = Storage(tmp_path, Clock())
    s.open_partition(P)
    s.open_partition("p1.1")
    s.prepare("p1.1", (7, 2), other, "put", b"x", 1, (1, 1), None, ("b1",))
    s.flush(files=False)
    s.prepare(P, (7, 3), key_in(P, 0), "put", b"y", 1, (1, 1), None, ("b1",))
    s.flush(files=False)
    s.write(P, key_in(P, 0), b"y", 1, (7, 3))
    s.flush(files=False)
    (log,) = log_files(tmp_path)
    s._txlog.close()
    for store in s._stores.values():
        store._conn.close()
    at = log.read_bytes().rindex(b"\x92\x07\x03")  # the write's txid [7, 3], last batch
    _flip_log_bit(log, at + 2, 0x01)      # -> [7, 2]: the vote in p1.1
    again = Storage(tmp_path, Clock())
    assert again.log_damage
    again.close()
    assert set(marked(tmp_path)) == {P, "p1.1"}


def test_a_whole_last_batch_failing_its_crc_is_damage_not_a_torn_append(
        tmp_path: Path) -> None:
    keys, log = _three_batches_then_die(tmp_path)
    _flip_log_bit(log, log.read_bytes().index(b"value-2") + 6, 0x01)  # last batch, whole
    s = Storage(tmp_path, Clock())
    assert s.log_damage                  # not silently dropped as torn
    assert s.read(P, keys[1]) == ReadResult(b"value-1", 1)
    s.close()


def test_a_short_last_batch_is_a_torn_append_and_no_damage(tmp_path: Path) -> None:
    from dds.bricks.needscopy import marked
    keys, log = _three_batches_then_die(tmp_path)
    data = log.read_bytes()
    log.write_bytes(data[:-3])           # the last append cut short by a kill
    s = Storage(tmp_path, Clock())
    assert s.log_damage == [] and marked(tmp_path) == {}
    assert s.read(P, keys[1]) == ReadResult(b"value-1", 1)
    s.close()


def test_a_last_batch_of_zeros_is_a_torn_append(tmp_path: Path) -> None:
    _keys, log = _three_batches_then_die(tmp_path)
    with open(log, "ab") as f:           # a power loss: the length, but no data
        f.write((16).to_bytes(4, "big") + (12345).to_bytes(4, "big") + bytes(16))
    s = Storage(tmp_path, Clock())
    assert s.log_damage == []
    s.close()


def test_a_batch_whose_length_field_was_damaged_is_damage_not_a_torn_tail(
        tmp_path: Path) -> None:
    """A flipped high bit in the first batch's length makes it look cut short; were that
    read as the torn tail, the two batches after it (acknowledged writes) would be
    dropped silently.  An intact batch follows, so it is damage: counted, every replica
    marked for a copy, and the later batches still replayed."""
    from dds.bricks.needscopy import marked
    keys, log = _three_batches_then_die(tmp_path)
    _flip_log_bit(log, 0, 0x40)          # the first header's length: +1 GiB
    s = Storage(tmp_path, Clock())
    assert s.log_damage
    assert set(marked(tmp_path)) == {P, "p1.1"}
    assert s.read(P, keys[1]) == ReadResult(b"value-1", 1)
    assert s.read(P, keys[2]) == ReadResult(b"value-2", 1)
    s.close()
