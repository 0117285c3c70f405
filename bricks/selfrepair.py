"""A brick repairs a damaged row by itself, from a healthy member of its RG (issue 13).

Whoever finds a row failing its checksum (a read, a vote, the background walk) reports
it here (``found``): counted (``checksum_failures_total``), logged at a bounded rate, and
repaired in the background while the key keeps answering ``ReplicaDamaged`` (the library
reads another replica meanwhile).

**Repair.**  Ask every other *active* member of the RG that lists the partition for its
row (``row_read``): each answers with the value, version and checksum of its current
row, verified on its side when read, or that a transaction on the key is prepared there
(then the answer is not used), or refuses if its own record does not list it active.  Each answer's checksum is verified again here (it covers
the way between the bricks), and of the good ones the highest version is taken.  It is
installed under the key's lock, only if the lock is free (no transaction on the key is
preparing, prepared or committing here) and the file's row is still damaged; the write
is logged and committed like any other and the lock is held until it is durable.
Otherwise the repair is tried again later, with backoff, a bounded number of times.

**Why the result is linearizable.**  The damaged row was never served, so only what
this replica held before the damage matters: some version ``v`` that a client may have
read here.  ``v`` was committed by 2PC under a record this brick was active in, so this
brick's record is at least that one, and every member active in it voted YES on ``v``
and holds it, or a newer version, or the transaction still prepared; a member that
became active since was copied from an active member (recovery, DESIGN §7) and holds it
too.  So a peer qualifies if this brick's record lists it active (only those are asked)
and its own record does too (it refuses otherwise: it may know it was excluded since).
It needs no lease and may be re-syncing after a restart: while it is active in the
record no write commits without its YES vote, which it does not give while re-syncing,
and its restart kept every write it acknowledged (the log).  That matters after a
whole-RG restart, where the one member that serves first may be the damaged one and
the others ask it for their copies.  A qualifying peer with no transaction prepared on
the key holds ``v`` or a newer committed version, and so does the highest answer.  A newer one is no problem: it
is committed (decided), and the local replica lacks it only because this brick's COMMIT
of it is still on the way, in which case its transaction holds the key's lock here and
the repair waits.  So the installed version is never older than one this replica served,
and never newer than a committed one.  The one rule this breaks, versions only go up,
is broken on purpose: the damaged row's own version cannot be trusted (the flipped byte
may be in it), which is why ``Storage.repair_row`` installs the answer whatever the
damaged row claims.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from dds.deferreds import sleep
from dds.errors import DDSError
from dds.messages import RowRead
from dds.ratelimit import LogLimiter

from dds.bricks.context import BrickContext
from dds.bricks.locks import LockTable
from dds.bricks.rowcheck import row_checksum

__all__ = ["SelfRepair", "BACKOFF_S"]

#: Waits between attempts; the repair gives up after the last (a later read or the
#: scrubber finds the damage again and starts over).
BACKOFF_S = (0.1, 0.3, 1.0, 2.0, 5.0, 10.0)
#: Repairs in progress at most; more damaged keys are counted and left to later reads.
MAX_PENDING = 1000
#: The repair's lock timestamp: younger than any transaction, so a PREPARE arriving
#: meanwhile waits (for one group commit) instead of dying.
_REPAIR_TS = (1 << 62, 0)
ROW_READ_TIMEOUT_S = 5.0


class SelfRepair:
    log = Logger()

    def __init__(self, ctx: BrickContext, locks: LockTable) -> None:
        self.id = ctx.id
        self.storage = ctx.storage
        self.locks = locks
        self.maps = ctx.maps
        self.peer = ctx.peer
        self.clock = ctx.clock
        self.metrics = ctx.metrics
        self._limiter = LogLimiter(ctx.clock, self.log)
        self.pending: set[tuple[str, bytes]] = set()
        self._txids = itertools.count(1)
        self.stopping = False

    def found(self, pid: str, key: bytes) -> None:
        """A row of ``pid`` failed its checksum: count, log, repair (once at a time)."""
        self.metrics.inc("checksum_failures_total")
        self._limiter.warn("partition {pid}: the stored row of key {key!r} fails its "
                           "checksum; not served, repairing it from the RG",
                           pid=pid, key=key[:64])
        if self.stopping or (pid, key) in self.pending:
            return
        if len(self.pending) >= MAX_PENDING:
            self.metrics.inc("checksum_repairs_deferred_total")
            return
        self.pending.add((pid, key))
        d = ensureDeferred(self._repair(pid, key))
        d.addErrback(lambda f: self.log.failure("repair of {pid} failed", f, pid=pid))
        d.addBoth(lambda _: self.pending.discard((pid, key)))

    async def _repair(self, pid: str, key: bytes) -> None:
        why = "no attempt"
        for delay in BACKOFF_S:
            if self.stopping:
                return
            why = await self._attempt(pid, key)
            if not why:
                return
            await sleep(self.clock, delay)
        self.metrics.inc("checksum_repair_failures_total")
        self.log.error("partition {pid}: could not repair key {key!r} ({why}); it answers "
                       "replica_damaged until a read or the scrubber tries again",
                       pid=pid, key=key[:64], why=why)

    async def _attempt(self, pid: str, key: bytes) -> str:
        """One try; "" when done (repaired, or nothing left to repair), else why not."""
        if not self.storage.has_partition(pid) or not self.storage.file_row_damaged(pid, key):
            return ""
        rec = next((r for r in self.maps.map.rgs.values()
                    if self.id in r.active_members
                    and any(str(e.pid) == pid and e.state != "incoming"
                            for e in r.partitions)), None)
        if rec is None:
            # Not an active member (re-syncing, excluded), or the partition still moving
            # in: nothing is served from this replica, and the copy that makes it
            # serve replaces it with a verified one.
            return ""
        answers = []
        problems = []
        for member in sorted(m for m in rec.active_members if m != self.id):
            try:
                conn = await self.peer(member)
                reply = await conn.send(RowRead(pid=pid, key=key, rg=rec.name),
                                        timeout=ROW_READ_TIMEOUT_S)
            except DDSError as e:
                problems.append(f"{member}: {e.message}")
                continue
            good = _healthy(key, reply)
            if good is None:
                problems.append(f"{member}: a prepared transaction or a bad answer")
            else:
                answers.append(good)
        if not answers:
            return "; ".join(problems) or f"no other active member of {rec.name}"
        value, version, checksum = max(answers, key=lambda a: a[1])
        lock_key = (pid, key)
        txid = (-1, next(self._txids))
        if not self.locks.try_acquire(lock_key, txid, _REPAIR_TS):
            return "a transaction on the key is in progress here"
        try:
            if not self.storage.has_partition(pid) or \
                    not self.storage.file_row_damaged(pid, key):
                return ""
            await self.storage.repair_row(pid, key, value, version, checksum)
        finally:
            self.locks.release(lock_key, txid)
        self.metrics.inc("checksum_repairs_total")
        self.log.warn("partition {pid}: repaired key {key!r} at version {version} from "
                      "the RG", pid=pid, key=key[:64], version=version)
        return ""


def _healthy(key: bytes, reply: Any) -> tuple[bytes | None, int, int] | None:
    """A peer's ``row_read`` answer as (value, version, checksum) if it is well formed,
    verifies and is not held by a prepared transaction; None otherwise."""
    if not isinstance(reply, dict) or reply.get("prepared") is not False:
        return None
    value, version, checksum = reply.get("value"), reply.get("version"), reply.get("checksum")
    if not (value is None or type(value) is bytes) or type(version) is not int \
            or type(checksum) is not int or not 0 <= version < 1 << 63:
        return None
    if row_checksum(key, version, value) != checksum:
        return None
    return value, version, checksum
