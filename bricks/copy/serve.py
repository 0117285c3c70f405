"""This brick as a copy source (DESIGN §7, §8): the requests a target sends, checked
before they reach the sessions (``dds.bricks.copy.source``).

- ``copy_begin``: only an active member serving the RG copies; a recovery copies every
  partition of the RG to a member the record lists *recovering*; a move copies the
  partitions it names, each of the RG and *incoming* in an RG of the target.  The rate
  defaults to ``brick.copy_rate_mb_s`` (recovery) or ``brick.move_rate_mb_s`` (move).
- ``copy_fence``, ``copy_chunk``, ``copy_delta``, ``copy_cancel``: the session's.
- ``readmit`` (recovery): under the fence, the target's checksums (if it sent any)
  against ours, the RG's partitions unchanged since the copy began and none incoming,
  then the record change that makes the target active (``RecordChanges.readmit``); the
  fence is lifted either way.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred

from dds.config import BrickConfig
from dds.errors import InvalidRequest, NotServing, Refused
from dds.fencerenew import CopyFenceRenew
from dds.messages import CopyBegin, CopyCancel, CopyChunk, CopyDelta, CopyFence, Message, Readmit
from dds.partition import PartitionId
from dds.records import RGRecord

from dds.bricks.mapstate import MapState, parse_pid
from dds.bricks.storage import Storage
from dds.bricks.copy.layout import partition_layout, render
from dds.bricks.copy.source import CopySessions

#: ``RecordChanges.readmit``: make ``target`` active in ``rg`` (the caller holds the fence).
Readmitter = Callable[[str, str], "Deferred[dict[str, Any]]"]


class CopySource:
    """The source's request handlers; the sessions are ``copies``."""

    def __init__(self, brick_id: str, config: BrickConfig, maps: MapState, storage: Storage,
                 copies: CopySessions, serving: Callable[[str], bool],
                 readmit: Readmitter) -> None:
        self.id = brick_id
        self.config = config
        self.maps = maps
        self.storage = storage
        self.copies = copies
        self.serving = serving
        self._readmit = readmit

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        return {CopyBegin: self.begin, CopyChunk: self.chunk, CopyFence: self.fence,
                CopyDelta: self.delta, Readmit: self.readmit, CopyCancel: self.cancel,
                CopyFenceRenew: self.renew}

    def renew(self, msg: CopyFenceRenew) -> dict[str, Any]:
        return self.copies.renew(msg.session, msg.lapse_ms / 1000.0)

    async def begin(self, msg: CopyBegin) -> dict[str, Any]:
        rec = self.maps.map.rgs.get(msg.rg)
        if rec is None or not self.serving(msg.rg):
            raise NotServing(f"brick {self.id} does not serve {msg.rg}: it cannot be a "
                             "recovery source")
        if msg.pids is not None:
            pids = self._moving_out(rec, msg.target, msg.pids)
        elif rec.member_state(msg.target) != "recovering":
            raise Refused(f"{msg.target} is {rec.member_state(msg.target)} in {msg.rg} "
                          f"v{rec.version}, not recovering")
        else:
            pids = [e.pid for e in rec.partitions]
        move = msg.pids is not None
        rate = (msg.rate_mb_s if msg.rate_mb_s is not None
                else self.config.brick.move_rate_mb_s if move
                else self.config.brick.copy_rate_mb_s)
        reply = await self.copies.begin(msg.rg, msg.target, pids, msg.full_lease, rate,
                                        move=move,
                                        layout=None if move else partition_layout(rec))
        reply["record"] = rec.canonical()
        return reply

    def _moving_out(self, rec: RGRecord, target: str, texts: list[str]) -> list[PartitionId]:
        """The partitions of a move's copy: each in ``rec``, and incoming in an RG of
        ``target`` (DESIGN §8)."""
        pids = [parse_pid(t) for t in texts]
        for pid in pids:
            if rec.partition_state(pid) is None:
                raise Refused(f"{pid} is not a partition of {rec.name}")
            if not any(r.member_state(target) is not None
                       and r.partition_state(pid) == "incoming"
                       for r in self.maps.map.rgs.values()):
                raise Refused(f"{pid} is not incoming in any RG of {target}")
        return pids

    def chunk(self, msg: CopyChunk) -> dict[str, Any] | Deferred[dict[str, Any]]:
        return self.copies.chunk(msg.session, msg.pid, msg.offset, msg.size)

    async def fence(self, msg: CopyFence) -> dict[str, Any]:
        return await self.copies.fence(msg.session)

    def delta(self, msg: CopyDelta) -> dict[str, Any]:
        return self.copies.delta(msg.session, msg.pid, msg.after_lsn, msg.limit)

    async def readmit(self, msg: Readmit) -> dict[str, Any]:
        """Under the fence: compare the target's checksums with ours, then the record
        change that makes it active; the fence is lifted either way."""
        session = self.copies.sessions.get(msg.session)
        if session is None:
            raise InvalidRequest(f"unknown copy session {msg.session}")
        self.copies.readmitting(msg.session)
        try:
            for pid_text, theirs in msg.checksums.items():
                mine = self.storage.open_partition(str(parse_pid(pid_text))).checksum()
                if mine != theirs:
                    raise Refused(f"{session.target}'s copy of {pid_text} has checksum "
                                  f"{theirs:#x}, the source {mine:#x}")
            # Checked on the record the change starts from (no wait in between).
            self._check_layout(session.rg, session.layout)
            reply = await self._readmit(session.rg, session.target)
        except Exception as e:
            self.copies.cancel(msg.session, f"readmission failed: {e!r}")
            raise
        self.copies.finish(msg.session)
        return reply

    def _check_layout(self, rg: str, began: tuple[tuple[str, str], ...] | None) -> None:
        """Readmission only into the partitions the copy copied, none incoming (see
        ``bricks/recovery.py``): a move or split fills an incoming partition only on the
        members it planned with, and a cut-over during the copy changed what to copy."""
        layout = partition_layout(self.maps.map.rgs[rg])
        if began is None:
            began = layout
        incoming = [p for p, state in layout if state == "incoming"]
        if incoming:
            raise Refused(f"{rg} lists {', '.join(incoming)} incoming: readmission waits "
                          "until the move or split is cut over or rolled back")
        if began != layout:
            raise Refused(f"{rg}'s partitions changed during the copy (from "
                          f"{render(began)} to {render(layout)}): copy again")

    def cancel(self, msg: CopyCancel) -> dict[str, Any]:
        self.copies.cancel(msg.session, msg.reason or "cancelled by the target")
        return {}


__all__ = ["CopySource"]
