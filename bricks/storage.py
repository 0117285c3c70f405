"""Brick storage: one SQLite file per partition replica (DESIGN §9, durability in §4).

The file is the unit of copy (recovery and moves ship whole files, then deltas by log
position), so each partition replica lives in its own file ``<pid>.sqlite`` in the brick's
data directory:

- ``kv(key BLOB PRIMARY KEY, value BLOB, version INTEGER NOT NULL, lsn INTEGER NOT NULL)``:
  ``value`` NULL is a tombstone, kept so that versions never go back across ``remove``
  (``compare_and_put`` stays safe).  ``lsn`` is the partition's log position of the row's
  last write; an index on it serves delta copies (:meth:`PartitionStore.rows_since`).
- ``meta(name TEXT PRIMARY KEY, value)``: ``schema_version``, ``partition``, ``last_lsn``.

Besides the partition files, one brick-wide file ``prepared.sqlite`` holds
``prepared(txid BLOB PRIMARY KEY, pid, key, op, value, new_version, ts)``: the 2PC
transactions this brick voted YES on.  A record is durable before the vote is sent and is
removed lazily once the transaction's outcome is durable, so a brick that dies in between
finds it on restart.  One file for all partitions keeps it to one extra commit per flush.

**No threads.**  Every SQLite call runs synchronously on the reactor thread.  A batch commit
in ``fsync`` mode therefore blocks the reactor for one fsync per dirty partition file; group
commit keeps that to one per reactor turn.

**Group commit.**  The first write of a reactor turn schedules ``clock.callLater(0, ...)``;
that flush commits every pending write, one SQLite transaction per partition file, and then
fires the writes' Deferreds in the order the writes were issued.  A failed commit rolls the
transaction back, forgets that batch's staged writes and errbacks each of their Deferreds.

**Staged writes are visible.**  A write is applied to an in-memory overlay (and the read
cache) at once, so a read issued before its batch commits may already return it.  That is
safe for the 2PC participant, which writes only on COMMIT, when the outcome is decided; if
the batch then fails, the overlay and cache entries are dropped and reads go back to the
committed value.

In ``memory`` mode a write is acknowledged right after the in-memory apply and flushed to
SQLite within ``memory_flush_s``.  A failed flush is retried (the writes were acknowledged,
so memory stays the truth, DESIGN §4); they are lost only if the process dies first.
"""

from __future__ import annotations

import os
import re
import sqlite3
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import attrs
import sqlite_utils
import xxhash
from sqlite_utils.db import ANY
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds.bricks.discard import discard_gradually
from dds.errors import NotServing

log = Logger()

Durability = Literal["memory", "disk", "fsync"]
Row = tuple[bytes, "bytes | None", int, int]  # key, value, version, lsn

SCHEMA_VERSION = 1
_PID_RE = re.compile(r"^p\d+\.\d+$")
_SUFFIX = ".sqlite"
_SYNCHRONOUS = {"memory": "NORMAL", "disk": "NORMAL", "fsync": "FULL"}
_PAGE = 1000  # rows per query in rows_since, so writes may interleave with a long copy

# The sqlite3 module caches compiled statements by SQL text, so reusing these constants is
# what "prepared once" means here.
_SQL_READ = "SELECT value, version FROM kv WHERE key = ?"
_SQL_UPSERT = (
    "INSERT INTO kv (key, value, version, lsn) VALUES (?, ?, ?, ?) ON CONFLICT (key) "
    "DO UPDATE SET value = excluded.value, version = excluded.version, lsn = excluded.lsn"
)
_SQL_SET_LSN = "UPDATE meta SET value = ? WHERE name = 'last_lsn'"
# Recovery's delta keeps the source's lsns; the guard keeps versions from going back if a
# delta is applied twice or arrives after a newer row.
_SQL_APPLY = (
    "INSERT INTO kv (key, value, version, lsn) VALUES (?, ?, ?, ?) ON CONFLICT (key) "
    "DO UPDATE SET value = excluded.value, version = excluded.version, lsn = excluded.lsn "
    "WHERE excluded.version >= kv.version"
)
_SQL_SINCE = "SELECT key, value, version, lsn FROM kv WHERE lsn > ? ORDER BY lsn LIMIT ?"
_SQL_PREPARED_TABLE = (
    "CREATE TABLE IF NOT EXISTS prepared (txid BLOB PRIMARY KEY, pid TEXT NOT NULL, "
    "key BLOB NOT NULL, op TEXT NOT NULL, value BLOB, new_version INTEGER NOT NULL, "
    "ts BLOB NOT NULL)")
_SQL_PREP_ADD = ("INSERT OR REPLACE INTO prepared (txid, pid, key, op, value, new_version, "
                 "ts) VALUES (?, ?, ?, ?, ?, ?, ?)")
PREPARED_FILE = "prepared.sqlite"
_SQL_PREP_DEL = "DELETE FROM prepared WHERE txid = ?"
_PAIR = struct.Struct(">QQ")

TxnId = tuple[int, int]


@attrs.frozen
class ReadResult:
    """A key's state: ``version`` 0 and ``value`` None = never written; ``value`` None with
    ``version`` > 0 = tombstone (removed, but its version still counts)."""

    value: bytes | None
    version: int


NEVER_WRITTEN = ReadResult(None, 0)


@attrs.frozen
class PreparedRecord:
    """A transaction this replica voted YES on, as found in the file after a restart."""

    txid: TxnId
    pid: str
    key: bytes
    op: str
    value: bytes | None
    new_version: int
    ts: tuple[int, int]


def _pack_pair(pair: tuple[int, int]) -> bytes:
    # Library ids are unsigned 64-bit: too wide for SQLite's signed INTEGER.
    return _PAIR.pack(*pair)


def _transaction(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], object]
                 ) -> None:
    """Run ``body`` in one SQLite transaction; on any error roll back and re-raise."""
    conn.execute("BEGIN")
    try:
        body(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


def _check_partition_file(path: Path, pid: str) -> None:
    """Raise ValueError unless ``path`` is an SQLite partition file of ``pid`` that this
    code can open (schema version not newer than ours)."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"kv", "meta"} <= tables:
                raise ValueError(f"{path}: not a partition file (tables {sorted(tables)})")
            meta = dict(conn.execute("SELECT name, value FROM meta"))
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise ValueError(f"{path}: not a readable SQLite file: {e}") from None
    if meta.get("partition") != pid:
        raise ValueError(f"{path} holds partition {meta.get('partition')!r}, not {pid!r}")
    if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
        raise ValueError(f"{path}: schema version {meta.get('schema_version')} is newer "
                         f"than {SCHEMA_VERSION}")


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX: fsync the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def validate_pid(pid: str) -> str:
    """Partition ids become file names; only canonical ids like ``p3.5`` are accepted."""
    if not isinstance(pid, str) or not _PID_RE.match(pid):
        raise ValueError(f"invalid partition id {pid!r} (expected like 'p3.5')")
    return pid


class PartitionStore:
    """One partition replica's SQLite file, with its own connection.

    Writes are staged by :class:`Storage` (``_stage``) and committed in batches
    (``_commit``); every read here sees committed rows overlaid with staged ones.
    """

    def __init__(self, path: str | Path, partition_id: str, durability: Durability = "disk"):
        self.path = Path(path)
        self.partition_id = partition_id
        self.closed = False
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per batch.
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, cached_statements=32)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")
            self._committed_lsn = self._migrate()
        except BaseException:
            self._conn.close()
            raise
        self._last_lsn = self._committed_lsn
        # key -> (result, lsn) of the newest staged write; _pending keeps them all in order.
        self._overlay: dict[bytes, tuple[ReadResult, int]] = {}
        self._pending: list[Row] = []

    def _migrate(self) -> int:
        """Create the schema in a new file, check an existing one; return its last lsn."""
        db = sqlite_utils.Database(self._conn, execute_plugins=False, recursive_triggers=False)
        tables = set(db.table_names())
        if "meta" in tables:
            meta = dict(self._conn.execute("SELECT name, value FROM meta"))
            found = int(meta.get("schema_version", 0))
            if found > SCHEMA_VERSION:
                raise ValueError(f"{self.path}: schema version {found} is newer than {SCHEMA_VERSION}")
            if meta.get("partition") != self.partition_id:
                raise ValueError(f"{self.path} holds partition {meta.get('partition')!r}, "
                                 f"not {self.partition_id!r}")
            if "kv" in tables and found == SCHEMA_VERSION:
                # ``meta.last_lsn`` is a floor written at close (and before any purge of
                # rows); the indexed MAX(lsn) covers every commit since, so commits need
                # not rewrite the meta page each time.
                top = self._conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM kv").fetchone()[0]
                return max(int(meta.get("last_lsn", 0)), int(top))
        kv, meta_t = db.table("kv"), db.table("meta")
        with db.atomic():
            kv.create({"key": bytes, "value": bytes, "version": int, "lsn": int},
                      pk="key", not_null={"version", "lsn"}, if_not_exists=True)
            kv.create_index(["lsn"], if_not_exists=True)
            meta_t.create({"name": str, "value": ANY}, pk="name", if_not_exists=True)
            last = self._conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM kv").fetchone()[0]
            rows: list[dict[str, object]] = [
                {"name": "schema_version", "value": SCHEMA_VERSION},
                {"name": "partition", "value": self.partition_id},
                {"name": "last_lsn", "value": last}]
            meta_t.upsert_all(rows, pk="name")
        return int(last)

    def read(self, key: bytes) -> ReadResult:
        """The key's current state, staged writes included."""
        staged = self._overlay.get(key)
        if staged is not None:
            return staged[0]
        row = self._conn.execute(_SQL_READ, (key,)).fetchone()
        return NEVER_WRITTEN if row is None else ReadResult(row[0], row[1])

    def last_lsn(self) -> int:
        """The last log position assigned, staged writes included."""
        return self._last_lsn

    def committed_lsn(self) -> int:
        """The last log position that is durably in the file (what a snapshot captures)."""
        return self._committed_lsn

    def count(self) -> int:
        """Number of live (non-tombstone) keys, staged writes included."""
        n: int = self._conn.execute("SELECT COUNT(*) FROM kv WHERE value IS NOT NULL").fetchone()[0]
        for key, (res, _) in self._overlay.items():
            row = self._conn.execute(_SQL_READ, (key,)).fetchone()
            n += (res.value is not None) - (row is not None and row[0] is not None)
        return n

    def checksum(self) -> int:
        """xxh64 over all rows (tombstones too) sorted by key, without lsn: lsns are local
        to a replica, so two replicas with the same keys, values and versions compare equal."""
        h = xxhash.xxh64()
        pack = struct.Struct(">IqQ").pack
        for key, value, version in self._rows_by_key():
            h.update(pack(len(key), -1 if value is None else len(value), version))
            h.update(key)
            if value is not None:
                h.update(value)
        return h.intdigest()

    def _rows_by_key(self) -> Iterator[tuple[bytes, bytes | None, int]]:
        """Committed rows merged with staged ones (staged win), in key order."""
        staged = sorted((k, r) for k, (r, _) in self._overlay.items())
        i, n = 0, len(staged)
        for key, value, version in self._conn.execute("SELECT key, value, version FROM kv ORDER BY key"):
            while i < n and staged[i][0] < key:
                yield staged[i][0], staged[i][1].value, staged[i][1].version
                i += 1
            if i < n and staged[i][0] == key:
                yield key, staged[i][1].value, staged[i][1].version
                i += 1
            else:
                yield key, value, version
        for k, r in staged[i:]:
            yield k, r.value, r.version

    def rows_since(self, lsn: int) -> Iterator[Row]:
        """Rows (tombstones included) written after log position ``lsn``, in lsn order.

        Reads in pages, so the iterator may be consumed across reactor turns while writes go
        on; a key rewritten meanwhile shows up again with its newer lsn, and applying the
        rows in order still converges.  Staged writes come last.
        """
        cur = lsn
        while True:
            rows = self._conn.execute(_SQL_SINCE, (cur, _PAGE)).fetchall()
            if not rows:
                break
            for row in rows:
                cur = row[3]
                yield row
        for row in list(self._pending):
            staged = self._overlay.get(row[0])
            if row[3] > cur and staged is not None and staged[1] == row[3]:
                yield row

    def apply_rows(self, rows: Sequence[Row]) -> int:
        """Apply rows copied from another replica (recovery's delta, DESIGN §7) in one
        durable transaction, keeping their lsns, so that this replica's log positions stay
        those of the source and a later delta from the same source lines up.  The last lsn
        becomes at least the highest applied.  A row whose version is below the stored one
        is skipped: versions never go back.  Refused while writes are staged: their lsns
        were assigned from the old last lsn and would interleave with the source's.
        Rows must already be validated; on any error nothing is applied."""
        if self._pending:
            raise ValueError(f"{self.partition_id}: {len(self._pending)} staged writes "
                             "pending; cannot apply copied rows")
        if not rows:
            return 0
        top = max(self._committed_lsn, max(row[3] for row in rows))

        def body(conn: sqlite3.Connection) -> None:
            conn.executemany(_SQL_APPLY, rows)
            conn.execute(_SQL_SET_LSN, (top,))
        _transaction(self._conn, body)
        self._committed_lsn = self._last_lsn = top
        return len(rows)

    def _stage(self, key: bytes, res: ReadResult) -> None:
        self._last_lsn += 1
        self._overlay[key] = (res, self._last_lsn)
        self._pending.append((key, res.value, res.version, self._last_lsn))

    def _commit(self) -> int:
        """Write every staged row in one transaction; on error roll back and re-raise (the
        staged rows stay; the caller decides whether to retry or discard them)."""
        rows = self._pending
        _transaction(self._conn, lambda conn: conn.executemany(_SQL_UPSERT, rows))
        self._committed_lsn = rows[-1][3]
        self._pending = []
        self._overlay.clear()
        return len(rows)

    def _discard(self) -> list[bytes]:
        """Forget the staged rows (their commit failed); return the keys they touched."""
        keys = list(self._overlay)
        self._pending = []
        self._overlay.clear()
        self._last_lsn = self._committed_lsn
        return keys

    def close(self) -> None:
        """Close the connection; staged rows not yet committed are dropped (the
        :class:`Storage` flushes before closing)."""
        if not self.closed:
            self.closed = True
            try:
                self._conn.execute(_SQL_SET_LSN, (self._committed_lsn,))
            except sqlite3.Error:
                pass    # only a floor: MAX(lsn) is authoritative while no row is purged
            self._conn.close()


class PreparedLog:
    """The brick-wide file of recorded YES votes.  It takes part in group commit like a
    partition file: ``_pending`` changes go into one SQLite transaction per flush."""

    partition_id = "prepared"

    def __init__(self, path: Path, durability: Durability) -> None:
        self.path = path
        self.closed = False
        self._conn = sqlite3.connect(str(path), isolation_level=None, cached_statements=8)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")
            self._conn.execute(_SQL_PREPARED_TABLE)
        except BaseException:
            self._conn.close()
            raise
        self._pending: list[tuple[str, tuple[object, ...]]] = []

    def _commit(self) -> int:
        ops = self._pending

        def apply(conn: sqlite3.Connection) -> None:
            for sql, args in ops:
                conn.execute(sql, args)
        _transaction(self._conn, apply)
        self._pending = []
        return len(ops)

    def _discard(self) -> list[bytes]:
        self._pending = []
        return []

    def records(self) -> list[PreparedRecord]:
        return [PreparedRecord(_PAIR.unpack(txid), pid, key, op, value, new_version,
                               _PAIR.unpack(ts))
                for txid, pid, key, op, value, new_version, ts in self._conn.execute(
                    "SELECT txid, pid, key, op, value, new_version, ts FROM prepared")]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._conn.close()


#: What group commit flushes: a partition file, or the brick's file of prepared votes.
_Batch = PartitionStore | PreparedLog


class Storage:
    """All partition replicas of one brick, in ``data_dir``, behind one LRU read cache.

    A partition file found in ``data_dir`` is listed by :meth:`partitions` and opened on
    first use.  ``read``/``write`` of a partition that is neither open nor on disk raise
    ``KeyError``: the caller checks the map first.
    """

    def __init__(self, data_dir: str | Path, clock: IReactorTime, durability: Durability = "disk",
                 cache_entries: int = 100_000, memory_flush_s: float = 1.0,
                 commit_window_s: float = 0.0) -> None:
        if durability not in _SYNCHRONOUS:
            raise ValueError(f"unknown durability {durability!r}")
        if cache_entries < 0 or memory_flush_s <= 0:
            raise ValueError("cache_entries must be >= 0 and memory_flush_s > 0")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.durability: Durability = durability
        self._clock = clock
        self._memory = durability == "memory"
        self._delay = memory_flush_s if self._memory else 0.0
        # Under load, commit at most once per window so that batches grow with load;
        # when idle (no commit within the window) the next turn commits, as before.
        self._window = commit_window_s
        self._last_flush = float("-inf")
        self._cache_entries = cache_entries
        self._cache: OrderedDict[tuple[str, bytes], ReadResult] | None = (
            OrderedDict() if cache_entries else None)
        self._stores: dict[str, PartitionStore] = {}
        self._known: set[str] = {
            f.name[: -len(_SUFFIX)] for f in self.data_dir.glob("p*" + _SUFFIX)
            if _PID_RE.match(f.name[: -len(_SUFFIX)])}
        self._dirty: dict[_Batch, None] = {}  # insertion-ordered set
        self._waiting: list[tuple[_Batch, Deferred[None]]] = []
        self._prepared_log = PreparedLog(self.data_dir / PREPARED_FILE, durability)
        self._flush_call: IDelayedCall | None = None
        self.stats: dict[str, int] = dict.fromkeys(
            ("reads", "cache_hits", "writes", "commits", "committed_rows", "commit_failures"), 0)

    # -- partitions --------------------------------------------------------------------

    def _path(self, pid: str) -> Path:
        return self.data_dir / (pid + _SUFFIX)

    def open_partition(self, pid: str) -> PartitionStore:
        """Create the partition's file, or open it; idempotent."""
        store = self._stores.get(pid)
        if store is None:
            store = PartitionStore(self._path(validate_pid(pid)), pid, self.durability)
            self._stores[pid] = store
            self._known.add(pid)
        return store

    def _store(self, pid: str) -> PartitionStore:
        store = self._stores.get(pid)
        if store is not None:
            return store
        if pid not in self._known:
            raise KeyError(pid)
        return self.open_partition(pid)

    def has_partition(self, pid: str) -> bool:
        return pid in self._known

    def partitions(self) -> list[str]:
        """Partitions held (open or on disk), sorted by depth then prefix."""
        return sorted(self._known, key=lambda p: tuple(int(x) for x in p[1:].split(".")))

    def drop_partition(self, pid: str) -> None:
        """Close and delete the partition's files (incl. -wal/-shm).  Its writes still
        waiting for a commit errback with ``NotServing``; dropping an unknown one is a no-op."""
        validate_pid(pid)
        self._detach(pid, "dropped")
        self._known.discard(pid)
        path = self._path(pid)
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        if path.exists():
            # Renamed first, so the partition is gone at once; freed a few MB at a time.
            trash = path.with_name(path.name + ".dropped")
            os.replace(path, trash)
            discard_gradually(trash, self._clock)

    def _detach(self, pid: str, why: str) -> None:
        """Close the partition's store if open, forget its cache entries, and errback its
        writes still waiting for a commit with ``NotServing`` (the file stays)."""
        store = self._stores.pop(pid, None)
        if store is not None:
            self._dirty.pop(store, None)
            mine = [d for s, d in self._waiting if s is store]
            self._waiting = [(s, d) for s, d in self._waiting if s is not store]
            store.close()
            if self._cache is not None:
                for ck in [ck for ck in self._cache if ck[0] == pid]:
                    del self._cache[ck]
            for d in mine:
                d.errback(NotServing(f"partition {pid} was {why}"))

    def partition_path(self, pid: str) -> Path:
        """The partition's SQLite file (recovery snapshots it from another connection)."""
        return self._path(validate_pid(pid))

    def replace_partition(self, pid: str, new_file: Path) -> PartitionStore:
        """Install ``new_file``, a complete partition file (recovery's received snapshot,
        DESIGN §7), as this brick's replica of ``pid``, and reopen it.

        The file is checked first (an SQLite file of schema version <= ours holding
        ``pid``), so a bad file raises ValueError with the old replica untouched.  Then the
        old store is closed (its waiting writes errback ``NotServing``, its cache entries
        go), its -wal/-shm are removed (a stale WAL would be replayed onto the new file and
        corrupt it), and ``new_file`` is renamed over the replica atomically, the
        directory fsynced so that the rename survives a crash.  If the rename fails, the
        old replica is reopened and the error re-raised.
        """
        path = self.partition_path(pid)
        _check_partition_file(Path(new_file), pid)
        self._detach(pid, "replaced by a copy")
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        try:
            os.replace(new_file, path)
        except OSError:
            if path.exists():
                self.open_partition(pid)
            raise
        _fsync_dir(self.data_dir)
        return self.open_partition(pid)

    def apply_rows(self, pid: str, rows: Sequence[Row]) -> int:
        """Apply copied rows to the replica of ``pid`` (see
        :meth:`PartitionStore.apply_rows`) and drop their keys from the read cache."""
        n = self._store(pid).apply_rows(rows)
        if self._cache is not None:
            for row in rows:
                self._cache.pop((pid, row[0]), None)
        return n

    # -- hot path ----------------------------------------------------------------------

    def read(self, pid: str, key: bytes) -> ReadResult:
        """Current state of ``key`` (a staged, uncommitted write may already show)."""
        stats = self.stats
        stats["reads"] += 1
        cache = self._cache
        if cache is None:
            return self._store(pid).read(key)
        ck = (pid, key)
        res = cache.get(ck)
        if res is not None:
            cache.move_to_end(ck)
            stats["cache_hits"] += 1
            return res
        res = self._store(pid).read(key)
        cache[ck] = res
        if len(cache) > self._cache_entries:
            cache.popitem(last=False)
        return res

    def write(self, pid: str, key: bytes, value: bytes | None, version: int) -> Deferred[None]:
        """Stage ``key = value`` (None: tombstone) at ``version`` with lsn = last_lsn + 1.

        Readable at once.  The Deferred fires once durable per the mode (memory: now;
        disk/fsync: after the batch's commit) or errbacks with the commit's error.
        Raises ValueError if ``version`` is not above the stored one: versions never go
        back, and the 2PC layer always writes current + 1.
        """
        store = self._store(pid)
        cache = self._cache
        ck = (pid, key)
        cur = cache.get(ck) if cache is not None else None
        if cur is None:
            cur = store.read(key)
        if version <= cur.version:
            raise ValueError(f"version {version} of key {key!r} in {pid} does not exceed {cur.version}")
        res = ReadResult(value, version)
        store._stage(key, res)
        if cache is not None:
            cache[ck] = res
            cache.move_to_end(ck)
            if len(cache) > self._cache_entries:
                cache.popitem(last=False)
        self.stats["writes"] += 1
        return self._enqueue(store)

    def _enqueue(self, store: _Batch) -> Deferred[None]:
        """Mark ``store`` dirty; a Deferred that fires once its batch is durable."""
        self._dirty[store] = None
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(self._next_delay(), self._on_timer)
        if self._memory:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append((store, d))
        return d

    # -- prepared transactions -------------------------------------------------------

    def prepare(self, pid: str, txid: TxnId, key: bytes, op: str, value: bytes | None,
                new_version: int, ts: tuple[int, int]) -> Deferred[None]:
        """Record a YES vote; fires once the record is durable (memory mode: at once)."""
        self._store(pid)    # the partition must exist
        log_ = self._prepared_log
        log_._pending.append((_SQL_PREP_ADD, (_pack_pair(txid), pid, key, op, value,
                                              new_version, _pack_pair(ts))))
        return self._enqueue(log_)

    def forget_prepared(self, txid: TxnId) -> None:
        """Drop a record once its transaction's outcome is durable (or it aborted).
        Nobody waits: a record that survives a crash is resolved again on restart."""
        self._prepared_log._pending.append((_SQL_PREP_DEL, (_pack_pair(txid),)))
        self._enqueue(self._prepared_log).addErrback(lambda _: None)

    def prepared(self) -> list[PreparedRecord]:
        """Every recorded YES vote (used at start, before serving)."""
        return self._prepared_log.records()

    # -- commits -----------------------------------------------------------------------

    def _next_delay(self) -> float:
        if self._memory or self._window <= 0:
            return self._delay
        since = self._clock.seconds() - self._last_flush
        return 0.0 if since >= self._window else self._window - since

    def _on_timer(self) -> None:
        self._flush_call = None
        self._flush_now()

    def _flush_now(self) -> list[BaseException]:
        """Commit every dirty partition, then fire the waiting Deferreds in write order."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        self._last_flush = self._clock.seconds()
        dirty, self._dirty = self._dirty, {}
        waiting, self._waiting = self._waiting, []
        failed: dict[_Batch, BaseException] = {}
        for store in dirty:
            try:
                n = store._commit()
            except Exception as e:  # noqa: BLE001 -- any error must reach the batch's Deferreds
                failed[store] = e
                self.stats["commit_failures"] += 1
                log.error("commit of {count} writes to {partition} failed: {error!r}",
                          count=len(store._pending), partition=store.partition_id, error=e)
                if self._memory:  # acknowledged already: keep them and retry later
                    self._dirty[store] = None
                else:
                    self._forget(store)
            else:
                self.stats["commits"] += 1
                self.stats["committed_rows"] += n
        if self._dirty and self._flush_call is None:
            self._flush_call = self._clock.callLater(self._delay, self._on_timer)
        for store, d in waiting:
            err = failed.get(store)
            if err is None:
                d.callback(None)
            else:
                d.errback(Failure(err))
        return list(failed.values())

    def _forget(self, store: _Batch) -> None:
        keys = store._discard()
        if self._cache is not None:
            pid = store.partition_id
            for key in keys:
                self._cache.pop((pid, key), None)

    def flush(self) -> Deferred[None]:
        """Commit everything pending now.  Errbacks with the first commit error, if any."""
        errors = self._flush_now()
        return fail(errors[0]) if errors else succeed(None)

    def close(self) -> None:
        """Flush synchronously and close every file.  In memory mode, writes whose flush
        fails here are lost (logged)."""
        self._flush_now()
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        for store in self._dirty:
            log.critical("closing {partition} with {count} unflushed writes: they are lost",
                         partition=store.partition_id, count=len(store._pending))
        self._dirty = {}
        for store in self._stores.values():
            store.close()
        self._stores.clear()
        self._prepared_log.close()
