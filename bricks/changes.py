"""The change stream of the partitions this brick serves (DESIGN §12, issue 17).

A reader asks for the committed changes of one partition after a position
(``dds.changepos``); the brick answers a page of rows in lsn order, each with its own
position, and the position after the page.  Only durable rows are served (a staged row's
lsn may be reused if its log append fails, as for a copy's delta) and each row is checked
against its checksum first.

A position made by another replica file, or one this file no longer descends from
exactly, is translated by time: the page starts at this file's highest lsn whose rows
were all staged before the position's safe time minus the clock skew allowed
(``PartitionStore.lsn_before``), so nothing is missed and some changes may come twice.
The guarantees are written up in docs/architecture.md ("Change stream").
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger

from dds.changemsgs import ReadChanges
from dds.drmsgs import DrRead
from dds.changepos import BEGINNING, NOW, Position, decode
from dds.errors import InvalidRequest, NotServing
from dds.messages import Message
from dds.partition import PartitionId

from dds.bricks.context import BrickContext
from dds.bricks.drtags import DrTagStore
from dds.bricks.participant import TxnState
from dds.bricks.partstore import PartitionStore
from dds.bricks.rowcheck import ChecksumMismatch, row_checksum

#: The clock skew allowed between bricks when a position is translated by time.
DEFAULT_MAX_SKEW_S = 1.0
_HELD = (TxnState.PREPARED, TxnState.COMMITTING)
#: How a position was read here (``changes_positions_total{how}``).
_HOW = ("exact", "time", "beginning", "now")


class ChangeStream:
    """The ``changes`` handler.  ``gate(pid, rg, version, fp)``: the data-operation map
    check (``StaleMap``, ``NotServing``) returning the partition; ``blocked()``: RGs
    being re-synced here."""

    log = Logger()

    def __init__(self, ctx: BrickContext, gate: Callable[[str, str, int, int], PartitionId],
                 blocked: Callable[[], Any], max_skew_s: float = DEFAULT_MAX_SKEW_S,
                 tags: DrTagStore | None = None) -> None:
        self.brick_id = ctx.id
        self.clock = ctx.clock
        self.metrics = ctx.metrics
        self.maps = ctx.maps
        self.storage = ctx.storage
        self.participant = ctx.participant
        self.gate = gate
        self.blocked = blocked
        self.max_skew_s = max_skew_s
        #: Where the DR follower's reports of what it applied go (``DrRead``).
        self.tags = tags
        #: Transactions restored from the log at start (``LocalReplicas.restore_prepared``
        #: runs before this is built) carry their restore time, not their prepare time.
        self._started = self.clock.seconds()
        for how in _HOW:        # every series exported from zero
            self.metrics.counter("changes_positions", how=how)

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        """The requests this component answers (``Brick`` dispatches them here)."""
        return {ReadChanges: self.read, DrRead: self.dr_read}

    def dr_read(self, msg: DrRead) -> dict[str, Any]:
        """The DR follower's read (DESIGN §12): a page as ``read``, after recording what
        the DR site says it holds as the partition's tag (once the map check passed)."""
        reply = self.read(msg)
        if self.tags is not None and msg.applied and not reply["ended"]:
            self.tags.record(PartitionId.parse(msg.pid), msg.applied, msg.applied_by)
        return reply

    def read(self, msg: ReadChanges) -> dict[str, Any]:
        try:
            asked = PartitionId.parse(msg.pid)
        except ValueError as e:
            raise InvalidRequest(f"changes: {e}") from None
        start = None if msg.position in (BEGINNING, NOW) else decode(msg.position)
        if start is not None and not (start.pid.covers(asked) or asked.covers(start.pid)):
            raise InvalidRequest(f"changes: the position is one of partition {start.pid}, "
                                 f"not of {asked} (nor of its ancestors or descendants)")
        successors = self._successors(asked)
        if successors is not None:
            self.metrics.inc("changes_pages_total")
            return {"changes": [], "position": msg.position, "more": False,
                    "translated": "ended", "ended": True, "successors": successors}
        pid = self.gate(msg.pid, msg.rg, msg.rg_version, msg.rg_fp)
        text = str(pid)
        if msg.rg in self.blocked() or not self.storage.has_partition(text):
            raise NotServing(f"brick {self.brick_id} cannot serve the changes of {text} "
                             "now (re-syncing)")
        store = self.storage.open_partition(text)
        top = store.committed_lsn()
        after, safe, how = self._resume(store, pid, msg.position, start, top)
        self.metrics.inc("changes_positions", how=how)
        changes: list[list[Any]] = []
        more = False
        last = after
        for key, value, version, lsn, checksum in store.rows_since(after, top):
            if lsn > top:
                break
            if len(changes) == msg.limit:
                more = True
                break
            if checksum is not None and row_checksum(key, version, value) != checksum:
                self.storage.on_damage(text, key)       # repaired from the RG
                raise ChecksumMismatch(text, key)
            last = lsn
            changes.append([key, value, version,
                            Position(pid, store.lineage, lsn, safe).encode()])
        # At the end of what is durable, a fresh safe time holds for the page's end;
        # short of it, the page's start's does (everything before it is at or below).
        end_safe = safe if more else self._safe_time(store, text)
        self.metrics.inc("changes_pages_total")
        self.metrics.inc("changes_rows_total", len(changes))
        return {"changes": changes,
                "position": Position(pid, store.lineage, last if more else max(last, top),
                                     end_safe).encode(),
                "more": more, "translated": how, "ended": False, "successors": []}

    # -- positions ---------------------------------------------------------------------

    def _resume(self, store: PartitionStore, pid: PartitionId, text: str,
                start: Position | None, top: int) -> tuple[int, float, str]:
        """Where to start in this file: (lsn after which to serve, the safe time the
        rows' positions carry, how the position was read)."""
        if text == NOW:
            return top, self._safe_time(store, str(pid)), "now"
        if start is None:
            return 0, 0.0, "beginning"
        if start.pid == pid and store.exact_from(start.lineage, start.lsn):
            if start.lineage == store.lineage and start.lsn > top:
                raise InvalidRequest(f"changes: the position (lsn {start.lsn}) is past the "
                                     f"end of {pid} here (lsn {top}): not made by this "
                                     "replica's lineage")
            return start.lsn, start.safe_time, "exact"
        after = store.lsn_before(start.safe_time - self.max_skew_s)
        return after, start.safe_time, "time" if after else "beginning"

    def _safe_time(self, store: PartitionStore, pid: str) -> float:
        """Every write committed anywhere before this time is at or below the file's
        committed lsn: lowered to the prepare time of the oldest transaction still
        prepared here (it may have committed elsewhere already; it could not before this
        member voted) and to the staging of rows not yet durable."""
        safe = self.clock.seconds()
        for txn in self.participant.active.values():
            if txn.pid_text == pid and txn.state in _HELD:
                # A vote restored at start may be older than the brick: its prepare time
                # is unknown, so nothing before it is vouched for.
                safe = min(safe, txn.prepared_at if txn.prepared_at > self._started
                           else 0.0)
        pending = store.undurable_since()
        if pending is not None:
            safe = min(safe, pending)
        return safe

    def _successors(self, pid: PartitionId) -> list[str] | None:
        """The active partitions that replaced ``pid`` (split or merged), or None while
        it is active somewhere (or this map cannot tell)."""
        active = self.maps.map.partition_rg
        if not active or pid in active:
            return None
        found = sorted(str(p) for p in active if pid.covers(p) or p.covers(pid))
        return found or None


__all__ = ["ChangeStream", "DEFAULT_MAX_SKEW_S"]
