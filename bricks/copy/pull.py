"""Pulling partitions from a copy session of another brick (DESIGN §7, §8): the receiving
half shared by recovery (a brick re-syncing its RG) and moves (a brick of the target RG
taking in a partition).

``Pull`` is one copy session seen from the receiver: it asks the source for snapshots,
takes each as a stream in a thread of its own when the source offers one (a port and
the session's token in the ``copy_begin`` reply) and the pull has ``streams``
(``dds.bricks.copy.streamclient``: block checksums, no request per MiB, low CPU priority,
TLS in TLS mode), else pulls it in checksummed chunks with a bounded window (flow control is
the receiver asking only for what it can take), installs them, and applies deltas by
log position, first while writes go on (catching up), then under the source's fence.

A move's pull goes on *following* the source after its catch-up (``follow``: a delta
every ``FOLLOW_S``), because the targets of a move finish their copies at different
times and the fence comes only after the last one: without it, the fenced delta of the
first target to finish would hold every write since then.  Deltas are applied one at a
time, so the last one (``delta`` under the fence) waits for a following one in flight.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from dds.deferreds import all_or_raise
from dds.errors import DDSError
from dds.messages import (CopyBegin, CopyCancel, CopyChunk, CopyDelta, CopyFence, Message,
                          Readmit)
from dds.replies import (CopyBeginReply, CopyChunkReply, CopyDeltaReply, CopyFenceReply,
                         Reply)

from dds.bricks.context import BrickContext
from dds.bricks.mapstate import parse_pid
from dds.bricks.discard import discard_gradually
from dds.bricks.copy.snapshot import CopyFailed, SnapshotReceiver, apply_delta
from dds.bricks.copy.streamclient import (TOKEN_BYTES, CallFromThread, StreamError, in_thread,
                                     receive)

if TYPE_CHECKING:
    from dds.config import BrickConfig

R = TypeVar("R", bound=Reply)
CHUNK_BYTES = 1 << 20
#: Chunk requests in flight: enough to keep loopback busy.
WINDOW = 4
#: Rows per delta request.  Each request is read at the source and applied at the target
#: in one reactor turn: 20,000 rows held a target's reactor 350-400 ms and the source's
#: (which every write waits on) 45-65 ms; 1,000 rows take a few ms at the source.
DELTA_ROWS = 1000
RPC_TIMEOUT_S = 10.0
#: ``copy_fence`` drains the transactions in flight first (bounded by the source's
#: ``timeouts.copy_fence_ms``).
FENCE_TIMEOUT_S = 30.0
#: Deltas pulled before the fence, until one is this small (the write pause).
CATCH_UP_ROUNDS = 4
CATCH_UP_DONE_ROWS = 200
#: A following pull asks for a delta this often.
FOLLOW_S = 0.05


@attrs.frozen
class Streams:
    """What a pull needs to take snapshots as streams: the reactor's
    ``callFromThread`` and, in TLS mode, a client context with the brick's certificate.
    No secret: each copy session's reply carries a token of its own (``begin``)."""

    call_from_thread: CallFromThread
    ssl_client: ssl.SSLContext | None = attrs.field(default=None, repr=False)

    @classmethod
    def for_brick(cls, config: BrickConfig, call_from_thread: CallFromThread) -> Streams:
        """A brick's: in TLS mode (``credentials.tls``) its certificate, the cluster CA
        the only trust root."""
        tls = config.credentials.tls
        if tls is None:
            return cls(call_from_thread)
        from dds.tls import ssl_context
        return cls(call_from_thread, ssl_context(tls, server=False))


class PullFailed(Exception):
    """A request of the pull failed; the message names it.  The caller starts over."""


class Pull:
    log = Logger()

    def __init__(self, ctx: BrickContext, source: str, work_dir: Path,
                 streams: Streams | None = None) -> None:
        self.id = ctx.id
        self.source = source
        self.peer = ctx.peer
        self.storage = ctx.storage
        self.participant = ctx.participant
        self.clock = ctx.clock
        self.work_dir = Path(work_dir)
        #: Received files are fsynced before they are installed (``fsync`` mode).
        self.fsyncs = ctx.fsyncs
        self.session: int | None = None
        self.snapshots: list[dict[str, Any]] = []
        #: Log position applied so far, per partition (the source's numbering).
        self.after: dict[str, int] = {}
        self.bytes_total = 0
        self.bytes_done = 0
        self._applying = DeferredLock()
        self._follow: IDelayedCall | None = None
        self.following = False
        #: How to take snapshots as streams (None: chunk requests only), and the
        #: source's stream port and this session's token (from ``copy_begin``).
        self.streams = streams
        self.stream_port: int | None = None
        self.stream_token: bytes | None = None
        self._stop = threading.Event()

    async def call(self, msg: Message, timeout: float) -> Any:
        try:
            conn = await self.peer(self.source)
            return await conn.send(msg, timeout=timeout)
        except DDSError as e:
            raise PullFailed(f"{msg.TYPE} to {self.source}: {e.message}") from None

    async def begin(self, msg: CopyBegin) -> CopyBeginReply:
        """``copy_begin`` at the source; returns its reply."""
        reply = await self._reply(CopyBeginReply, msg, 60.0)
        self.session = reply.session
        self.snapshots = list(reply.snapshots)
        self.bytes_total = sum(int(s["size"]) for s in self.snapshots)
        stream = reply.stream
        if stream is not None and len(stream["token"]) == TOKEN_BYTES:
            self.stream_port = int(stream["port"])
            self.stream_token = stream["token"]
        return reply

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
                if not await self._stream(snap, receiver):
                    await self._chunks(snap, receiver)
                receiver.finish(fsync=self.fsyncs)
                await self._verify_rows(receiver)
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

    async def _verify_rows(self, receiver: SnapshotReceiver) -> None:
        """Every row of the received file against its checksum (``verify_rows``), in a
        thread of its own where there are threads (a 100 MB file takes a second)."""
        if self.streams is None:
            receiver.verify_rows()
        else:
            await in_thread(self.streams.call_from_thread, receiver.verify_rows)

    async def _stream(self, snap: dict[str, Any], receiver: SnapshotReceiver) -> bool:
        """Take the snapshot as one stream (``dds.bricks.copy.stream``), in a thread.  False
        if there is no stream to take, or it failed before any byte (then chunk
        requests do); a stream that fails later fails the copy."""
        streams, port, token = self.streams, self.stream_port, self.stream_token
        if streams is None or port is None or token is None or self.session is None:
            return False
        try:
            conn = await self.peer(self.source)
        except DDSError:
            return False
        peer = conn.transport.getPeer() if conn.transport is not None else None
        host = getattr(peer, "host", None)
        if not isinstance(host, str) or not host:
            return False
        base = self.bytes_done
        received = [0]

        def progress(pos: int) -> None:       # in the stream's thread
            received[0] = pos
            self.bytes_done = base + pos
        try:
            await in_thread(streams.call_from_thread, receive, host, port, token,
                            self.session, str(snap["pid"]), int(snap["size"]),
                            receiver.write, progress, self._stop,
                            ssl_context=streams.ssl_client)
        except StreamError as e:
            if received[0] or self._stop.is_set():
                raise PullFailed(f"snapshot stream of {snap['pid']} from {self.source}: "
                                 f"{e}") from None
            self.log.warn("no snapshot stream from {source} ({error}): chunk requests "
                          "instead", source=self.source, error=str(e))
            return False
        return True

    async def _chunks(self, snap: dict[str, Any], receiver: SnapshotReceiver) -> None:
        size, pid = int(snap["size"]), str(snap["pid"])
        offsets = list(range(0, size, CHUNK_BYTES))

        async def one(offset: int) -> None:
            n = min(CHUNK_BYTES, size - offset)
            reply = await self._reply(CopyChunkReply, CopyChunk(
                session=self._session(), pid=pid, offset=offset, size=n), RPC_TIMEOUT_S)
            data = reply.data
            if len(data) != n:
                raise CopyFailed(pid, f"chunk at {offset} has the wrong size")
            receiver.write(offset, data, reply.checksum)
            self.bytes_done += n

        for start in range(0, len(offsets), WINDOW):
            await all_or_raise([Deferred.fromCoroutine(one(o))
                        for o in offsets[start:start + WINDOW]])

    async def fence(self) -> CopyFenceReply:
        """``copy_fence``: the source fences writes for the last delta (a recovery's; a
        move's fence is asked for by the admin tool)."""
        return await self._reply(CopyFenceReply, CopyFence(session=self._session()),
                                 FENCE_TIMEOUT_S)

    async def readmit(self) -> dict[str, Any]:
        """``readmit``: the source makes this brick active (DESIGN §5) under its fence,
        then lifts the fence.  ``{"record": the new RG record}``."""
        reply: dict[str, Any] = await self.call(Readmit(session=self._session()),
                                                RPC_TIMEOUT_S + 10.0)
        return reply

    def _session(self) -> int:
        if self.session is None:
            raise PullFailed(f"no copy session with {self.source} (copy_begin first)")
        return self.session

    async def _reply(self, kind: type[R], msg: Message, timeout: float) -> R:
        """``msg``'s reply as ``kind``; a malformed one fails the pull as a failed call
        does."""
        reply = await self.call(msg, timeout)
        try:
            return kind.from_wire(reply)
        except DDSError as e:
            raise PullFailed(f"{msg.TYPE} to {self.source}: {e.message}") from None

    async def delta(self) -> int:
        """Apply what every partition's source wrote since the last delta; returns how
        many rows.  Waits for a delta in flight (a following one) first."""
        await self._applying.acquire()
        try:
            return await self._delta()
        finally:
            self._applying.release()

    async def _delta(self) -> int:
        total = 0
        for pid, after in list(self.after.items()):
            while True:
                reply = await self._reply(CopyDeltaReply, CopyDelta(
                    session=self._session(), pid=pid, after_lsn=after, limit=DELTA_ROWS),
                    RPC_TIMEOUT_S)
                rows = reply.rows
                if rows:
                    apply_delta(self.storage, pid, rows)
                    after = max(after, int(rows[-1][3]))
                    total += len(rows)
                if not reply.more:
                    break
            self.after[pid] = after
        return total

    async def catch_up(self) -> None:
        """Deltas while writes go on, so that the one under the fence is small."""
        for _ in range(CATCH_UP_ROUNDS):
            if await self.delta() <= CATCH_UP_DONE_ROWS:
                return

    def follow(self, interval: float = FOLLOW_S) -> None:
        """Pull a delta every ``interval`` until ``stop_following`` (or one fails)."""
        self.following = True
        self._follow_later(interval)

    def stop_following(self) -> None:
        self.following = False
        if self._follow is not None and self._follow.active():
            self._follow.cancel()
        self._follow = None

    def _follow_later(self, interval: float) -> None:
        self._follow = self.clock.callLater(interval, self._follow_once, interval)

    def _follow_once(self, interval: float) -> None:
        self._follow = None
        if not self.following:
            return

        def again(_: object) -> None:
            if self.following:
                self._follow_later(interval)

        def failed(f: Any) -> None:
            self.following = False
            self.log.info("following {source} stopped: {error}", source=self.source,
                          error=str(f.value))
        Deferred.fromCoroutine(self.delta()).addCallbacks(again, failed)

    def cancel(self, reason: str) -> None:
        """Best effort: the source lifts its fence and deletes its snapshots."""
        self.stop_following()
        self._stop.set()
        if self.session is None:
            return
        d = Deferred.fromCoroutine(self.call(CopyCancel(session=self.session,
                                                        reason=reason[:200]), 5.0))
        d.addErrback(lambda f: None)
