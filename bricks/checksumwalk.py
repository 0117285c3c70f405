"""The background walk over every stored row: checksum migration and the scrubber.

Two jobs share one walk in key order through each partition file, in small batches on
the reactor thread (the brick serves between them):

- **Migration** (issue 13): a file written before row checksums (schema 1) gets the
  ``checksum`` column when it is opened (``PartitionStore._migrate``) and is flagged;
  the walk computes the checksum of each row that has none, batch after batch
  as fast as it goes, whatever the scrub rate, and clears the flag at the end of the
  file (a batch of 500 rows or 1 MB, then a millisecond's pause).  Until then such
  rows are served unverified.  Each update is guarded by the
  row's version, so a row written meanwhile (which has its own checksum) is left alone.
- **Scrub**: every ``SCRUB_TICK_S`` it verifies about ``brick.scrub_mb_s`` ×
  ``SCRUB_TICK_S`` bytes of rows (keys and values) against their checksums, partition
  after partition, and starts over when it has done them all (one *pass*; a pass
  starts at most once a minute).  A row that fails is checked again through
  ``Storage.file_row_damaged`` (a write may have replaced it since the batch was read)
  and handed to the self-repair (``bricks/selfrepair.py``), exactly as a read that
  found it.

Progress (``status()``, and gauges in ``/metrics``): bytes verified in the current pass,
the pass number, when the last pass completed.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from dds.metrics import Metrics

from dds.bricks.partstore import PartitionStore
from dds.bricks.rowcheck import row_checksum
from dds.bricks.storage import Storage

__all__ = ["ChecksumWalk", "SCRUB_TICK_S", "SCRUB_MIN_PASS_S", "MIGRATE_ROWS",
           "MIGRATE_PAUSE_S"]

#: The scrubber wakes this often and verifies its share of the rate each time.
SCRUB_TICK_S = 0.25
#: A pass starts at most this often: a small brick is not rescanned over and over.
SCRUB_MIN_PASS_S = 60.0
#: Rows and bytes per batch (migration: per step; scrub: per tick at most).
MIGRATE_ROWS = 500
#: Pause between two migration batches: the brick's requests go first.
MIGRATE_PAUSE_S = 0.001
BATCH_BYTES = 1 << 20


class ChecksumWalk:
    log = Logger()

    def __init__(self, storage: Storage, clock: IReactorTime, metrics: Metrics,
                 scrub_mb_s: float, on_damage: Callable[[str, bytes], None]) -> None:
        self.storage = storage
        self.clock = clock
        self.metrics = metrics
        self.rate = scrub_mb_s * 1_000_000
        self.on_damage = on_damage
        #: Scrub position: the partition and the last key verified in it.
        self._scrub_pid: str | None = None
        self._scrub_after = b""
        self._scrub_todo: list[str] = []
        self.pass_number = 0
        self.bytes_verified = 0          # in the current pass
        self.last_pass_completed = 0.0   # clock time; 0: none yet
        self._pass_started = float("-inf")
        #: Migration: partitions still to look at, and the one in progress.
        self._migrate_todo: list[str] = []
        self._migrate_after = b""
        self._migrate_call: IDelayedCall | None = None
        self._scrub_call: IDelayedCall | None = None
        self.running = False
        metrics.gauge("scrub_bytes_verified", lambda: self.bytes_verified)
        metrics.gauge("scrub_pass", lambda: self.pass_number)
        metrics.gauge("scrub_last_pass_completed_seconds", lambda: self.last_pass_completed)
        metrics.gauge("checksum_migrations_pending", lambda: len(self._migrate_todo))

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        self._migrate_todo = self.storage.partitions()
        self._migrate_soon()
        if self.rate > 0:
            self._scrub_call = self.clock.callLater(SCRUB_TICK_S, self._scrub_tick)

    def stop(self) -> None:
        self.running = False
        for call in (self._migrate_call, self._scrub_call):
            if call is not None and call.active():
                call.cancel()
        self._migrate_call = self._scrub_call = None

    def status(self) -> dict[str, object]:
        return {"scrub_mb_s": self.rate / 1_000_000, "pass": self.pass_number,
                "bytes_verified": self.bytes_verified,
                "last_pass_completed": self.last_pass_completed or None,
                "partition": self._scrub_pid, "migrating": len(self._migrate_todo)}

    def migrate(self, pid: str) -> None:
        """Look at ``pid`` for rows without a checksum (a replica installed from an
        older brick's copy, say)."""
        if self.running and pid not in self._migrate_todo:
            self._migrate_todo.append(pid)
            self._migrate_soon()

    # -- migration ---------------------------------------------------------------------

    def _migrate_soon(self) -> None:
        if self.running and self._migrate_todo and self._migrate_call is None:
            self._migrate_call = self.clock.callLater(MIGRATE_PAUSE_S, self._migrate_step)

    def _open(self, pid: str) -> PartitionStore | None:
        if not self.storage.has_partition(pid):
            return None
        try:
            return self.storage.open_partition(pid)
        except Exception as e:  # noqa: BLE001 -- unreadable files are another module's
            self.log.warn("checksum walk: cannot open {pid}: {error}", pid=pid, error=e)
            return None

    def _migrate_step(self) -> None:
        self._migrate_call = None
        if not self._migrate_todo:
            return
        pid = self._migrate_todo[0]
        store = self._open(pid)
        if store is None or store.closed or not store.checksums_missing:
            self._migrate_todo.pop(0)
            self._migrate_after = b""
        else:
            try:
                done = self._batch(store, pid, self._migrate_after, MIGRATE_ROWS,
                                   BATCH_BYTES, migrate=True)
            except Exception as e:  # noqa: BLE001 -- tried again from the start later
                self.log.warn("checksum migration of {pid} failed: {error!r}", pid=pid,
                              error=e)
                self._migrate_todo.pop(0)
                self._migrate_after = b""
            else:
                if done is None:
                    store.checksums_done()
                    self.log.info("checksum migration of {pid} complete", pid=pid)
                    self._migrate_todo.pop(0)
                    self._migrate_after = b""
                else:
                    self._migrate_after = done[0]
        self._migrate_soon()

    # -- scrub -------------------------------------------------------------------------

    def _scrub_tick(self) -> None:
        self._scrub_call = None
        if not self.running:
            return
        budget = max(1, int(self.rate * SCRUB_TICK_S))
        try:
            self._scrub(budget)
        except Exception as e:  # noqa: BLE001 -- the walk moves on to the next partition
            self.log.warn("scrub of {pid} failed: {error!r}", pid=self._scrub_pid, error=e)
            self._scrub_pid = None
        self._scrub_call = self.clock.callLater(SCRUB_TICK_S, self._scrub_tick)

    def _scrub(self, budget: int) -> None:
        while budget > 0:
            if self._scrub_pid is None:
                if not self._scrub_todo:            # a new pass
                    now = self.clock.seconds()
                    if now - self._pass_started < SCRUB_MIN_PASS_S:
                        return
                    self._pass_started = now
                    self._scrub_todo = self.storage.partitions()
                    self.pass_number += 1
                    self.bytes_verified = 0
                    if not self._scrub_todo:
                        return
                self._scrub_pid = self._scrub_todo.pop(0)
                self._scrub_after = b""
            pid = self._scrub_pid
            store = self._open(pid)
            done = None if store is None or store.closed else self._batch(
                store, pid, self._scrub_after, MIGRATE_ROWS, min(budget, BATCH_BYTES),
                migrate=False)
            if done is None:
                self._scrub_pid = None
                if not self._scrub_todo:
                    self.last_pass_completed = self.clock.seconds()
                    return          # the next pass starts at the next tick
                continue
            self._scrub_after, used = done
            budget -= max(1, used)

    # -- one batch ---------------------------------------------------------------------

    def _batch(self, store: PartitionStore, pid: str, after: bytes, rows: int,
               max_bytes: int, *, migrate: bool) -> tuple[bytes, int] | None:
        """Verify (and, with ``migrate``, give checksums to) the rows after key
        ``after``, up to ``rows`` rows or ``max_bytes`` bytes; returns (last key, bytes)
        or None at the end of the file."""
        batch = store.walk(after, rows)
        if not batch:
            return None
        used = seen = 0
        missing: list[tuple[int, bytes, int]] = []
        last = after
        for key, value, version, checksum in batch:
            last = key
            seen += 1
            used += len(key) + (len(value) if value is not None else 0)
            computed = row_checksum(key, version, value)
            if checksum is None:
                if migrate:
                    missing.append((computed, key, version))
            elif computed != checksum:
                if self.storage.file_row_damaged(pid, key):
                    self.on_damage(pid, key)
            if used >= max_bytes:
                break
        if missing:
            store.set_checksums(missing)
            self.metrics.inc("checksums_migrated_total", len(missing))
        if not migrate:
            self.bytes_verified += used
            self.metrics.inc("scrub_rows_verified_total", seen)
        return last, used
