"""One partition replica's SQLite file (DESIGN §9): the table, its reads, its batched
commits, the checks of a file received from another brick, and what the change stream's
positions need of the file: its lineage and its lsn → wall time samples
(docs/architecture.md, "Change stream").

:class:`~dds.bricks.storage.Storage` owns the stores, stages their writes and decides
when each commits; a store only knows its own file.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import xxhash
from twisted.logger import Logger

from dds.bricks.rowcheck import ChecksumMismatch, row_checksum

log = Logger()

Durability = Literal["memory", "disk", "fsync"]
Row = tuple[bytes, "bytes | None", int, int, "int | None"]  # key, value, version, lsn, checksum

#: 2: ``kv.checksum`` (``bricks/rowcheck.py``); a file of version 1 gets the column when
#: opened, and its rows their checksums from the background migration.
SCHEMA_VERSION = 2
PID_RE = re.compile(r"^p\d+\.\d+$")
SUFFIX = ".sqlite"
SYNCHRONOUS = {"memory": "NORMAL", "disk": "NORMAL", "fsync": "FULL"}
_PAGE = 1000  # rows per query in rows_since, so writes may interleave with a long copy

# The sqlite3 module caches compiled statements by SQL text, so reusing these constants is
# what "prepared once" means here.
_SQL_READ = "SELECT value, version, checksum FROM kv WHERE key = ?"
_SQL_UPSERT = (
    "INSERT INTO kv (key, value, version, lsn, checksum) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version, "
    "lsn = excluded.lsn, checksum = excluded.checksum"
)
_SQL_SET_LSN = "UPDATE meta SET value = ? WHERE name = 'last_lsn'"
# Recovery's delta keeps the source's lsns; the guard keeps versions from going back if a
# delta is applied twice or arrives after a newer row.
_SQL_APPLY = (
    "INSERT INTO kv (key, value, version, lsn, checksum) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version, "
    "lsn = excluded.lsn, checksum = excluded.checksum WHERE excluded.version >= kv.version"
)
_SQL_SINCE = ("SELECT key, value, version, lsn, checksum FROM kv WHERE lsn > ? ORDER BY lsn "
              "LIMIT ?")
#: The checksum walk (migration and scrub, ``bricks/checksumwalk.py``): rows in key order.
_SQL_WALK = ("SELECT key, value, version, checksum FROM kv WHERE key > ? ORDER BY key "
             "LIMIT ?")
#: A migrated row gets its checksum only if nothing rewrote it since it was read.
_SQL_SET_CHECKSUM = ("UPDATE kv SET checksum = ? WHERE key = ? AND version = ? "
                     "AND checksum IS NULL")
#: Meta flag: 1 while rows of the file may lack a checksum (a file of schema 1 migrating).
MISSING = "checksums_missing"
#: Meta: the DR follower's marks, JSON ``{primary pid: [position, safe_ms]}``
#: (``PartitionStore.dr_apply``).
DR_MARKS = "dr_marks"
# The schema, word for word as sqlite-utils wrote it into files before the brick stopped
# using that library (its import and the checks it makes cost the brick ~0.1 s of CPU at
# each start): a file's ``sqlite_master`` is the same whichever made it.
_CREATE_KV = ('CREATE TABLE IF NOT EXISTS "kv" (\n   "key" BLOB PRIMARY KEY,\n'
              '   "value" BLOB,\n   "version" INTEGER NOT NULL,\n   "lsn" INTEGER NOT NULL,\n'
              '   "checksum" INTEGER\n);')
_CREATE_LSN_INDEX = 'CREATE INDEX IF NOT EXISTS "idx_kv_lsn"\n    ON "kv" ("lsn");'
_CREATE_META = ('CREATE TABLE IF NOT EXISTS "meta" (\n   "name" TEXT PRIMARY KEY,\n'
                '   "value" ANY\n);')
_UPSERT_META = ('INSERT INTO meta (name, value) VALUES (?, ?) '
                'ON CONFLICT (name) DO UPDATE SET value = excluded.value')
#: The change stream's positions (``bricks/changes.py``): ``lsn → wall time`` samples,
#: about one a second, taken when rows reach the file.  A byte copy carries them along.
_CREATE_TIMES = ('CREATE TABLE IF NOT EXISTS "lsn_times" (\n   "lsn" INTEGER PRIMARY KEY,\n'
                 '   "t" REAL NOT NULL\n);')
_SQL_SAMPLE = "INSERT OR REPLACE INTO lsn_times (lsn, t) VALUES (?, ?)"
# Walks back from the newest sample (the rowid order): a recent position stops at once.
_SQL_LSN_BEFORE = "SELECT lsn FROM lsn_times WHERE t < ? ORDER BY lsn DESC LIMIT 1"
_SQL_PRUNE_TIMES = "DELETE FROM lsn_times WHERE t < ?"
#: Seconds between two samples of the time table, and how long samples are kept (an
#: older position is translated from the beginning of the file: more overlap, no loss).
SAMPLE_S = 1.0
KEEP_SAMPLES_S = 7 * 86400.0
#: At most this many ancestors are remembered per file (older ones translate by time).
MAX_ANCESTORS = 16

def checkpoint(path: Path) -> None:
    """A PASSIVE WAL checkpoint of the file at ``path`` (run in a worker thread).  Opened
    read-write only: a file dropped or replaced meanwhile is not created again."""
    conn = sqlite3.connect(Path(path).absolute().as_uri() + "?mode=rw", uri=True,
                           isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        conn.close()


#: Numbers each opened store (``PartitionStore.cache_tag``).
_OPENED = itertools.count(1)


@attrs.frozen
class ReadResult:
    """A key's state: ``version`` 0 and ``value`` None = never written; ``value`` None with
    ``version`` > 0 = tombstone (removed, but its version still counts)."""

    value: bytes | None
    version: int


NEVER_WRITTEN = ReadResult(None, 0)


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


def check_partition_file(path: Path, pid: str) -> None:
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


def hash_rows(rows: Iterable[tuple[bytes, bytes | None, int]]) -> int:
    """The checksum of a replica: xxh64 over its rows (key, value or None, version) in
    key order."""
    h = xxhash.xxh64()
    pack = struct.Struct(">IqQ").pack
    for key, value, version in rows:
        h.update(pack(len(key), -1 if value is None else len(value), version))
        h.update(key)
        if value is not None:
            h.update(value)
    return h.intdigest()


def summarize_file(path: Path) -> dict[str, int]:
    """Live keys, checksum (as :meth:`PartitionStore.checksum`) and last lsn of what a
    partition file holds, read in one transaction on a connection of its own: blocking
    (a 100 MB file takes ~0.4 s), so for a worker thread."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")
        count = conn.execute("SELECT COUNT(*) FROM kv WHERE value IS NOT NULL").fetchone()[0]
        top = conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM kv").fetchone()[0]
        floor = conn.execute("SELECT value FROM meta WHERE name = 'last_lsn'").fetchone()
        checksum = hash_rows(conn.execute("SELECT key, value, version FROM kv ORDER BY key"))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {"count": int(count), "checksum": checksum,
            "last_lsn": max(int(top), int(floor[0]) if floor else 0)}


def _ancestors(text: object) -> list[tuple[str, int]]:
    """The ``ancestors`` meta value: ``[[lineage, fork lsn], ...]``, nearest first."""
    if not isinstance(text, str):
        return []
    try:
        return [(str(a), int(f)) for a, f in json.loads(text)][:MAX_ANCESTORS]
    except (ValueError, TypeError):
        return []


def _forked(parent: str, at: int, ancestors: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The ancestors of a lineage forked from ``parent`` at lsn ``at``: an older
    ancestor's positions stay exact only up to the lower of the two fork points."""
    return [(parent, at), *((a, min(f, at)) for a, f in ancestors)][:MAX_ANCESTORS]


def validate_pid(pid: str) -> str:
    """Partition ids become file names; only canonical ids like ``p3.5`` are accepted."""
    if not isinstance(pid, str) or not PID_RE.match(pid):
        raise ValueError(f"invalid partition id {pid!r} (expected like 'p3.5')")
    return pid


class PartitionStore:
    """One partition replica's SQLite file, with its own connection.

    Writes are staged by :class:`Storage` (``_stage``) and committed in batches
    (``_commit``); every read here sees committed rows overlaid with staged ones.
    """

    def __init__(self, path: str | Path, partition_id: str, durability: Durability = "disk",
                 manual_checkpoints: bool = False):
        self.path = Path(path)
        self.partition_id = partition_id
        #: Names this open store in the brick's read cache (unique per process).
        self.cache_tag = f"{partition_id}#{next(_OPENED)}"
        self.closed = False
        #: Commits since the WAL was last checkpointed (manual checkpoints only).
        self.uncheckpointed = 0
        self.checkpointing = False
        #: Rows of the file may lack a checksum (schema 1 file, migration not finished).
        self.checksums_missing = False
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per batch.
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, cached_statements=32)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={SYNCHRONOUS[durability]}")
            if manual_checkpoints:
                # The Storage checkpoints in a worker thread: SQLite's automatic
                # checkpoint runs inside a COMMIT on the reactor thread, and with its
                # fsyncs it held every write of the brick for 100-200 ms (bench move).
                self._conn.execute("PRAGMA wal_autocheckpoint=0")
            self._committed_lsn = self._migrate()
        except BaseException:
            self._conn.close()
            raise
        self._last_lsn = self._committed_lsn
        #: The last log position that can no longer be dropped: in the file, or durable
        #: in the brick's transaction log (set by ``Storage`` after each append).
        self._durable_lsn = self._committed_lsn
        #: Wall clock of the change stream's time samples (``Storage`` gives its clock).
        self.wall: Callable[[], float] = time.time
        self._last_sample = 0.0
        self._samples = 0
        #: When the oldest row staged but not yet durable may have been staged (a lower
        #: bound; meaningful only while ``last_lsn() > committed_lsn()``).
        self._undurable_since = 0.0
        #: True from a fork until this file's first own write: copied rows applied
        #: meanwhile keep the parent's lsns, so the fork point moves up with them.
        self._fork_open = False
        try:
            self.lineage, self.ancestors, self.forked_on_open = self._open_lineage()
        except BaseException:
            self._conn.close()
            raise
        # key -> (result, lsn) of the newest staged write; _pending keeps them all in order.
        self._overlay: dict[bytes, tuple[ReadResult, int]] = {}
        self._pending: list[Row] = []
        #: The DR marks (``dr_marks``), read from the file when first asked for.
        self._marks: dict[str, list[Any]] | None = None

    def _migrate(self) -> int:
        """Create the schema in a new file, check an existing one, bring a file of schema
        1 to 2 (add ``kv.checksum``, flag the file as ``checksums_missing``: adding a
        column rewrites nothing, the walk fills it in later); return its last lsn."""
        tables = {name for (name,) in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" in tables:
            meta = dict(self._conn.execute("SELECT name, value FROM meta"))
            found = int(meta.get("schema_version", 0))
            if found > SCHEMA_VERSION:
                raise ValueError(f"{self.path}: schema version {found} is newer than {SCHEMA_VERSION}")
            if meta.get("partition") != self.partition_id:
                raise ValueError(f"{self.path} holds partition {meta.get('partition')!r}, "
                                 f"not {self.partition_id!r}")
            if "kv" in tables and found == SCHEMA_VERSION:
                self.checksums_missing = bool(int(meta.get(MISSING) or 0))
                if "lsn_times" not in tables:
                    self._conn.execute(_CREATE_TIMES)
                # ``meta.last_lsn`` is a floor written at close (and before any purge of
                # rows); the indexed MAX(lsn) covers every commit since, so commits need
                # not rewrite the meta page each time.
                top = self._conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM kv").fetchone()[0]
                return max(int(meta.get("last_lsn", 0)), int(top))
        found_rows = "kv" in tables and self._conn.execute(
            "SELECT EXISTS (SELECT 1 FROM kv)").fetchone()[0] == 1
        lsns: list[int] = []

        def create(conn: sqlite3.Connection) -> None:
            conn.execute(_CREATE_KV)
            if "checksum" not in {row[1] for row in conn.execute('PRAGMA table_info("kv")')}:
                conn.execute("ALTER TABLE kv ADD COLUMN checksum INTEGER")
            conn.execute(_CREATE_LSN_INDEX)
            conn.execute(_CREATE_META)
            conn.execute(_CREATE_TIMES)
            lsns.append(int(conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM kv").fetchone()[0]))
            old_last = conn.execute("SELECT value FROM meta WHERE name = 'last_lsn'").fetchone()
            conn.executemany(_UPSERT_META, [
                ("schema_version", SCHEMA_VERSION), ("partition", self.partition_id),
                ("last_lsn", max(lsns[0], int(old_last[0]) if old_last else 0)),
                (MISSING, int(found_rows))])
        _transaction(self._conn, create)
        self.checksums_missing = found_rows
        if found_rows:
            log.info("{path}: schema 1 partition file upgraded to 2; its rows get checksums "
                     "in the background", path=str(self.path))
        return lsns[0]

    # -- lineage (the change stream's positions, docs/architecture.md) ---------------

    def _open_lineage(self) -> tuple[str, list[tuple[str, int]], bool]:
        """The file's lineage and ancestors; a new lineage (a fork) if the file has none
        or was not closed cleanly (its lsns past the file's end may be numbered again).
        The file is marked open (``clean`` 0) until ``close``."""
        meta = dict(self._conn.execute(
            "SELECT name, value FROM meta WHERE name IN ('lineage', 'ancestors', 'clean')"))
        lineage = meta.get("lineage")
        ancestors = _ancestors(meta.get("ancestors"))
        forked = False
        if not isinstance(lineage, str) or meta.get("clean") == 0:
            if isinstance(lineage, str):
                ancestors = _forked(lineage, self._committed_lsn, ancestors)
            lineage, forked = secrets.token_hex(16), True
        self._write_lineage(lineage, ancestors, clean=0)
        return lineage, ancestors, forked

    def _write_lineage(self, lineage: str, ancestors: list[tuple[str, int]],
                       clean: int) -> None:
        _transaction(self._conn, lambda conn: conn.executemany(_UPSERT_META, [
            ("lineage", lineage), ("ancestors", json.dumps(ancestors)), ("clean", clean)]))

    def fork(self) -> None:
        """Give the file a new lineage descending from its current one at its committed
        lsn: it was installed from another brick's file (a copy, a split's build)."""
        self.ancestors = _forked(self.lineage, self._durable_lsn, self.ancestors)
        self.lineage = secrets.token_hex(16)
        self._fork_open = True
        self._write_lineage(self.lineage, self.ancestors, clean=0)

    def installed(self) -> None:
        """The file was installed from elsewhere (``Storage.replace_partition``): fork,
        unless opening it already did, and let copied rows move the fork point."""
        if not self.forked_on_open:
            self.fork()
        self.forked_on_open = False
        self._fork_open = True

    def exact_from(self, lineage: str, lsn: int) -> bool:
        """Whether log position ``lsn`` of ``lineage`` means the same prefix of writes
        here: this lineage, or an ancestor this file forked from at or after ``lsn``."""
        if lineage == self.lineage:
            return True
        return any(a == lineage and lsn <= fork for a, fork in self.ancestors)

    def lsn_before(self, t: float) -> int:
        """The highest lsn whose rows were all staged here before wall time ``t`` by the
        time table (0: none known, start from the beginning)."""
        row = self._conn.execute(_SQL_LSN_BEFORE, (t,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def undurable_since(self) -> float | None:
        """A lower bound on when the rows staged but not yet durable were staged; None
        if there are none."""
        return self._undurable_since if self._last_lsn > self._durable_lsn else None

    def _sample(self, conn: sqlite3.Connection, top: int) -> None:
        """In a commit's transaction: record ``top → now`` if a second passed."""
        now = self.wall()
        if now - self._last_sample < SAMPLE_S:
            return
        self._last_sample = now
        conn.execute(_SQL_SAMPLE, (top, now))
        self._samples += 1
        if self._samples % 3600 == 1:
            conn.execute(_SQL_PRUNE_TIMES, (now - KEEP_SAMPLES_S,))

    def checksums_done(self) -> None:
        """The walk gave every row of the file a checksum: clear the flag."""
        _transaction(self._conn, lambda conn: conn.execute(
            "UPDATE meta SET value = 0 WHERE name = ?", (MISSING,)))
        self.checksums_missing = False

    def walk(self, after: bytes, limit: int) -> list[tuple[bytes, bytes | None, int, int | None]]:
        """Committed rows (key, value, version, checksum) with a key above ``after``, in
        key order, at most ``limit`` (the checksum walk's batches)."""
        return self._conn.execute(_SQL_WALK, (after, limit)).fetchall()

    def set_checksums(self, rows: Sequence[tuple[int, bytes, int]]) -> None:
        """Give rows (checksum, key, version) read by ``walk`` their checksum, each only
        if the key is still at that version without one."""
        if rows:
            _transaction(self._conn, lambda conn: conn.executemany(_SQL_SET_CHECKSUM, rows))

    def read(self, key: bytes) -> ReadResult:
        """The key's current state, staged writes included.  A row from the file is
        verified against its checksum: ChecksumMismatch rather than damaged bytes."""
        staged = self._overlay.get(key)
        if staged is not None:
            return staged[0]
        row = self._conn.execute(_SQL_READ, (key,)).fetchone()
        if row is None:
            return NEVER_WRITTEN
        value, version, checksum = row
        if checksum is not None and row_checksum(key, version, value) != checksum:
            raise ChecksumMismatch(self.partition_id, key)
        return ReadResult(value, version)

    def read_unverified(self, key: bytes) -> tuple[ReadResult, bool]:
        """The key's current state and whether the file's row is damaged (False for a
        staged row), for writers that replace the row whatever it holds."""
        staged = self._overlay.get(key)
        if staged is not None:
            return staged[0], False
        row = self._conn.execute(_SQL_READ, (key,)).fetchone()
        if row is None:
            return NEVER_WRITTEN, False
        value, version, checksum = row
        damaged = checksum is not None and row_checksum(key, version, value) != checksum
        return ReadResult(value, version), damaged

    def staged(self, key: bytes) -> bool:
        """Whether a write of ``key`` is staged (newer than the file's row)."""
        return key in self._overlay

    def last_lsn(self) -> int:
        """The last log position assigned, staged writes included."""
        return self._last_lsn

    def committed_lsn(self) -> int:
        """The last log position that is durable: its row is in the file or in the brick's
        transaction log, and it is never dropped nor its position reused (staged rows
        after it may be).  What a delta may serve, and what a snapshot of the file taken
        through ``Storage.partition_path`` captures."""
        return self._durable_lsn

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
        return hash_rows(self._rows_by_key())

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

    def rows_since(self, lsn: int, upto: int | None = None) -> Iterator[Row]:
        """Rows (tombstones included) written after log position ``lsn``, in lsn order.

        Reads in pages, so the iterator may be consumed across reactor turns while writes go
        on; a key rewritten meanwhile shows up again with its newer lsn, and applying the
        rows in order still converges.  Staged writes come last, each key's newest only;
        with ``upto``, none after ``upto``, and each key's newest at or below ``upto``:
        a staged row whose newer row lies beyond ``upto`` (not yet durable) must still be
        served, or a write committed before the page's safe time would be in no page until
        the newer one is durable (and in none at all if the brick dies first).
        """
        cur = lsn
        while True:
            rows = self._conn.execute(_SQL_SINCE, (cur, _PAGE)).fetchall()
            if not rows:
                break
            for row in rows:
                cur = row[3]
                yield row
        pending = list(self._pending)
        newest: dict[bytes, int] | None = None
        if upto is not None:
            newest = {}
            for row in pending:
                if row[3] <= upto:
                    newest[row[0]] = row[3]
        for row in pending:
            if row[3] <= cur:
                continue
            if newest is not None:
                if row[3] > upto:                               # type: ignore[operator]
                    return
                if newest.get(row[0]) == row[3]:
                    yield row
                continue
            staged = self._overlay.get(row[0])
            if staged is not None and staged[1] == row[3]:
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

        ancestors = self.ancestors
        if self._fork_open and ancestors:
            # Still the parent's numbering (no own write since the fork): the copy is
            # exact for the parent's positions up to the last row applied.
            ancestors = [(ancestors[0][0], top), *ancestors[1:]]

        def body(conn: sqlite3.Connection) -> None:
            conn.executemany(_SQL_APPLY, rows)
            conn.execute(_SQL_SET_LSN, (top,))
            if ancestors is not self.ancestors:
                conn.execute(_UPSERT_META, ("ancestors", json.dumps(ancestors)))
        _transaction(self._conn, body)
        self.ancestors = ancestors
        self._committed_lsn = self._last_lsn = self._durable_lsn = top
        return len(rows)

    def dr_marks(self) -> dict[str, list[Any]]:
        """The DR follower's marks stored with its rows (``dr_apply``): primary partition
        → ``[position, safe_ms]``; empty in a file that never took a DR row."""
        if self._marks is None:
            row = self._conn.execute("SELECT value FROM meta WHERE name = ?",
                                     (DR_MARKS,)).fetchone()
            try:
                loaded = json.loads(row[0]) if row and isinstance(row[0], str) else {}
            except ValueError:
                loaded = {}
            self._marks = loaded if isinstance(loaded, dict) else {}
        return dict(self._marks)

    def dr_apply(self, rows: Sequence[tuple[bytes, bytes | None, int]],
                 marks: dict[str, list[Any]]) -> tuple[list[bytes], int]:
        """A DR site's rows from the primary's change stream (``bricks/drapply.py``):
        each written at its own version, with a new lsn of this file and its checksum,
        where the stored copy is older; and ``marks`` merged into the file's (a
        partition's mark never goes back), all in one durable transaction.  Returns the
        keys written and how many rows were skipped (already as new).  Raises
        ChecksumMismatch, with nothing written, if a row it would replace is damaged.
        The caller (``Storage.dr_apply``) makes sure no write is staged."""
        if self._pending:
            raise ValueError(f"{self.partition_id}: {len(self._pending)} staged writes "
                             "pending; cannot apply DR rows")
        old = self.dr_marks()
        merged = dict(old)
        for pid, mark in marks.items():
            kept = merged.get(pid)
            if kept is None or int(kept[1]) < int(mark[1]):
                merged[pid] = list(mark)
        written: list[Row] = []
        newest: dict[bytes, int] = {}
        lsn = self._last_lsn
        for key, value, version in rows:
            current = newest.get(key)
            if current is None:
                found = self._conn.execute(_SQL_READ, (key,)).fetchone()
                current = 0 if found is None else found[1]
                if found is not None and found[2] is not None \
                        and row_checksum(key, found[1], found[0]) != found[2]:
                    raise ChecksumMismatch(self.partition_id, key)
            if version <= current:
                continue
            lsn += 1
            newest[key] = version
            written.append((key, value, version, lsn, row_checksum(key, version, value)))
        if not written and merged == old:
            return [], len(rows)

        def body(conn: sqlite3.Connection) -> None:
            if written:
                conn.executemany(_SQL_UPSERT, written)
                self._sample(conn, lsn)
            if merged != old:
                conn.execute(_UPSERT_META, (DR_MARKS, json.dumps(merged)))
        _transaction(self._conn, body)
        self.uncheckpointed += 1
        self._marks = merged
        if written:
            self._fork_open = False
            self._committed_lsn = self._last_lsn = self._durable_lsn = lsn
        return [row[0] for row in written], len(rows) - len(written)

    def _stage(self, key: bytes, res: ReadResult, checksum: int) -> None:
        if self._last_lsn == self._durable_lsn:
            self._undurable_since = self.wall()
        self._fork_open = False
        self._last_lsn += 1
        self._overlay[key] = (res, self._last_lsn)
        self._pending.append((key, res.value, res.version, self._last_lsn, checksum))

    def _commit(self, before: int | None = None, limit: int | None = None) -> int:
        """Take the staged rows with a log position below ``before`` (all, if None), the
        first ``limit`` of them at most, off the staging: write them in one transaction;
        on error roll back and re-raise (the rows stay staged; the caller retries them).
        Returns how many rows were taken.

        A row is not written when a newer staged row of its key below ``before`` is
        (by this commit or a later one): the file goes straight to the key's newest
        durable state.  Under a hot key set most rows of a sweep are such, and SQLite's
        upserts were a fifth of a brick's CPU under ``dds-admin bench`` puts.  No delta
        reader misses the skipped row: ``rows_since`` serves the newer one, staged or
        written, whose lsn is higher; a skipped row is durable in the transaction log."""
        pending = self._pending
        eligible = pending
        if before is not None and pending and pending[-1][3] >= before:
            eligible = [row for row in pending if row[3] < before]
        if not eligible:
            return 0
        rows = eligible if limit is None or len(eligible) <= limit else eligible[:limit]
        if eligible is pending:
            # Every staged row is eligible: the overlay holds each key's newest lsn, so a
            # slice needs no map of its own (a sweep takes a file's rows 200 at a time).
            overlay = self._overlay
            todo = [r for r in rows if overlay[r[0]][1] == r[3]]
        else:
            newest = {row[0]: row[3] for row in eligible}
            todo = (rows if len(newest) == len(eligible)
                    else [r for r in rows if newest[r[0]] == r[3]])
        top = rows[-1][3]
        if todo:
            def body(conn: sqlite3.Connection) -> None:
                conn.executemany(_SQL_UPSERT, todo)
                self._sample(conn, top)
            _transaction(self._conn, body)
            self.uncheckpointed += 1
        self._committed_lsn = top
        self._durable_lsn = max(self._durable_lsn, top)
        if len(rows) == len(pending):
            self._pending = []
            self._overlay.clear()
        else:
            self._pending = pending[len(rows):]
            overlay = self._overlay
            for row in rows:     # keys whose newest staged row is now written
                entry = overlay.get(row[0])
                if entry is not None and entry[1] <= top:
                    del overlay[row[0]]
        return len(rows)

    def _unstage_from(self, lsn: int) -> list[bytes]:
        """Forget the staged rows from log position ``lsn`` on (the log append that was to
        make them durable failed; they are the newest); return the keys they touched."""
        keys = [row[0] for row in self._pending if row[3] >= lsn]
        self._pending = [row for row in self._pending if row[3] < lsn]
        self._overlay = {row[0]: (ReadResult(row[1], row[2]), row[3]) for row in self._pending}
        self._last_lsn = lsn - 1
        return keys

    def close(self, *, discard: bool = False) -> None:
        """Close the connection; staged rows not yet committed are dropped (the
        :class:`Storage` flushes before closing).  ``discard``: the file is deleted next,
        so the checkpoint SQLite runs on closing skips its fsyncs (on a busy disk they
        held the reactor 75-200 ms when a moved partition's source dropped it)."""
        if not self.closed:
            self.closed = True
            try:
                if discard:
                    self._conn.execute("PRAGMA synchronous=OFF")
                else:
                    self._conn.execute(_SQL_SET_LSN, (self._committed_lsn,))
                    # Closed cleanly: the next open keeps the lineage (every lsn it
                    # served stays that row's).
                    self._conn.execute(_UPSERT_META, ("clean", 1))
            except sqlite3.Error:
                pass    # only a floor: MAX(lsn) is authoritative while no row is purged
            self._conn.close()
