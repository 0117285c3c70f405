"""Pulling partitions from a copy session of another brick (DESIGN §7, §8): the receiving
half shared by recovery (a brick re-syncing its RG) and moves (a brick of the target RG
taking in a partition).

``Pull`` is one copy session seen from the receiver: it asks the source for snapshots,
pulls them in checksummed chunks with a bounded window (flow control is the receiver
asking only for what it can take), installs them, and applies deltas by log position,
first while writes go on (catching up), then under the source's fence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from dds.deferreds import all_or_raise
from dds.errors import DDSError
from dds.rpc import RPCProtocol

from dds.bricks.mapstate import parse_pid
from dds.bricks.discard import discard_gradually
from dds.bricks.participant import Participant
from dds.bricks.snapshot import CopyFailed, SnapshotReceiver, apply_delta
from dds.bricks.storage import Storage

Peer = Callable[[str], Awaitable[RPCProtocol]]

CHUNK_BYTES = 1 << 20
#: Chunk requests in flight: enough to keep loopback busy.
WINDOW = 4
DELTA_ROWS = 20000
RPC_TIMEOUT_S = 10.0
#: Deltas pulled before the fence, until one is this small (the write pause).
CATCH_UP_ROUNDS = 4
CATCH_UP_DONE_ROWS = 200


class PullFailed(Exception):
    """A request of the pull failed; the message names it.  The caller starts over."""


class Pull:
    def __init__(self, brick_id: str, source: str, peer: Peer, storage: Storage,
                 participant: Participant, clock: IReactorTime, work_dir: Path,
                 durable: bool) -> None:
        self.id = brick_id
        self.source = source
        self.peer = peer
        self.storage = storage
        self.participant = participant
        self.clock = clock
        self.work_dir = Path(work_dir)
        self.durable = durable
        self.session: int | None = None
        self.snapshots: list[dict[str, Any]] = []
        #: Log position applied so far, per partition (the source's numbering).
        self.after: dict[str, int] = {}
        self.bytes_total = 0
        self.bytes_done = 0

    async def call(self, mtype: str, body: dict[str, Any], timeout: float) -> Any:
        try:
            conn = await self.peer(self.source)
            return await conn.call(mtype, body, timeout=timeout)
        except DDSError as e:
            raise PullFailed(f"{mtype} to {self.source}: {e.message}") from None

    async def begin(self, body: dict[str, Any]) -> dict[str, Any]:
        """``copy_begin`` at the source; returns its reply."""
        reply = await self.call("copy_begin", body, 60.0)
        self.session = int(reply["session"])
        self.snapshots = list(reply["snapshots"])
        self.bytes_total = sum(int(s["size"]) for s in self.snapshots)
        return dict(reply)

    async def copy(self) -> None:
        """Pull, verify and install every snapshot of the session.  The replicas are
        replaced only once every file arrived complete."""
        receivers: list[SnapshotReceiver] = []
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            for snap in self.snapshots:
                receiver = SnapshotReceiver(self.work_dir, str(snap["pid"]),
                                            int(snap["size"]), int(snap["checksum"]))
                receivers.append(receiver)
                await self._chunks(snap, receiver)
                receiver.finish(durable=self.durable)
        except BaseException:
            for receiver in receivers:
                receiver.abort()
            raise
        for snap, receiver in zip(self.snapshots, receivers):
            self.participant.forget_partition(parse_pid(str(snap["pid"])))
            trash = receiver.install(self.storage)
            if trash is not None:
                discard_gradually(trash, self.clock)
            self.after[str(snap["pid"])] = int(snap["lsn"])

    async def _chunks(self, snap: dict[str, Any], receiver: SnapshotReceiver) -> None:
        size, pid = int(snap["size"]), str(snap["pid"])
        offsets = list(range(0, size, CHUNK_BYTES))

        async def one(offset: int) -> None:
            n = min(CHUNK_BYTES, size - offset)
            reply = await self.call("copy_chunk", {"session": self.session, "pid": pid,
                                                   "offset": offset, "size": n},
                                    RPC_TIMEOUT_S)
            data = reply["data"]
            if not isinstance(data, bytes) or len(data) != n:
                raise CopyFailed(pid, f"chunk at {offset} has the wrong size")
            receiver.write(offset, data, int(reply["checksum"]))
            self.bytes_done += n

        for start in range(0, len(offsets), WINDOW):
            await all_or_raise([Deferred.fromCoroutine(one(o))
                        for o in offsets[start:start + WINDOW]])

    async def delta(self) -> int:
        """Apply what every partition's source wrote since the last delta; returns how
        many rows."""
        total = 0
        for pid, after in list(self.after.items()):
            while True:
                reply = await self.call("copy_delta", {
                    "session": self.session, "pid": pid, "after_lsn": after,
                    "limit": DELTA_ROWS}, RPC_TIMEOUT_S)
                rows = reply["rows"]
                if rows:
                    apply_delta(self.storage, pid, rows)
                    after = max(after, int(rows[-1][3]))
                    total += len(rows)
                if not reply.get("more"):
                    break
            self.after[pid] = after
        return total

    async def catch_up(self) -> None:
        """Deltas while writes go on, so that the one under the fence is small."""
        for _ in range(CATCH_UP_ROUNDS):
            if await self.delta() <= CATCH_UP_DONE_ROWS:
                return

    def cancel(self, reason: str) -> None:
        """Best effort: the source lifts its fence and deletes its snapshots."""
        if self.session is None:
            return
        d = Deferred.fromCoroutine(self.call("copy_cancel", {"session": self.session,
                                                             "reason": reason[:200]}, 5.0))
        d.addErrback(lambda f: None)
