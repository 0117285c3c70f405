"""The client journal (DESIGN §12): the writes this client had acknowledged by a primary
that a DR site follows, kept until a **tag** shows the DR site holds them.

Every YES vote on an attached primary carries ``at`` (when the member recorded its vote,
ms on its clock) and, where the member holds one, the partition's tag ``[maker,
safe_ms]``: the DR site holds every write committed at brick ``maker`` before ``safe_ms``
on that brick's clock.  An entry remembers ``at`` per voter; a tag ``[m, s]`` **covers**
it iff ``m`` voted and ``s > at[m]`` (the vote was recorded at ``m`` before ``s``, so the
write was committed in ``m``'s file by the time ``s`` was computed: docs/architecture.md,
"Change stream", safe time), or ``s > max(at) + skew_ms`` for a maker that did not vote
(clocks differ by less than the skew).  A tag of a partition covers the entries of keys
it owns, also entries recorded under its parent or children (a split or merge since).

Never drops an entry silently: an entry leaves only when covered, when a newer write of
the same key by this client supersedes it (replaying the newer one puts the key at least
as far), or when ``dr_replay`` applied it or the DR site refused it (reported).  It is
bounded (``max_entries``, ``max_bytes``); the library reserves room before a write's
PREPARE is sent (``reserve``), so a write that finds no room fails (``JournalFull``)
with nothing applied, at once or after waiting for room until its deadline.

Business logic only: the file, when there is one, is ``lib/drjournalfile.py``; timers,
polling and the wire are the client's (``lib/drsite.py``).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
import attrs
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dds.errors import InvalidRequest, JournalFull
from dds.metrics import Metrics
from dds.partition import PartitionId

from dds.lib.drjournalfile import JournalFile, LoadReport, Row

#: What an entry costs beyond its key and value (the bound on bytes counts it).
ENTRY_OVERHEAD = 160
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_SKEW_MS = 1000
WHEN_FULL = ("wait", "fail")


def entry_size(key: bytes, value: bytes | None) -> int:
    return len(key) + (len(value) if value is not None else 0) + ENTRY_OVERHEAD


@attrs.frozen
class Entry:
    """One acknowledged write not yet known to be at the DR site."""

    seq: int
    pid: PartitionId
    key: bytes
    op: str
    value: bytes | None
    version: int
    at: dict[str, int]
    acked_ms: int

    @property
    def size(self) -> int:
        return entry_size(self.key, self.value)

    def covered_by(self, maker: str, safe_ms: int, skew_ms: int) -> bool:
        """The tag rule (module docstring)."""
        t = self.at.get(maker)
        if t is not None and safe_ms > t:
            return True
        return bool(self.at) and safe_ms > max(self.at.values()) + skew_ms

    def row(self) -> Row:
        return (self.seq, str(self.pid), self.key, self.op, self.value, self.version,
                self.at, self.acked_ms)


def _entry(row: Row) -> Entry:
    seq, pid, key, op, value, version, at, acked = row
    return Entry(seq, PartitionId.parse(pid), key, op, value, version, at, acked)


class DrJournal:
    """The entries, their indexes, the bounds and the tags seen (module docstring).
    ``metrics``: the client's (gauges ``dr_journal_entries`` / ``_bytes`` summed over the
    clients that share a registry)."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES, when_full: str = "wait",
                 skew_ms: int = DEFAULT_SKEW_MS,
                 path: str | os.PathLike[str] | None = None,
                 metrics: Metrics | None = None, log: Logger | None = None) -> None:
        if type(max_entries) is not int or max_entries < 1:
            raise InvalidRequest(f"dr_journal_max_entries must be a positive int, not "
                                 f"{max_entries!r:.40}")
        if type(max_bytes) is not int or max_bytes < ENTRY_OVERHEAD:
            raise InvalidRequest(f"dr_journal_max_bytes must be an int of at least "
                                 f"{ENTRY_OVERHEAD}, not {max_bytes!r:.40}")
        if when_full not in WHEN_FULL:
            raise InvalidRequest(f"dr_journal_when_full must be one of "
                                 f"{', '.join(WHEN_FULL)}, not {when_full!r:.40}")
        if type(skew_ms) is not int or skew_ms < 0:
            raise InvalidRequest(f"dr_max_skew_ms must be a non-negative int, not "
                                 f"{skew_ms!r:.40}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.skew_ms = skew_ms
        self.log = log if log is not None else Logger()
        self.metrics = metrics
        self.entries: dict[int, Entry] = {}
        self.bytes = 0
        self._by_pid: dict[PartitionId, dict[int, Entry]] = {}
        self._by_key: dict[bytes, int] = {}
        #: Per partition, the newest tag seen per maker (safe ms).
        self.tags: dict[PartitionId, dict[str, int]] = {}
        self._reserved = 0
        self._reserved_bytes = 0
        self._seq = 0
        self._room: list[Deferred[None]] = []
        #: Whether a vote ever carried ``at``: writes reserve room only from then on.
        self.engaged = False
        self.file: JournalFile | None = None
        self.loaded: LoadReport | None = None
        if path is not None:
            self._load(Path(path))
        if metrics is not None:
            _watch(metrics, self)

    # -- the file --------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        self.file = JournalFile(path)
        try:
            rows, report = self.file.load()
        except OSError as error:
            raise InvalidRequest(f"dr_journal_path {str(path)!r}: cannot use the file: "
                                 f"{error.strerror or error}") from None
        self.loaded = report
        for offset, why in report.damaged:
            self.log.warn("DR journal {path}: damaged record at offset {offset} skipped "
                          "({why}); an entry it held is lost", path=str(path),
                          offset=offset, why=why)
        if report.torn is not None:
            self.log.info("DR journal {path}: incomplete last record at offset {offset} "
                          "(cut short by a crash) ignored", path=str(path),
                          offset=report.torn)
        for row in rows:
            entry = _entry(row)
            self._index(entry)
            self._seq = max(self._seq, entry.seq)
        if rows:
            self.engaged = True
            self.log.info("DR journal {path}: {n} entries reloaded", path=str(path),
                          n=len(rows))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    # -- bounds ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    def has_room(self, size: int) -> bool:
        return (len(self.entries) + self._reserved < self.max_entries
                and self.bytes + self._reserved_bytes + size <= self.max_bytes)

    def reserve(self, size: int) -> bool:
        """Room for one more entry of ``size`` bytes, held until ``release``; False when
        full (counted in ``dr_journal_full_total`` by the caller's ``full_error``)."""
        if not self.has_room(size):
            return False
        self._reserved += 1
        self._reserved_bytes += size
        return True

    def release(self, size: int) -> None:
        self._reserved -= 1
        self._reserved_bytes -= size
        self._wake()

    def room(self) -> Deferred[None]:
        """Fires when entries leave (the caller then tries ``reserve`` again)."""
        d: Deferred[None] = Deferred(lambda d: self._room.remove(d)
                                     if d in self._room else None)
        self._room.append(d)
        return d

    def _wake(self) -> None:
        waiting, self._room = self._room, []
        for d in waiting:
            d.callback(None)

    def full_error(self, waited: bool) -> JournalFull:
        if self.metrics is not None:
            self.metrics.inc("dr_journal_full_total")
        how = "after waiting until the write's deadline" if waited else "at once " \
            "(dr_journal_when_full=fail)"
        return JournalFull(
            f"write refused {how}: the DR journal holds {len(self.entries)} entries, "
            f"{self.bytes} bytes (max {self.max_entries} entries, {self.max_bytes} bytes) "
            "of writes the DR site has not confirmed; nothing was applied")

    # -- entries ---------------------------------------------------------------------

    def add(self, pid: PartitionId, key: bytes, op: str, value: bytes | None, version: int,
            at: dict[str, int], acked_ms: int) -> Entry | None:
        """Keep an acknowledged write; None if a tag seen already covers it.  An older
        entry of the same key leaves (superseded)."""
        self.engaged = True
        self._seq += 1
        e = Entry(self._seq, pid, key, op, value, version, at, acked_ms)
        known = self.tags.get(pid)
        if known and any(e.covered_by(m, s, self.skew_ms) for m, s in known.items()):
            self._count_covered(1)
            return None
        old = self._by_key.get(key)
        if old is not None:
            prev = self.entries.get(old)
            if prev is not None and prev.version < version:
                self._remove([prev])
                self._count_covered(1)
        self._index(e)
        if self.file is not None:
            self.file.add(e.row())
        return e

    def _index(self, e: Entry) -> None:
        self.entries[e.seq] = e
        self._by_pid.setdefault(e.pid, {})[e.seq] = e
        self._by_key[e.key] = e.seq
        self.bytes += e.size

    def _remove(self, gone: list[Entry]) -> None:
        for e in gone:
            if self.entries.pop(e.seq, None) is None:
                continue
            self.bytes -= e.size
            of_pid = self._by_pid.get(e.pid)
            if of_pid is not None:
                of_pid.pop(e.seq, None)
                if not of_pid:
                    del self._by_pid[e.pid]
            if self._by_key.get(e.key) == e.seq:
                del self._by_key[e.key]
        if self.file is not None and gone:
            self.file.drop(e.seq for e in gone)
            if self.file.worth_compacting():
                self.file.compact(e.row() for e in self.entries.values())
        if gone:
            self._wake()

    def remove(self, entries: Iterable[Entry]) -> None:
        """Entries that left by a replay (applied or refused: ``dr_replay`` reports)."""
        self._remove(list(entries))

    def _count_covered(self, n: int) -> None:
        if self.metrics is not None and n:
            self.metrics.inc("dr_journal_covered_total", n)

    # -- tags ------------------------------------------------------------------------

    def tag(self, pid: PartitionId, maker: str, safe_ms: int) -> int:
        """A tag of ``pid``: drop the entries it covers; how many.  A tag no newer than
        one already seen from that maker changes nothing and costs a lookup."""
        seen = self.tags.setdefault(pid, {})
        if seen.get(maker, -1) >= safe_ms:
            return 0
        seen[maker] = safe_ms
        if not self.entries:
            return 0
        gone = [e for q, of_pid in list(self._by_pid.items())
                if q == pid or pid.covers(q) or q.covers(pid)
                for e in of_pid.values()
                if (q == pid or pid.owns(e.key)) and e.covered_by(maker, safe_ms,
                                                                   self.skew_ms)]
        self._remove(gone)
        self._count_covered(len(gone))
        return len(gone)

    def waiting(self) -> list[PartitionId]:
        """The partitions with entries waiting for a tag."""
        return list(self._by_pid)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self.entries.values()))


# -- the gauges: one per registry, summed over the journals of the clients sharing it ---

_LIVE: weakref.WeakKeyDictionary[CollectorRegistry, weakref.WeakSet[DrJournal]] = (
    weakref.WeakKeyDictionary())


def _watch(metrics: Metrics, journal: DrJournal) -> None:
    registry = metrics.registry
    live = _LIVE.get(registry)
    if live is None:
        live = _LIVE[registry] = weakref.WeakSet()
        metrics.gauge("dr_journal_entries", _summing(live, lambda j: len(j.entries)))
        metrics.gauge("dr_journal_bytes", _summing(live, lambda j: j.bytes))
    live.add(journal)


def _summing(journals: weakref.WeakSet[DrJournal], fn: Callable[[DrJournal], int]
             ) -> Callable[[], float]:
    return lambda: float(sum(fn(j) for j in list(journals)))


__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ENTRIES", "DEFAULT_SKEW_MS", "DrJournal",
           "ENTRY_OVERHEAD", "Entry", "WHEN_FULL", "entry_size"]
