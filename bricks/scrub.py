"""Scrub, the brick side: a partition replica summarized per key-hash bucket, so that
``dds-admin scrub`` can compare the replicas of a partition without shipping them.

**Buckets.**  A partition at depth ``d`` owns the keys whose hash ``h = xxh64(key)`` has
``d`` given low bits (DESIGN §2).  The remaining ``64 - d`` bits, ``r = h >> d``, are
uniform over the partition's keys; bucket ``i`` of ``n`` is the ``i``-th of ``n`` equal
ranges of ``r``::

    bucket_of(h, d, n) = ((h >> d) * n) >> (64 - d)

So every key falls in exactly one bucket in ``[0, n)``, the buckets split the partition's
hash range evenly (for any ``n``, not only powers of two), and they nest: bucket ``i`` of
``n`` is exactly the union of buckets ``i*m .. i*m + m - 1`` of ``n*m``.  The admin tool
relies on that to split a bucket too large for one ``range_keys`` reply.

**Checksums.**  A row's hash is the xxh64 of the row as :meth:`PartitionStore.checksum`
encodes it (key length, value length or -1 for a tombstone, version, key, value), lsn
excluded: lsns are local to a replica.  A bucket's checksum is the sum of its rows' hashes
mod 2^64, an order-independent combination, so one pass over the table in any order
computes every bucket at once, and two replicas with the same rows (tombstones and
versions included) have the same checksums whatever order they were written in.  A
bucket's count is its number of rows, tombstones included.

**Snapshot.**  The scan reads the partition file through its own read-only connection,
inside one read transaction: WAL mode gives it one consistent state of the file (rows and
lsn alike) while the brick keeps committing.  Staged writes are committed first
(``Storage.flush``), so the scan covers every write acknowledged before the request.  A
100 MB partition takes a second or more to hash, so the scan runs in the reactor's thread
pool (inline in the simulation), like a recovery snapshot (``bricks/copy/snapshot.py``).

Replies (``dds/messages.py``): ``range_checksums`` →
``{"buckets": [[count, checksum], ...], "lsn": int, "rows": int, "bytes": int}``
(``rows``/``bytes``: rows scanned and their key + value bytes, for progress display);
``range_keys`` → ``{"keys": [[key, version, value_hash], ...]}`` sorted by key,
``value_hash`` the xxh64 of the value and None for a tombstone.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import xxhash
from twisted.logger import Logger

from dds.errors import (DDSError, InternalError, InvalidRequest, NotServing, Refused,
                        ReplicaDamaged)
from dds.maps import ClusterMap
from dds.messages import Message, RangeChecksums, RangeKeys
from dds.partition import PartitionId, key_hash

from dds.bricks.mapstate import parse_pid
from dds.bricks.context import RunInThread
from dds.bricks.partstore import validate_pid
from dds.bricks.storage import Storage

__all__ = ["bucket_of", "key_bucket", "row_hash", "value_hash", "file_checksums",
           "file_keys", "Scrubber", "MASK64"]

log = Logger()

MASK64 = (1 << 64) - 1
_HEADER = struct.Struct(">IqQ").pack
#: Bytes a ``range_keys`` entry costs on the wire besides its key (msgpack array header,
#: a u64 version, a u64 hash).
_ENTRY_OVERHEAD = 24


def bucket_of(h: int, depth: int, buckets: int) -> int:
    """The bucket (of ``buckets``) of a key with hash ``h`` in a partition at ``depth``:
    the hash bits above the partition's prefix, cut into ``buckets`` equal ranges."""
    return ((h >> depth) * buckets) >> (64 - depth)


def key_bucket(key: bytes, depth: int, buckets: int) -> int:
    return bucket_of(key_hash(key), depth, buckets)


def row_hash(key: bytes, value: bytes | None, version: int) -> int:
    """xxh64 of one row as ``PartitionStore.checksum`` encodes it (no lsn)."""
    if value is None:
        return xxhash.xxh64_intdigest(_HEADER(len(key), -1, version) + key)
    return xxhash.xxh64_intdigest(_HEADER(len(key), len(value), version) + key + value)


def value_hash(value: bytes | None) -> int | None:
    """What ``range_keys`` reports of a value: its xxh64, None for a tombstone."""
    return None if value is None else xxhash.xxh64_intdigest(value)


# -- worker thread: one read transaction over the partition file -------------------------

def _open(path: Path, pid: str) -> sqlite3.Connection:
    # Read-only and never creating: a missing file must fail, not become an empty DB.
    # isolation_level=None: the BEGIN below is ours.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0,
                           isolation_level=None, check_same_thread=False)
    try:
        conn.execute("BEGIN")
        meta = dict(conn.execute("SELECT name, value FROM meta"))
    except BaseException:
        conn.close()
        raise
    if meta.get("partition") != pid:
        conn.close()
        raise ValueError(f"{path} holds partition {meta.get('partition')!r}, not {pid!r}")
    return conn


def _rows(conn: sqlite3.Connection) -> Iterator[tuple[bytes, bytes | None, int]]:
    """Every row (tombstones included), in table order.  Module-level so tests can watch
    the scan."""
    yield from conn.execute("SELECT key, value, version FROM kv")


def _lsn(conn: sqlite3.Connection) -> int:
    top = conn.execute("SELECT COALESCE(MAX(lsn), 0) FROM kv").fetchone()[0]
    floor = conn.execute("SELECT value FROM meta WHERE name = 'last_lsn'").fetchone()
    return max(int(top), int(floor[0] or 0) if floor else 0)


def file_checksums(path: Path, pid: str, depth: int, buckets: int) -> dict[str, Any]:
    """The ``range_checksums`` reply for the partition file at ``path``, from one
    consistent state of it (one read transaction: the rows, then the lsn)."""
    sums = [[0, 0] for _ in range(buckets)]
    rows = nbytes = 0
    conn = _open(path, pid)
    try:
        for key, value, version in _rows(conn):
            entry = sums[bucket_of(key_hash(key), depth, buckets)]
            entry[0] += 1
            entry[1] = (entry[1] + row_hash(key, value, version)) & MASK64
            rows += 1
            nbytes += len(key) + (0 if value is None else len(value))
        lsn = _lsn(conn)
    finally:
        conn.close()        # ends the read transaction
    return {"buckets": sums, "lsn": lsn, "rows": rows, "bytes": nbytes}


class TooManyKeys(Exception):
    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


def file_keys(path: Path, pid: str, depth: int, bucket: int, buckets: int,
              max_bytes: int) -> list[list[Any]]:
    """``[[key, version, value_hash], ...]`` of one bucket, sorted by key.  Raises
    :class:`TooManyKeys` once the list would take more than ``max_bytes`` on the wire."""
    out: list[list[Any]] = []
    size = 0
    conn = _open(path, pid)
    try:
        for key, value, version in _rows(conn):
            if bucket_of(key_hash(key), depth, buckets) != bucket:
                continue
            out.append([key, version, value_hash(value)])
            size += len(key) + _ENTRY_OVERHEAD
            if size > max_bytes:
                raise TooManyKeys(len(out))
    finally:
        conn.close()
    out.sort(key=lambda entry: entry[0])
    return out


# -- the handlers --------------------------------------------------------------------------

class _Maps(Protocol):
    @property
    def map(self) -> ClusterMap: ...


class _Recoveries(Protocol):
    blocked: set[str]


class Scrubber:
    """The brick's ``range_checksums`` and ``range_keys`` handlers.

    Only a replica the brick serves is summarized: one of a partition active in the
    brick's map, of an RG where the brick is an active member and not re-syncing (its
    replica is being replaced then).  ``maps``/``recoveries`` None skips that check
    (tests)."""

    def __init__(self, brick_id: str, storage: Storage, run_in_thread: RunInThread,
                 maps: _Maps | None = None, recoveries: _Recoveries | None = None,
                 max_reply_bytes: int = 16 << 20, *,
                 damaged: Mapping[str, str] | None = None,
                 on_unreadable: Callable[[str, BaseException], DDSError] | None = None
                 ) -> None:
        self.id = brick_id
        self.storage = storage
        self.run_in_thread = run_in_thread
        self.maps = maps
        self.recoveries = recoveries
        # Half a frame: room for the envelope, and for misjudging msgpack's overhead.
        self.max_keys_bytes = max_reply_bytes // 2
        #: Partitions whose file here was unreadable and is being copied again, and what
        #: to do with a scan that finds a file unreadable (``bricks/damage.py``): the
        #: scrub sees ``ReplicaDamaged``, and the brick repairs the replica by itself.
        self.damaged: Mapping[str, str] = damaged if damaged is not None else {}
        self.on_unreadable = on_unreadable

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        """The requests this component answers (``Brick`` dispatches them here)."""
        return {RangeChecksums: self.range_checksums, RangeKeys: self.range_keys}

    def _replica(self, pid_text: str) -> tuple[PartitionId, Path]:
        pid = parse_pid(pid_text)
        name = validate_pid(str(pid))
        if name in self.damaged:
            raise self._damaged(name, None)
        if self.maps is not None:
            rec = self.maps.map.partition_rg.get(pid)
            if rec is None:
                raise NotServing(f"{pid} is not an active partition in brick {self.id}'s "
                                 "map")
            state = rec.member_state(self.id)
            if state != "active":
                raise NotServing(f"brick {self.id} is {state or 'not a member'} in "
                                 f"{rec.name}, which holds {pid}: its replica is not "
                                 "compared")
            if self.recoveries is not None and rec.name in self.recoveries.blocked:
                raise NotServing(f"brick {self.id} is re-syncing {rec.name}")
        if not self.storage.has_partition(name):
            raise NotServing(f"brick {self.id} holds no replica of {pid}")
        return pid, self.storage.partition_path(name)

    async def _committed(self) -> None:
        """Commit staged writes, so the file holds every acknowledged one (memory mode
        would otherwise lag by up to its flush interval).  A failed commit is logged by
        storage and retried there; the scan then shows the file as it is."""
        try:
            await self.storage.flush()
        except Exception:    # noqa: BLE001 -- reported by Storage itself
            pass

    async def range_checksums(self, msg: RangeChecksums) -> dict[str, Any]:
        pid, path = self._replica(msg.pid)
        await self._committed()
        try:
            reply: dict[str, Any] = await self.run_in_thread(
                file_checksums, path, str(pid), pid.depth, msg.buckets)
        except (sqlite3.Error, OSError, ValueError) as e:
            raise self._failed(pid, e) from None
        return reply

    async def range_keys(self, msg: RangeKeys) -> dict[str, Any]:
        if msg.bucket >= msg.buckets:
            raise InvalidRequest(f"range_keys: bucket {msg.bucket} is not below buckets "
                                 f"{msg.buckets}")
        pid, path = self._replica(msg.pid)
        await self._committed()
        try:
            keys = await self.run_in_thread(file_keys, path, str(pid), pid.depth,
                                            msg.bucket, msg.buckets, self.max_keys_bytes)
        except TooManyKeys as e:
            raise Refused(f"bucket {msg.bucket} of {msg.buckets} of {pid} holds more keys "
                          f"than one reply carries (over {e.count}): ask with more "
                          "buckets") from None
        except (sqlite3.Error, OSError, ValueError) as e:
            raise self._failed(pid, e) from None
        return {"keys": keys}

    def _failed(self, pid: PartitionId, error: BaseException) -> DDSError:
        if self.on_unreadable is not None and isinstance(error, sqlite3.DatabaseError):
            try:
                return self._damaged(str(pid), error)
            except sqlite3.DatabaseError:
                pass                    # not a damaged file: an internal error
        return InternalError(f"scrub of {pid} on brick {self.id} failed: {error}")

    def _damaged(self, pid: str, error: BaseException | None) -> DDSError:
        """``ReplicaDamaged``: the replica here is (found now, with ``error``) unreadable."""
        if error is not None and self.on_unreadable is not None:
            return self.on_unreadable(pid, error)
        return ReplicaDamaged(f"brick {self.id}'s replica of {pid} is damaged "
                              f"({self.damaged.get(pid, 'unreadable')}); it is being "
                              "copied again from its RG")
