"""The DR site's side of the follower (DESIGN §12): ``dr_apply`` writes rows of the
primary's change stream into this brick's replica, ``dr_marks`` says how far they came.

``dr_apply`` is gated as a data operation: the route's map check (``StaleMap``), this
brick serving the RG (a lease, not re-syncing: ``NotServing``), the partition not fenced
(``Recovering``, as a copy's final delta or a split's cut-over fences writes) and room
on the disk.  It is refused (``Refused``) unless this site's DR record says it follows a
primary: a promoted site must not take the stream of the site it replaced.  Every row's
key must belong to the partition (``InvalidRequest``); a key held by a transaction (a
self-repair, a journal replay) makes the whole request ``Locked`` (retryable).  Any
refusal applies nothing.

The rows are written at their own versions where the replica's copy is older (a page
sent twice changes nothing) in one durable transaction of the partition file, with the
request's marks (``Storage.dr_apply``): the file's next lsns, so the DR site's own change
stream, checksums, deltas and copies see them as any write.  The marks are the
file's: a replica installed by a copy has those of the file it copied, one rebuilt by a
split or merge starts without (it reports none until the follower's next request).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.logger import Logger

from dds.changepos import decode
from dds.drmsgs import MAX_PIDS, DrApply, DrMarks
from dds.errors import InvalidRequest, KeyTooLarge, Locked, NotServing, Recovering, Refused
from dds.messages import Message
from dds.partition import PartitionId

from dds.bricks.context import BrickContext

if TYPE_CHECKING:
    from dds.bricks.diskspace import DiskSpace
    from dds.bricks.locks import LockTable

#: ``gate(pid, rg, version, fp)``: the data path's map check, returning the partition.
Gate = Callable[[str, str, int, int], PartitionId]
#: ``serving(rg, pid)``: raises unless this brick serves the RG now (lease, re-sync).
Serving = Callable[[str, str], None]


def check_marks(marks: dict[Any, Any]) -> dict[str, list[Any]]:
    """``{primary pid: [position, safe_ms]}`` as the follower sends it, or
    ``InvalidRequest`` naming what is wrong (each position must be of its partition)."""
    if len(marks) > MAX_PIDS:
        raise InvalidRequest(f"dr_apply: at most {MAX_PIDS} marks, got {len(marks)}")
    out: dict[str, list[Any]] = {}
    for pid, mark in marks.items():
        try:
            parsed = PartitionId.parse(pid)
        except (TypeError, ValueError) as e:
            raise InvalidRequest(f"dr_apply: mark of {pid!r:.40}: {e}") from None
        if not isinstance(mark, (list, tuple)) or len(mark) != 2 \
                or type(mark[0]) is not str or type(mark[1]) is not int or mark[1] < 0:
            raise InvalidRequest(f"dr_apply: the mark of {parsed} must be [position, "
                                 "safe_ms >= 0]")
        pos = decode(mark[0])
        if pos.pid != parsed:
            raise InvalidRequest(f"dr_apply: the mark of {parsed} is a position of "
                                 f"{pos.pid}")
        out[str(parsed)] = [mark[0], mark[1]]
    return out


class DrApplier:
    """``dr_apply`` and ``dr_marks`` (``Brick`` dispatches them here)."""

    log = Logger()

    def __init__(self, ctx: BrickContext, gate: Gate, serving: Serving, locks: LockTable,
                 disk: DiskSpace, max_key_bytes: int, max_value_bytes: int) -> None:
        self.id = ctx.id
        self.clock = ctx.clock
        self.maps = ctx.maps
        self.metrics = ctx.metrics
        self.storage = ctx.storage
        self.participant = ctx.participant
        self.gate = gate
        self.serving = serving
        self.locks = locks
        self.disk = disk
        self.max_key = max_key_bytes
        self.max_value = max_value_bytes

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        return {DrApply: self.apply, DrMarks: self.marks}

    def apply(self, msg: DrApply) -> dict[str, int]:
        try:
            pid, marks = self._check(msg)
            applied, skipped = self.storage.dr_apply(str(pid), msg.rows, marks)
        except Exception:
            self.metrics.inc("dr_apply_refused_total")
            raise
        self.metrics.inc("dr_rows_applied_total", applied)
        self.metrics.inc("dr_rows_skipped_total", skipped)
        return {"applied": applied, "skipped": skipped}

    def _check(self, msg: DrApply) -> tuple[PartitionId, dict[str, list[Any]]]:
        """Every gate of ``dr_apply``, before anything is written."""
        rec = self.maps.map.dr
        if rec is None or rec.mode != "follower":
            what = ("a primary without a DR record" if rec is None
                    else f"a primary promoted at epoch {rec.epoch}" if rec.promoted
                    else "a primary")
            raise Refused(f"dr_apply refused: this cluster is {what}, not a DR site "
                          "following one (dds-admin dr attach)")
        pid = self.gate(msg.pid, msg.rg, msg.rg_version, msg.rg_fp)
        text = str(pid)
        self.serving(msg.rg, text)
        if not self.storage.has_partition(text):
            raise NotServing(f"brick {self.id} holds no replica of {text}")
        if self.participant.fenced and pid in self.participant.fenced:
            raise Recovering(f"writes to {text} are fenced while a replica re-syncs")
        if self.disk.full:
            raise self.disk.refusal()
        for key, value, _version in msg.rows:
            if len(key) > self.max_key:
                raise KeyTooLarge(f"dr_apply: a key of {len(key)} bytes exceeds the limit "
                                  f"of {self.max_key} bytes")
            if value is not None and len(value) > self.max_value:
                raise InvalidRequest(f"dr_apply: a value of {len(value)} bytes exceeds the "
                                     f"limit of {self.max_value} bytes")
            if not pid.owns(key):
                raise InvalidRequest(f"dr_apply: key {key[:64]!r} does not belong to "
                                     f"partition {text}")
        marks = check_marks(msg.marks)
        for key, _value, _version in msg.rows:
            if self.locks.holder((text, key)) is not None:
                raise Locked(f"dr_apply: key {key[:64]!r} of {text} is held by a "
                             "transaction; try again")
        return pid, marks

    def marks(self, msg: DrMarks) -> dict[str, Any]:
        """The marks of every partition this brick holds as an active member."""
        out: dict[str, dict[str, list[Any]]] = {}
        cmap = self.maps.map
        for pid, rec in cmap.partition_rg.items():
            text = str(pid)
            if self.id in rec.active_members and self.storage.has_partition(text):
                out[text] = self.storage.open_partition(text).dr_marks()
        return {"marks": out, "now_ms": int(self.clock.seconds() * 1000)}


__all__ = ["DrApplier", "check_marks"]
