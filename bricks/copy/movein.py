"""Taking in a partition that moves to this brick's RG (DESIGN §8), on each member of the
target RG, where the partition is *incoming*.

``dds-admin move`` drives the steps and journals them: ``pull`` (snapshot copy and
catch-up from a member of the source RG, after which the pull keeps following the
source's writes), then, once the source fenced writes, ``finish`` (the last delta).  The cut-over itself is two record changes made by the admin tool.
A pull that is asked again starts over, so a resumed move simply repeats it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.logger import Logger

from dds.errors import InvalidRequest, Refused
from dds.messages import CopyBegin, Message, MoveFinish, MovePull

from dds.bricks.context import BrickContext
from dds.bricks.mapstate import parse_pid
from dds.bricks.copy.pull import Pull, PullFailed, Streams
from dds.bricks.copy.snapshot import CopyFailed


class IncomingMoves:
    log = Logger()

    def __init__(self, ctx: BrickContext, work_dir: Path,
                 streams: Streams | None = None) -> None:
        self.ctx = ctx
        self.id = ctx.id
        self.maps = ctx.maps
        self.work_dir = Path(work_dir)
        self.metrics = ctx.metrics
        self.streams = streams
        self.pulls: dict[str, Pull] = {}
        #: Partitions whose last delta was applied, with the session it came from: a
        #: ``finish`` asked again (repair) answers from here.
        self.finished: dict[str, int | None] = {}

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        """The requests this component answers (``Brick`` dispatches them here)."""
        return {MovePull: self.pull, MoveFinish: self.finish}

    def _incoming_rg(self, pid_text: str) -> str:
        pid = parse_pid(pid_text)
        for rec in self.maps.map.rgs.values():
            if rec.member_state(self.id) is not None and \
                    rec.partition_state(pid) == "incoming":
                return rec.name
        raise Refused(f"{pid} is not incoming in any RG of brick {self.id}")

    def _holds_active(self, pid_text: str) -> bool:
        """Whether this brick already serves ``pid`` as an active member of the RG it
        moves from (the two RGs share this brick): its replica is that partition, up to
        date with every write, and it is the same file after the cut-over.  Also once
        that RG marked it outgoing: nobody writes it from then until the cut-over."""
        pid = parse_pid(pid_text)
        return any(rec.partition_state(pid) in ("active", "outgoing")
                   and self.id in rec.active_members
                   for rec in self.maps.map.rgs.values())

    async def pull(self, msg: MovePull) -> dict[str, Any]:
        self._incoming_rg(msg.pid)
        if self._holds_active(msg.pid):
            return {"session": None, "bytes": 0, "local": True}
        self.finished.pop(msg.pid, None)
        old = self.pulls.pop(msg.pid, None)
        if old is not None:
            old.cancel("superseded by a new pull")
        pull = Pull(self.ctx, msg.source, self.work_dir, self.streams)
        self.pulls[msg.pid] = pull
        try:
            await pull.begin(CopyBegin(rg=msg.from_rg, target=self.id, pids=[msg.pid],
                                       rate_mb_s=msg.rate_mb_s))
            await pull.copy()
            await pull.catch_up()
            pull.follow()
        except (PullFailed, CopyFailed, KeyError, TypeError, ValueError) as e:
            pull.cancel(repr(e))
            self.pulls.pop(msg.pid, None)
            self.log.warn("taking in {pid} from {source} failed: {error}", pid=msg.pid,
                          source=msg.source, error=str(e))
            raise Refused(f"copy of {msg.pid} from {msg.source} failed: {e}") from None
        self.metrics.inc("move_pulls_total")
        self.log.info("took in {pid} from {source}: {bytes} bytes, caught up", pid=msg.pid,
                      source=msg.source, bytes=pull.bytes_total)
        return {"session": pull.session, "bytes": pull.bytes_total}

    def status(self) -> dict[str, Any]:
        return {pid: {"source": p.source, "session": p.session, "bytes_total": p.bytes_total,
                      "bytes_done": p.bytes_done} for pid, p in self.pulls.items()}

    async def finish(self, msg: MoveFinish) -> dict[str, Any]:
        """The last delta, under the source's fence.  Asked again once it was applied
        (``dds-admin repair`` checks a cut-over that began), it answers ``again``
        without pulling anything."""
        pull = self.pulls.get(msg.pid)
        if pull is None and self._holds_active(msg.pid):
            return {"rows": 0, "local": True}
        if pull is None and msg.pid in self.finished:
            return {"rows": 0, "again": True, "session": self.finished[msg.pid]}
        if pull is None:
            raise InvalidRequest(f"no copy of {msg.pid} in progress on brick {self.id}")
        pull.stop_following()
        try:
            rows = await pull.delta()
        except (PullFailed, CopyFailed, KeyError, TypeError, ValueError) as e:
            raise Refused(f"last delta of {msg.pid} failed: {e}") from None
        self.pulls.pop(msg.pid, None)
        self.finished[msg.pid] = pull.session
        # No checksum here: this runs under the source's fence (scrub compares later).
        return {"rows": rows}
