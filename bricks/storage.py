"""Brick storage: one SQLite file per partition replica (DESIGN §9, durability in §4).

The file is the unit of copy (recovery and moves ship whole files, then deltas by log
position), so each partition replica lives in its own file ``<pid>.sqlite`` in the brick's
data directory:

- ``kv(key BLOB PRIMARY KEY, value BLOB, version INTEGER NOT NULL, lsn INTEGER NOT NULL)``:
  ``value`` NULL is a tombstone, kept so that versions never go back across ``remove``
  (``compare_and_put`` stays safe).  ``lsn`` is the partition's log position of the row's
  last write; an index on it serves delta copies (:meth:`PartitionStore.rows_since`).
- ``meta(name TEXT PRIMARY KEY, value)``: ``schema_version``, ``partition``, ``last_lsn``,
  and the change stream's ``lineage``, ``ancestors`` and ``clean`` (0 while open).
- ``lsn_times(lsn, t)``: about one ``lsn → wall time`` sample a second (the change
  stream translates positions of other files with it).

Besides the partition files, the brick's transaction log (:mod:`dds.bricks.txlog`) holds
the 2PC records: a YES vote is durable there before it is sent, and a committed write
before it is acknowledged.  One ``os.write`` per group commit makes every vote and write
of a reactor turn durable at once, for all partitions.  A partition file gets its rows
later, in large batches (every ``SQLITE_FLUSH_S``, or sooner when many are staged); a
brick that dies before that redoes them from the log when it starts.

**One thread.**  Every SQLite call runs synchronously on the reactor thread, except WAL
checkpoints: given a ``run_in_thread``, the Storage turns SQLite's automatic checkpoint
off and runs a PASSIVE checkpoint of each file it committed to in a worker thread, after
each sweep (the automatic one, inside a COMMIT, fsyncs and held a brick's writes for
100-200 ms).

**Group commit.**  The first write or vote of a reactor turn schedules
``clock.callLater(0, ...)`` (under load at most one per ``commit_window_s``); that flush
appends everything recorded since the last one to the log in one write, and then fires
the Deferreds in the order the writes were issued.  If the append fails, nothing of it
counts: its staged writes are dropped again, its votes are not recorded, and each of its
Deferreds errbacks.

**Staged writes are visible.**  A write is applied to an in-memory overlay (and the read
cache) at once, so a read issued before it is durable may already return it.  That is
safe for the 2PC participant, which writes only on COMMIT, when the outcome is decided,
and holds the key's lock until the write is durable.  The overlay keeps the rows until
their partition file has them; a failed commit of a partition file is retried (the rows
are durable in the log).

In ``memory`` mode a write is acknowledged right after the in-memory apply; log and
partition files are written within ``memory_flush_s``.  A failed flush is retried (the
writes were acknowledged, so memory stays the truth, DESIGN §4); they are lost only if
the process dies first.
"""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds.bricks.atomicfile import fsync_dir
from dds.bricks.discard import discard_gradually
from dds.bricks.logreplay import (PREPARED_FILE, PreparedRecord, damaged_partitions,
                                  prepared_record, read_old_prepared, replayable,
                                  vote_record)
from dds.bricks.needscopy import QUARANTINE_DIR, mark
from dds.bricks.partstore import (PID_RE, SUFFIX, SYNCHRONOUS, Durability,
                                  PartitionStore, ReadResult, Row, check_partition_file,
                                  checkpoint, validate_pid)
from dds.bricks.rowcheck import ChecksumMismatch, row_checksum
from dds.bricks.txlog import SETTLED, VOTE, WRITE, Record, TxnLog
from dds.errors import NotServing
from dds.ratelimit import LogLimiter

log = Logger()

#: Partition files get their staged rows at least this often (disk and fsync modes) ...
SQLITE_FLUSH_S = 1.0
#: ... or as soon as this many rows are staged.
SQLITE_FLUSH_ROWS = 20_000
#: A sweep commits at most this many rows of a file per reactor turn: upserts into a large
#: table cost ~20 µs a row (more on a loaded machine), and a second of one hot partition's
#: rows (5,000 under ``bench move``) held the reactor for 100-200 ms in one go; 500 rows
#: a turn still left writers' longest pause at 69-77 ms with nothing else going on, 200
#: rows at 29-52 ms (docs/performance.md, "Move").
SWEEP_ROWS = 200
#: The log starts a new generation (after the partition files have every row) past this.
LOG_ROTATE_BYTES = 16 << 20

TxnId = tuple[int, int]




#: Called once a write or vote is durable: ``done(arg, None)``, or ``done(arg, error)``.
Done = Callable[[Any, "BaseException | None"], None]


def _nothing() -> None:
    pass


def _fire(d: Deferred[None], error: BaseException | None) -> None:
    if error is None:
        d.callback(None)
    else:
        d.errback(Failure(error))


class Storage:
    """All partition replicas of one brick, in ``data_dir``, behind one LRU read cache.

    A partition file found in ``data_dir`` is listed by :meth:`partitions` and opened on
    first use.  ``read``/``write`` of a partition that is neither open nor on disk raise
    ``KeyError``: the caller checks the map first.
    """

    def __init__(self, data_dir: str | Path, clock: IReactorTime, durability: Durability = "disk",
                 cache_entries: int = 100_000, memory_flush_s: float = 1.0,
                 commit_window_s: float = 0.0,
                 run_in_thread: Callable[..., Deferred[Any]] | None = None) -> None:
        if durability not in SYNCHRONOUS:
            raise ValueError(f"unknown durability {durability!r}")
        if cache_entries < 0 or memory_flush_s <= 0:
            raise ValueError("cache_entries must be >= 0 and memory_flush_s > 0")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.durability: Durability = durability
        self._clock = clock
        self._memory = durability == "memory"
        self._delay = memory_flush_s if self._memory else 0.0
        self._sqlite_delay = memory_flush_s if self._memory else SQLITE_FLUSH_S
        # Under load, commit at most once per window so that batches grow with load;
        # when idle (no commit within the window) the next turn commits, as before.
        # The window only pays off where each flush costs an fsync: in ``disk`` mode an
        # append is one write(), and waiting for a window only adds latency.
        self._window = commit_window_s if durability == "fsync" else 0.0
        self._last_flush = float("-inf")
        self._cache_entries = cache_entries
        #: Runs WAL checkpoints off the reactor thread; None: SQLite checkpoints itself
        #: inside commits (unit tests on a ``Clock``).
        self._run_in_thread = run_in_thread
        # Keyed by the store's ``cache_tag``, not the partition id: a closed store's
        # entries can never be hit again (a reopened replica gets a new tag) and age out of
        # the LRU, so closing a partition does not walk the whole cache on the reactor
        # thread.  A string, not the store itself: the cyclic collector stops tracking a
        # tuple of strings and bytes, and the cache holds 100,000 of them.
        self._cache: OrderedDict[tuple[str, bytes], ReadResult] | None = (
            OrderedDict() if cache_entries else None)
        self._stores: dict[str, PartitionStore] = {}
        self._known: set[str] = {
            f.name[: -len(SUFFIX)] for f in self.data_dir.glob("p*" + SUFFIX)
            if PID_RE.match(f.name[: -len(SUFFIX)])}
        #: Stores with staged rows their file does not have yet (an insertion-ordered set).
        self._dirty: dict[PartitionStore, None] = {}
        self._staged = 0
        #: Who waits for the next log append: ``(store, fn, arg)`` for a store's write, or
        #: a vote (store None); ``fn(arg, None)`` once durable, ``fn(arg, error)`` if not.
        self._waiting: list[tuple[PartitionStore | None, Done, Any]] = []
        #: Records for the next append; the votes they settle; each store's first row
        #: (log position) that the log does not have yet.
        self._records: list[Record] = []
        self._settling: list[TxnId] = []
        self._unlogged: dict[PartitionStore, int] = {}
        #: The vote record of every undecided transaction (carried into each generation).
        self._live: dict[TxnId, Record] = {}
        self._flush_call: IDelayedCall | None = None
        self._sqlite_call: IDelayedCall | None = None
        #: Called after the completions of a group commit have run (the brick sends the
        #: replies they produced at once: ``dds.rpc.flush_sends``).
        self.after_completions: Callable[[], None] = _nothing
        #: Called with (partition, key) whenever a read finds a row failing its checksum
        #: (the brick counts it and repairs the key: ``bricks/selfrepair.py``).
        self.on_damage: Callable[[str, bytes], None] = lambda pid, key: None
        #: Called with a partition opened with rows lacking a checksum (a file of the
        #: schema before them): the brick's checksum walk gives them one.
        self.on_missing_checksums: Callable[[str], None] = lambda pid: None
        #: Records of the transaction log found damaged at start (where, why): the
        #: brick re-syncs its replicas before serving them.
        self.log_damage: list[str] = []
        self.stats: dict[str, int] = dict.fromkeys(
            ("reads", "cache_hits", "writes", "commits", "committed_rows", "commit_failures",
             "log_writes", "log_failures", "log_rotations", "checkpoint_failures"), 0)
        self._txlog = TxnLog(self.data_dir, fsync=durability == "fsync")
        # A full disk fails every append and commit until space returns: a few lines a
        # window, not one per group commit (issue 13).
        self._failures = LogLimiter(clock, log, per_window=5, window_s=10.0)
        # Files of dropped replicas whose gradual deletion a stop interrupted.
        for left in sorted(self.data_dir.glob("p*" + SUFFIX + "*.dropped")):
            discard_gradually(left, self._clock, run_in_thread=self._run_in_thread)
        try:
            self._replay()
        except BaseException:
            self._txlog.close()
            for store in self._stores.values():
                store.close()
            raise

    # -- partitions --------------------------------------------------------------------

    def _path(self, pid: str) -> Path:
        return self.data_dir / (pid + SUFFIX)

    def open_partition(self, pid: str) -> PartitionStore:
        """Create the partition's file, or open it; idempotent."""
        store = self._stores.get(pid)
        if store is None:
            store = PartitionStore(self._path(validate_pid(pid)), pid, self.durability,
                                   manual_checkpoints=self._run_in_thread is not None)
            store.wall = self._clock.seconds
            self._stores[pid] = store
            self._known.add(pid)
            if store.checksums_missing:
                self.on_missing_checksums(pid)
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
        path = self._path(pid)
        # Closing the file deletes its WAL, which a long read (a move's snapshot) may have
        # grown to tens of MB, freed in one go: 70-160 ms of this thread on a busy disk.
        # A second name keeps the blocks for discard_gradually.
        wal_trash = self._keep_blocks(Path(str(path) + "-wal"))
        self._detach(pid, "dropped", discard=True)
        self._known.discard(pid)
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        trash = [wal_trash] if wal_trash is not None else []
        if path.exists():
            # Renamed first, so the partition is gone at once; freed a few MB at a time.
            trash.append(path.with_name(path.name + ".dropped"))
            os.replace(path, trash[-1])
        for file in trash:
            discard_gradually(file, self._clock, run_in_thread=self._run_in_thread)

    def quarantine_partition(self, pid: str, dest: Path) -> None:
        """Close the partition and move its file to ``dest`` instead of deleting it (a
        replica no record lists any more, issue 13).  Every durable row is committed into
        the file first and closing checkpoints the WAL into it, so ``dest`` alone holds the
        replica; a WAL left over (the checkpoint could not finish) moves along with it.
        Its writes still waiting for a commit errback with ``NotServing``."""
        path = self.partition_path(pid)
        self._detach(pid, "quarantined")
        self._known.discard(pid)
        dest.parent.mkdir(parents=True, exist_ok=True)
        wal = Path(str(path) + "-wal")
        if wal.exists() and path.exists():
            # Another reader kept the WAL (closing checkpoints it only as the last one).
            conn = sqlite3.connect(str(path))
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError:
                pass        # an unreadable file (bricks/damage.py): its WAL goes along
            finally:
                conn.close()
        if wal.exists():
            os.replace(wal, Path(str(dest) + "-wal"))
        Path(str(path) + "-shm").unlink(missing_ok=True)
        if path.exists():
            os.replace(path, dest)

    @staticmethod
    def _keep_blocks(path: Path) -> Path | None:
        """A second name (``<name>.dropped``) for ``path``'s file, if it exists, so that
        deleting ``path`` frees nothing; None if there is no file or no link was made."""
        trash = path.with_name(path.name + ".dropped")
        try:
            trash.unlink(missing_ok=True)
            os.link(path, trash)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warn("cannot link {path} for gradual deletion: {error}", path=str(path),
                     error=e.strerror or str(e))
            return None
        return trash

    def _detach(self, pid: str, why: str, *, discard: bool = False) -> None:
        """Close the partition's store if open (its cache entries can no longer be hit and
        age out) and errback its writes still waiting for a commit with ``NotServing`` (the
        file stays).  ``discard``: the file is deleted next."""
        store = self._stores.pop(pid, None)
        if store is not None:
            self._dirty.pop(store, None)
            mine = [(fn, arg) for s, fn, arg in self._waiting if s is store]
            self._waiting = [w for w in self._waiting if w[0] is not store]
            store.close(discard=discard)
            for fn, arg in mine:
                fn(arg, NotServing(f"partition {pid} was {why}"))

    def partition_path(self, pid: str) -> Path:
        """The partition's SQLite file, for readers on another connection (a snapshot, a
        scrub, a split).  The file is first given every staged row whose log append is
        done, so it holds every durable write but those of the current reactor turn."""
        store = self._stores.get(pid)
        if store is not None and store._pending:
            try:
                n = store._commit(self._unlogged.get(store))
            except Exception as e:  # noqa: BLE001 -- kept staged, committed later
                self.stats["commit_failures"] += 1
                self._failures.error("commit of {partition} failed: {error!r}",
                                     partition=pid, error=e)
            else:
                if n:
                    self.stats["commits"] += 1
                    self.stats["committed_rows"] += n
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
        check_partition_file(Path(new_file), pid)
        self._detach(pid, "replaced by a copy")
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        try:
            os.replace(new_file, path)
        except OSError:
            if path.exists():
                self.open_partition(pid)
            raise
        fsync_dir(self.data_dir)
        store = self.open_partition(pid)
        store.installed()       # a new lineage: its lsns go on from another file's
        return store

    def apply_rows(self, pid: str, rows: Sequence[Row]) -> int:
        """Apply copied rows to the replica of ``pid`` (see
        :meth:`PartitionStore.apply_rows`) and drop their keys from the read cache.  The
        durable rows still staged go to the file first (``partition_path``)."""
        self.partition_path(pid)
        store = self._store(pid)
        n = store.apply_rows(rows)
        if self._cache is not None:
            for row in rows:
                self._cache.pop((store.cache_tag, row[0]), None)
        return n

    def dr_apply(self, pid: str, rows: Sequence[tuple[bytes, bytes | None, int]],
                 marks: dict[str, list[Any]]) -> tuple[int, int]:
        """A DR site's rows and marks (``PartitionStore.dr_apply``): (written, skipped).
        One SQLite transaction on the partition file, durable as the brick's mode makes
        a commit, taking this file's next lsns: the change stream, deltas and copies
        see the rows as any other write.  Rows staged before it go to the file first
        (a DR site takes no client write; a self-repair may have staged one)."""
        store = self._store(pid)
        if store._pending:
            self.partition_path(pid)
            if store._pending:
                self._flush_now(True)
            if store._pending:
                raise NotServing(f"{pid}: staged writes could not be committed; "
                                 "try again")
        written, skipped = store.dr_apply(rows, marks)
        if self._cache is not None:
            for key in written:
                self._cache.pop((store.cache_tag, key), None)
        if written:
            self.stats["commits"] += 1
            self.stats["committed_rows"] += len(written)
        self._checkpoint_some()
        return len(written), skipped

    # -- hot path ----------------------------------------------------------------------

    def read(self, pid: str, key: bytes) -> ReadResult:
        """Current state of ``key`` (a staged, uncommitted write may already show)."""
        stats = self.stats
        stats["reads"] += 1
        store = self._stores.get(pid) or self._store(pid)
        cache = self._cache
        if cache is None:
            return self._verified_read(store, pid, key)
        ck = (store.cache_tag, key)
        res = cache.get(ck)
        if res is not None:
            cache.move_to_end(ck)
            stats["cache_hits"] += 1
            return res
        res = self._verified_read(store, pid, key)
        cache[ck] = res
        if len(cache) > self._cache_entries:
            cache.popitem(last=False)
        return res

    def _verified_read(self, store: PartitionStore, pid: str, key: bytes) -> ReadResult:
        """``store.read``; a row failing its checksum is reported (``on_damage``) and
        raises ChecksumMismatch (a ``ReplicaDamaged``): its bytes never leave."""
        try:
            return store.read(key)
        except ChecksumMismatch:
            self.on_damage(pid, key)
            raise

    def file_row_damaged(self, pid: str, key: bytes) -> bool:
        """Whether the partition file's row of ``key`` fails its checksum and no newer
        write of it is staged (the background walk's re-check, bypassing the cache: a
        cached copy may hide a row damaged on disk since).  A damaged row's cache entry
        is dropped, so the next read finds the damage too."""
        store = self._store(pid)
        res, damaged = store.read_unverified(key)
        if damaged and self._cache is not None:
            self._cache.pop((store.cache_tag, key), None)
        return damaged

    def repair_row(self, pid: str, key: bytes, value: bytes | None, version: int,
                   checksum: int) -> Deferred[None]:
        """Replace a damaged row with a healthy replica's (``bricks/selfrepair.py``, which
        holds the key's lock and decides that this is safe): staged, logged and
        committed like a write, but without the rule that versions only go up (the
        damaged row's version cannot be trusted).  Raises ValueError if the checksum
        does not match."""
        if row_checksum(key, version, value) != checksum:
            raise ValueError(f"repair row of key {key[:64]!r} in {pid} fails its checksum")
        store = self._store(pid)
        return self._enqueue(self._stage_row(store, pid, key, ReadResult(value, version),
                                             None, checksum))

    def write(self, pid: str, key: bytes, value: bytes | None, version: int,
              txid: TxnId | None = None, checksum: int | None = None) -> Deferred[None]:
        """Stage ``key = value`` (None: tombstone) at ``version`` with lsn = last_lsn + 1;
        ``txid``: the transaction whose COMMIT this is (its vote is settled with it).

        Readable at once.  The Deferred fires once durable per the mode (memory: now;
        disk/fsync: after the log append) or errbacks with the append's error.
        Raises ValueError if ``version`` is not above the stored one: versions never go
        back, and the 2PC layer always writes current + 1.
        """
        return self._enqueue(self._stage_write(pid, key, value, version, txid, checksum))

    def write_then(self, pid: str, key: bytes, value: bytes | None, version: int,
                   txid: TxnId | None, done: Done, arg: Any,
                   checksum: int | None = None) -> bool:
        """``write`` without a Deferred, for the participant's hot path: True if
        ``done(arg, error or None)`` will be called once the write is durable; False if
        it is durable already (memory mode) and ``done`` is not called.  ``checksum``:
        the row's, computed when it was prepared (None: computed here)."""
        return self._enqueue_then(self._stage_write(pid, key, value, version, txid,
                                                    checksum), done, arg)

    def _stage_write(self, pid: str, key: bytes, value: bytes | None, version: int,
                     txid: TxnId | None, checksum: int | None) -> PartitionStore:
        store = self._store(pid)
        cache = self._cache
        cur = cache.get((store.cache_tag, key)) if cache is not None else None
        if cur is None:
            # Unverified: this write replaces the row whatever it holds.
            cur = store.read_unverified(key)[0]
        if version <= cur.version:
            raise ValueError(f"version {version} of key {key!r} in {pid} does not exceed {cur.version}")
        if checksum is None:
            checksum = row_checksum(key, version, value)
        return self._stage_row(store, pid, key, ReadResult(value, version), txid, checksum)

    def _stage_row(self, store: PartitionStore, pid: str, key: bytes, res: ReadResult,
                   txid: TxnId | None, checksum: int) -> PartitionStore:
        cache = self._cache
        ck = (store.cache_tag, key)
        if store not in self._unlogged:
            self._unlogged[store] = store._last_lsn + 1
        store._stage(key, res, checksum)
        self._records.append((WRITE, txid, pid, key, res.value, res.version, checksum))
        if txid is not None:
            self._settling.append(txid)
        if cache is not None:
            cache[ck] = res
            cache.move_to_end(ck)
            if len(cache) > self._cache_entries:
                cache.popitem(last=False)
        self.stats["writes"] += 1
        self._mark_dirty(store)
        return store

    def _mark_dirty(self, store: PartitionStore) -> None:
        self._dirty[store] = None
        self._staged += 1
        if self._sqlite_call is None:
            delay = 0.0 if self._staged >= SQLITE_FLUSH_ROWS else self._sqlite_delay
            self._sqlite_call = self._clock.callLater(delay, self._on_sqlite_timer)
        elif self._staged == SQLITE_FLUSH_ROWS:
            self._sqlite_call.reset(0)

    def _enqueue(self, store: PartitionStore | None) -> Deferred[None]:
        """Schedule the log append; a Deferred that fires once it is durable."""
        d: Deferred[None] = Deferred()
        if not self._enqueue_then(store, _fire, d):
            d.callback(None)
        return d

    def _enqueue_then(self, store: PartitionStore | None, done: Done, arg: Any) -> bool:
        """Schedule the log append; True if ``done(arg, ...)`` waits for it, False if
        what was recorded counts as durable already (memory mode)."""
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(self._next_delay(), self._on_timer)
        if self._memory:
            return False
        self._waiting.append((store, done, arg))
        return True

    # -- prepared transactions -------------------------------------------------------

    def prepare(self, pid: str, txid: TxnId, key: bytes, op: str, value: bytes | None,
                new_version: int, ts: tuple[int, int], checksum: int | None = None,
                participants: tuple[str, ...] = ()) -> Deferred[None]:
        """Record a YES vote; fires once the record is durable (memory mode: at once).
        ``checksum``: the prepared row's (None: a record without one)."""
        self._record_vote(pid, txid, key, op, value, new_version, ts, checksum,
                          participants)
        return self._enqueue(None)

    def prepare_then(self, pid: str, txid: TxnId, key: bytes, op: str, value: bytes | None,
                     new_version: int, ts: tuple[int, int], done: Done, arg: Any,
                     checksum: int | None = None,
                     participants: tuple[str, ...] = ()) -> bool:
        """``prepare`` without a Deferred (see ``write_then``)."""
        self._record_vote(pid, txid, key, op, value, new_version, ts, checksum,
                          participants)
        return self._enqueue_then(None, done, arg)

    def _record_vote(self, pid: str, txid: TxnId, key: bytes, op: str, value: bytes | None,
                     new_version: int, ts: tuple[int, int], checksum: int | None,
                     participants: tuple[str, ...]) -> None:
        self._store(pid)    # the partition must exist
        vote = (VOTE, txid, pid, key, op, value, new_version, ts, checksum, participants)
        self._records.append(vote)
        self._live[txid] = vote

    def forget_prepared(self, txid: TxnId) -> None:
        """Settle a vote without a write (the transaction aborted, or its replica is being
        replaced).  Nobody waits: a vote that survives a crash is resolved again on
        restart.  A COMMIT's write settles its vote itself (``write(..., txid)``)."""
        if txid in self._live:
            self._records.append((SETTLED, txid))
            self._settling.append(txid)
            if self._flush_call is None:
                self._flush_call = self._clock.callLater(self._next_delay(), self._on_timer)

    def prepared(self) -> list[PreparedRecord]:
        """Every recorded YES vote not settled yet (used at start, before serving)."""
        return [prepared_record(v) for v in self._live.values()]

    def _replay(self) -> None:
        """At start: redo the committed writes the partition files may miss, take up the
        undecided votes, and start a new log generation holding only those."""
        votes: dict[TxnId, Record] = {}
        #: Every vote's partition, settled or not: what a damaged txid may point to.
        vote_pids: dict[TxnId, str] = {}
        redo: list[Record] = []
        skipped: list[Record] = []
        for rec in self._txlog.records():
            problem = replayable(rec)
            if problem is not None:
                self.log_damage.append(problem)
                skipped.append(rec)
                log.error("transaction log: skipping a record: {problem}", problem=problem)
                continue
            kind = rec[0]
            if kind == VOTE:
                votes[tuple(rec[1])] = rec
                vote_pids[tuple(rec[1])] = rec[2]
            elif kind == WRITE:
                if rec[1] is not None:
                    votes.pop(tuple(rec[1]), None)
                redo.append(rec)
            elif kind == SETTLED:
                votes.pop(tuple(rec[1]), None)
        old = self.data_dir / PREPARED_FILE
        if old.exists():
            for r in read_old_prepared(old):
                votes.setdefault(r.txid, vote_record(r))
        redone = 0
        for _kind, _txid, pid, key, value, version, *rest in redo:
            if pid not in self._known:
                continue    # the replica was dropped since (moved away, split, merged)
            store = self._store(pid)
            cur, damaged = store.read_unverified(key)
            # Never over a damaged row: its version cannot be trusted, and the log's
            # record may be older than what the file held (a copy's rows bypass the
            # log).  The self-repair asks the RG instead (``bricks/selfrepair.py``).
            if not damaged and cur.version < version:
                checksum = rest[0] if rest and rest[0] is not None else row_checksum(
                    key, version, value)
                store._stage(key, ReadResult(value, version), checksum)
                self._dirty[store] = None
                redone += 1
        errors = self._commit_files()
        if errors:
            raise errors[0]
        if redone:
            log.warn("redid {n} committed writes from the transaction log", n=redone)
        self.log_damage += self._txlog.damaged
        if self.log_damage:
            self._mark_for_copy(
                damaged_partitions(set(self._known), self._txlog.damaged_batches, skipped,
                                   vote_pids), len(self.log_damage))
        for v in votes.values():
            rec = prepared_record(v)
            self._live[rec.txid] = vote_record(rec)
        self._retire(self._txlog.retired + self._txlog.rotate(self._live.values()))
        for suffix in ("", "-wal", "-shm"):
            Path(str(old) + suffix).unlink(missing_ok=True)

    def _mark_for_copy(self, pids: set[str], damaged: int) -> None:
        """The log lost records of ``pids``' writes or YES votes, so none of those
        replicas may be trusted until its RG copied it again.  The markers are durable
        before the damaged log is retired below, or a second restart would find a clean
        log and serve what it holds (``bricks/needscopy.py``)."""
        why = f"the transaction log was damaged ({damaged} record(s) unreadable)"
        qdir = self.data_dir / QUARANTINE_DIR
        for pid in sorted(pids):
            mark(qdir, pid, why)
        log.error("transaction log damaged ({n} records): {count} of the {total} replicas "
                  "here ({pids}) are copied again from their RGs before they serve",
                  n=damaged, count=len(pids), total=len(self._known), pids=sorted(pids))

    # -- commits -----------------------------------------------------------------------

    def _next_delay(self) -> float:
        if self._memory or self._window <= 0:
            return self._delay
        since = self._clock.seconds() - self._last_flush
        return 0.0 if since >= self._window else self._window - since

    def _on_timer(self) -> None:
        self._flush_call = None
        self._flush_now(self._memory)

    def _on_sqlite_timer(self) -> None:
        self._sqlite_call = None
        if self._memory:
            self._flush_now(True)
        else:
            self._commit_some()

    def _checkpoint_some(self) -> None:
        """Copy the WAL of every file committed to since its last checkpoint back into the
        file, in a worker thread, on a connection of its own (a PASSIVE checkpoint never
        blocks this thread's commits)."""
        run = self._run_in_thread
        if run is None:
            return
        for store in list(self._stores.values()):
            if store.uncheckpointed and not store.checkpointing and not store.closed:
                store.checkpointing = True
                store.uncheckpointed = 0
                d = run(checkpoint, store.path)
                d.addErrback(self._checkpoint_failed, store)
                d.addBoth(self._checkpointed, store)

    def _checkpointed(self, _: object, store: PartitionStore) -> None:
        # The next sweep comes at its time: sweeping at once after every checkpoint made
        # a loop of tiny commits and checkpoints that cost puts 20 % more CPU.
        store.checkpointing = False

    def _checkpoint_failed(self, failure: Failure, store: PartitionStore) -> None:
        store.uncheckpointed += 1     # try again after the next sweep
        self.stats["checkpoint_failures"] += 1
        log.warn("WAL checkpoint of {partition} failed: {error}",
                 partition=store.partition_id, error=failure.getErrorMessage())

    def _sweep_soon(self) -> None:
        if self._sqlite_call is None:
            self._sqlite_call = self._clock.callLater(0, self._on_sqlite_timer)
        elif self._sqlite_call.getTime() > self._clock.seconds():
            self._sqlite_call.reset(0)

    def _commit_some(self) -> None:
        """Commit up to ``SWEEP_ROWS`` logged rows of one partition file, and come back on
        the next reactor turn for more: a whole second of a brick's rows committed in one
        go held its reads and votes for 50-200 ms (measured under ``bench move``); a slice
        at a time holds them a few ms.  Rows staged since the last log append stay staged (their
        append could still fail).  At the end of a sweep the log rotates, if it is long."""
        for store in list(self._dirty):
            if store.closed or not store._pending:
                del self._dirty[store]
                continue
            if store.checkpointing:
                # Not while its checkpoint runs: a checkpoint that ends with every frame
                # copied lets the next commit start the WAL over.  Under steady writes a
                # commit always came first, and the WAL grew by every page written
                # (35-77 MB in a move's few seconds) until the file was closed.
                continue
            try:
                n = store._commit(self._unlogged.get(store), SWEEP_ROWS)
            except Exception as e:  # noqa: BLE001 -- kept staged and retried
                self.stats["commit_failures"] += 1
                self._failures.error("commit of {count} writes to {partition} failed: "
                                     "{error!r}", count=len(store._pending),
                                     partition=store.partition_id, error=e)
                continue
            if not store._pending:
                del self._dirty[store]
            if n:
                self._staged = max(0, self._staged - n)
                self.stats["commits"] += 1
                self.stats["committed_rows"] += n
                if self._sqlite_call is None:
                    self._sqlite_call = self._clock.callLater(0, self._on_sqlite_timer)
                return
        # Sweep done: what is left is newer than the log (or failed): the next timer.
        self._checkpoint_some()
        if self._txlog.size > LOG_ROTATE_BYTES:
            self._flush_now(True)
        elif self._dirty and self._sqlite_call is None:
            self._sqlite_call = self._clock.callLater(self._sqlite_delay,
                                                      self._on_sqlite_timer)

    def _flush_now(self, files: bool) -> list[BaseException]:
        """Append the recorded votes and writes to the log; with ``files``, also commit the
        staged rows to their partition files (and rotate the log when it is long).  Then
        fire the waiting Deferreds in write order."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        self._last_flush = self._clock.seconds()
        waiting, self._waiting = self._waiting, []
        error = self._append()
        errors = [error] if error is not None else []
        if not files and self._txlog.size > LOG_ROTATE_BYTES:
            self._sweep_soon()       # the files first (one per turn), then the rotation
        if files:
            errors += self._commit_files()
            if not self._dirty and not self._records and self._txlog.size > LOG_ROTATE_BYTES:
                self._rotate()
        for _store, done, arg in waiting:
            try:
                done(arg, error)
            except Exception:
                log.failure("a storage completion callback failed")
        if waiting:
            self.after_completions()
        return errors

    def _append(self) -> BaseException | None:
        """One log append of everything recorded; on failure nothing of it counts."""
        records = self._records
        if not records:
            return None
        self._records = []
        try:
            self._txlog.write(records)
        except OSError as e:
            self.stats["log_failures"] += 1
            self._failures.error("append of {count} records to the transaction log "
                                 "failed: {error!r}", count=len(records), error=e)
            if self._memory:    # acknowledged already: keep them and retry later
                self._records = records + self._records
                if self._flush_call is None:
                    self._flush_call = self._clock.callLater(self._delay, self._on_timer)
                return e
            self._undo(records)
            return e
        self.stats["log_writes"] += 1
        for store in self._unlogged:
            store._durable_lsn = store._last_lsn
        self._unlogged.clear()
        for txid in self._settling:
            self._live.pop(txid, None)
        self._settling = []
        return None

    def _undo(self, records: list[Record]) -> None:
        """The append of ``records`` failed: their writes were never durable (unstage
        them), their votes were never recorded; settlements without a write are kept
        for the next append (losing one would only make a restart resolve it again)."""
        for store, lsn in self._unlogged.items():
            if store.closed:
                continue
            keys = store._unstage_from(lsn)
            if not store._pending:
                self._dirty.pop(store, None)
            if self._cache is not None:
                for key in keys:
                    self._cache.pop((store.cache_tag, key), None)
        self._unlogged.clear()
        for rec in records:
            if rec[0] == VOTE:
                self._live.pop(rec[1], None)
        self._records = [rec for rec in records if rec[0] == SETTLED] + self._records
        settled = {rec[1] for rec in self._records}
        self._settling = [t for t in self._settling if t in settled]

    def _commit_files(self) -> list[BaseException]:
        """Commit every store's staged rows to its file (one transaction each).  A failed
        commit keeps its rows staged and is retried later: they are durable in the log."""
        if self._sqlite_call is not None:
            if self._sqlite_call.active():
                self._sqlite_call.cancel()
            self._sqlite_call = None
        dirty, self._dirty = self._dirty, {}
        self._staged = 0
        failed: list[BaseException] = []
        for store in dirty:
            if store.closed or not store._pending:
                continue
            try:
                n = store._commit()
            except Exception as e:  # noqa: BLE001 -- kept staged and retried
                failed.append(e)
                self.stats["commit_failures"] += 1
                self._failures.error("commit of {count} writes to {partition} failed: "
                                     "{error!r}", count=len(store._pending),
                                     partition=store.partition_id, error=e)
                self._dirty[store] = None
                self._staged += len(store._pending)
            else:
                self.stats["commits"] += 1
                self.stats["committed_rows"] += n
        if self._dirty and self._sqlite_call is None:
            self._sqlite_call = self._clock.callLater(self._sqlite_delay, self._on_sqlite_timer)
        return failed

    def _rotate(self) -> None:
        try:
            retired = self._txlog.rotate(self._live.values())
        except OSError as e:
            log.error("could not start a new transaction log generation: {error!r}", error=e)
        else:
            self.stats["log_rotations"] += 1
            self._retire(retired)

    def _retire(self, paths: list[Path]) -> None:
        """Free retired log files a few MB at a time (a large unlink stalls this disk)."""
        for path in paths:
            discard_gradually(path, self._clock, run_in_thread=self._run_in_thread)

    def flush(self, files: bool = True) -> Deferred[None]:
        """Make everything pending durable now, in the log and, with ``files``, in the
        partition files (for readers of the files on other connections: a scrub, a
        split).  Without it only the log is appended: enough for a delta, which serves
        staged rows up to the durable position (``PartitionStore.rows_since``), and it
        does not stall the reactor with a second of rows.  Errbacks with the first error,
        if any."""
        errors = self._flush_now(files)
        return fail(errors[0]) if errors else succeed(None)

    def close(self) -> None:
        """Flush synchronously and close every file.  Rows a partition file could not take
        stay in the log (disk/fsync: redone at the next start); in memory mode, writes
        the log could not take either are lost (logged)."""
        self._flush_now(True)
        for call in (self._flush_call, self._sqlite_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._sqlite_call = None
        if self._records:
            log.critical("closing with {count} records the transaction log could not "
                         "take: they are lost", count=len(self._records))
        for store in self._dirty:
            log.critical("closing {partition} with {count} writes its file could not take",
                         partition=store.partition_id, count=len(store._pending))
        self._dirty = {}
        for store in self._stores.values():
            store.close()
        self._stores.clear()
        self._txlog.close()
