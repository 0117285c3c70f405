"""The source side of a copy (DESIGN §7, §8): one state machine per copy session, and the
one registry of the sessions this brick serves.

A recovering brick, or a member of an RG a partition moves into (the *target*), asks an
active member (this brick, the *source*) for a copy of partitions.  Each session goes::

    SNAPSHOTTING ──snapshots taken──▶ STREAMING ──fence()──▶ FENCED ──readmitting()──▶ READMITTING
         │                               │                     │                          │
         │                               │                     │ fence lapses             │ finish()
         ▼                               ▼                     ▼                          ▼
     CANCELLED ◀──── cancel(), a new begin for the same (rg, target), idle 60 s ────      DONE

- **SNAPSHOTTING** (``begin``): a consistent snapshot of every partition, taken in a worker
  thread while writes go on (with ``fence_whole_copy``, the original DDS behaviour and
  ``full_lease`` on the wire, writes are fenced first, for the whole copy, and the delta
  is then empty).
- **STREAMING**: the target pulls the snapshots in checksummed chunks (``chunk``).
- **FENCED** (``fence``): new PREPAREs for the partitions fail ``Recovering``, the ones in
  flight drain (``Participant.quiesce``), the log is flushed; the target pulls the rows
  written since each snapshot (``delta``).  Writes are paused from here only; the fence
  lapses after ``fence_s`` (the session is cancelled) unless readmission starts first, so a
  target that dies cannot stop the RG's writes for long.
- **READMITTING** (``readmitting``): this brick is changing the RG record to make the
  target active (DESIGN §5).  The fence must hold until that change is decided, so the
  fence timer no longer lifts it; ``finish`` (or ``cancel`` on failure) does.  A move's
  session goes here at its fence: the admin tool lifts it (``cancel``) after the cut-over.
- **DONE** / **CANCELLED**: the fence is lifted and the snapshot files are deleted.

**Shared snapshots.**  Sessions of one partition begun close together share one snapshot
file (``dds.bricks.copy.shared``).

**Streams.**  With a ``stream`` server (a brick on real sockets), the ``copy_begin``
reply names the port of this brick's :class:`~dds.bricks.copy.stream.StreamServer` and a
random token made for the session, which opens that session's snapshots and nothing
else: the target may take each snapshot as one stream in a thread of its own instead of
``chunk`` requests; the session's rate limit holds for both.  The token travels only in
that reply, on the brick-role RPC connection that authenticated both ends, so neither a
shared secret nor a client's credentials open a stream.  The sessions own the server:
they count its refusals (``stream_refused_total``, ``stream_auth_failures_total``) and
close it in ``close``.

A session with no request from its target for ``IDLE_S`` is cancelled (not while
snapshotting or readmitting: those wait on this brick, not on the target).  At most one
session runs per (rg, target): a target that restarts its recovery supersedes its old
session.  Everything runs on the reactor thread except the snapshots themselves.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from pathlib import Path
from typing import Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from dds import failpoints
from dds.errors import InternalError, InvalidRequest, NotServing, Timeout
from dds.fencerenew import STALL_S
from dds.partition import PartitionId

from dds.bricks.context import BrickContext
from dds.bricks.copy.session import (ENDED_MEMORY, IDLE_S, LIVE, SERVING, CopySession,
                                     CopyState, Layout)
from dds.bricks.copy.shared import SharedSnapshots
from dds.bricks.copy.snapshot import SnapshotInfo, read_chunk
from dds.bricks.rowcheck import ChecksumMismatch, row_checksum
from dds.bricks.copy.stream import AUTH, TOKEN_BYTES, StreamServer, background

_SNAPSHOT_GLOB = "copy-*.snapshot"


class CopySessions:
    """Every copy session this brick serves as a source (recoveries and moves)."""

    log = Logger()

    def __init__(self, ctx: BrickContext, snapshot_dir: Path, fence_s: float,
                 stream: StreamServer | None = None) -> None:
        self.brick_id = brick_id = ctx.id
        self.storage = storage = ctx.storage
        self.participant = ctx.participant
        self.clock = clock = ctx.clock
        self.snapshot_dir = Path(snapshot_dir)
        self.run_in_thread = ctx.run_in_thread
        self.fence_s = fence_s
        self.maps = ctx.maps
        self.metrics = metrics = ctx.metrics
        self._rng = ctx.rng
        self.sessions: dict[int, CopySession] = {}
        self._by_pair: dict[tuple[str, str], CopySession] = {}
        self._ended: OrderedDict[int, CopySession] = OrderedDict()
        #: Per partition, the snapshot a new session may share.
        self._snapshots = SharedSnapshots(brick_id, storage, clock, self.snapshot_dir,
                                          metrics)
        #: The stream server (None: chunk requests only), bound by the brick at start.
        self._stream = stream
        if stream is not None:
            stream.on_sent = self._streamed
            stream.on_refused = self._stream_refused
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        # Snapshots of sessions that died with the process: nobody can resume them.
        for stale in self.snapshot_dir.glob(_SNAPSHOT_GLOB):
            stale.unlink(missing_ok=True)
        for stale in self.snapshot_dir.glob(_SNAPSHOT_GLOB + ".tmp"):
            stale.unlink(missing_ok=True)

    # -- requests from the target ------------------------------------------------------

    async def begin(self, rg: str, target: str, pids: list[PartitionId],
                    fence_whole_copy: bool, rate_mb_s: float = 0.0, *, move: bool = False,
                    layout: Layout | None = None) -> dict[str, Any]:
        """Start a session: snapshot every partition in ``pids``.  Reply (the brick adds
        ``record``): ``{"session": id, "snapshots": [{"pid", "size", "lsn", "checksum"}]}``.
        ``move``: a move's copy, whose fence holds until lifted; ``layout``: a recovery's
        RG partitions now, which its readmission checks."""
        old = self._by_pair.get((rg, target))
        if old is not None:
            self.cancel(old.id, f"superseded by a new copy_begin from {target}")
        s = CopySession(self._new_id(), rg, target, tuple(dict.fromkeys(pids)),
                        fence_whole_copy, self.clock.seconds(), move=move, layout=layout)
        s.rate = rate_mb_s * 1e6
        self.sessions[s.id] = s
        self._by_pair[(rg, target)] = s
        self.metrics.inc("copy_sessions_total")
        self._arm_idle(s, IDLE_S)
        self.log.info("copy session {session} of {rg} to {target} begins: {count} "
                      "partitions{fence}", session=s.id, rg=rg, target=target,
                      count=len(s.pids),
                      fence=" (writes fenced for the whole copy)" if fence_whole_copy else "")
        try:
            if fence_whole_copy:
                await self._fence_and_drain(s)
            for pid in s.pids:
                info = await self._snapshot(s, pid)
                if s.state is not CopyState.SNAPSHOTTING:   # cancelled meanwhile
                    self._gone(s)      # (_end released the snapshot)
                s.snapshots[str(pid)] = info
        except BaseException as e:
            if s.state is CopyState.SNAPSHOTTING:
                self.cancel(s.id, f"begin failed: {e}")
            raise
        s.state = CopyState.STREAMING
        self._touch(s)
        reply: dict[str, Any] = {"session": s.id, "snapshots": [s.snapshots[str(p)].to_wire()
                                                                for p in s.pids]}
        stream = self._stream
        if stream is not None:
            # A token of this session only: it opens these snapshots while the session
            # lives (``_end`` unregisters it), not another session's.
            token = secrets.token_bytes(TOKEN_BYTES)
            for pid_text, info in s.snapshots.items():
                stream.register(s.id, token, pid_text, info.path, info.size, info.blocks,
                                s.rate)
            reply["stream"] = {"port": stream.port, "token": token}
        return reply

    def _stream_refused(self, reason: str) -> None:
        """The stream server refused a connection (on the reactor thread)."""
        self.metrics.inc("stream_refused", reason=reason)
        if reason == AUTH:
            self.metrics.inc("stream_auth_failures_total")

    def _streamed(self, session: int, sent: int) -> None:
        """A stream of ``session`` sent ``sent`` bytes more (on the reactor thread)."""
        self.metrics.inc("copy_bytes_sent_total", sent)
        s = self.sessions.get(session)
        if s is not None:
            s.bytes_sent += sent
            self._touch(s)

    def chunk(self, session: int, pid: str, offset: int,
              size: int) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """``size`` bytes of the snapshot of ``pid`` from ``offset``: ``{"data",
        "checksum"}`` (xxh64 of data; short or empty at the end of the file)."""
        s = self._serving(session)
        info = s.snapshots.get(pid)
        if info is None:
            raise InvalidRequest(f"copy session {session} has no snapshot of {pid!r}")
        if offset > info.size:
            raise InvalidRequest(f"offset {offset} is past the end of the snapshot of {pid} "
                                 f"({info.size} bytes)")
        if failpoints.ARMED and offset <= info.size // 2 < offset + size:
            failpoints.fire("copy.mid")
        try:
            data, checksum = read_chunk(info.path, offset, size)
        except OSError as e:
            self.cancel(session, f"reading the snapshot of {pid}: {e}")
            raise InternalError(f"copy session {session}: cannot read the snapshot of "
                                f"{pid}: {e.strerror or e}") from e
        s.bytes_sent += len(data)
        self.metrics.inc("copy_bytes_sent_total", len(data))
        reply = {"data": data, "checksum": checksum}
        if s.rate:
            # Bandwidth limit: the reply waits until the session's bytes fit its rate
            # (the receiver's window then keeps at most a few chunks early).
            due = s.started + s.bytes_sent / s.rate - self.clock.seconds()
            if due > 0:
                d: Deferred[dict[str, Any]] = Deferred()
                self.clock.callLater(due, d.callback, reply)
                return d
        return reply

    async def fence(self, session: int) -> dict[str, Any]:
        """Fence the session's partitions for the last delta: fence, drain, flush.
        ``{"lsn": {pid: last committed lsn}}``.  Repeating it while FENCED or
        READMITTING returns the same answer: the fence held since (a move checks so that
        it was not lost to a restart).  A move's fence goes on to READMITTING at once: it
        is held until dds-admin lifts it (``cancel``) after the cut-over, or repair does,
        or, if the tool renews it (``renew``), until the tool falls silent while the
        partition is still active here (the tool and repair then see the session gone
        and roll the move back, so no write can miss the targets)."""
        s = self._get(session)
        self._touch(s)
        if s.state not in (CopyState.FENCED, CopyState.READMITTING):
            if s.state is not CopyState.STREAMING:
                raise InvalidRequest(f"copy session {session} is {s.state.value}, "
                                     "not streaming: cannot fence")
            if s.fenced_at is None:
                await self._fence_and_drain(s)
            else:    # fenced for the whole copy: fenced and drained since begin
                await self._flush(s)
            if s.state is not CopyState.STREAMING:
                self._gone(s)
            s.state = CopyState.FENCED
            self._cancel(s.fence_timer)
            self._arm_fence(s, self._fence_delay(s))
        reply = {"lsn": self._lsns(s)}
        if s.move:
            self.readmitting(s.id)
        return reply

    def delta(self, session: int, pid: str, after_lsn: int, limit: int) -> dict[str, Any]:
        """Committed rows of ``pid`` written after ``after_lsn``, tombstones included, in
        log order, at most ``limit``: ``{"rows": [[key, value, version, lsn, checksum]],
        "more": bool}`` (``checksum`` as stored: the target verifies it)."""
        s = self._serving(session)
        if pid not in s.snapshots:
            raise InvalidRequest(f"copy session {session} does not copy {pid!r}")
        if not self.storage.has_partition(pid):
            # Dropped here meanwhile (a move's drop, a split's cut-over): opening it
            # would create an empty replica of a partition no RG lists.
            self.cancel(session, f"{pid} was dropped here")
            raise NotServing(f"brick {self.brick_id} holds no replica of {pid} any more")
        store = self.storage.open_partition(pid)
        # Committed rows only: a staged row's lsn is reused if its commit fails, so a
        # target that had copied it would skip the row that later takes that lsn.  Under
        # the fence (flushed) nothing is staged; before it, staged rows come next time.
        top = store.committed_lsn()
        rows: list[list[Any]] = []
        for row in store.rows_since(after_lsn):
            if row[3] > top:
                break
            if len(rows) == limit:
                return {"rows": rows, "more": True}
            key, value, version, _lsn, checksum = row
            if checksum is not None and row_checksum(key, version, value) != checksum:
                # Never shipped (the target would refuse it); repaired here.
                self.storage.on_damage(pid, key)
                raise ChecksumMismatch(pid, key)
            rows.append(list(row))
        return {"rows": rows, "more": False}

    # -- steps taken by this brick -----------------------------------------------------

    def readmitting(self, session: int) -> None:
        """The RG record change that makes the target active has started: from now on
        the fence holds until ``finish`` or ``cancel``, whatever its timer says.
        Idempotent."""
        s = self._get(session)
        if s.state is CopyState.READMITTING:
            self._touch(s)
            return
        if s.state is not CopyState.FENCED:
            raise InvalidRequest(f"copy session {session} is {s.state.value}, not fenced: "
                                 "cannot readmit")
        s.state = CopyState.READMITTING
        self._touch(s)
        self.log.info("copy session {session}: readmitting {target} to {rg}",
                      session=s.id, target=s.target, rg=s.rg)

    def finish(self, session: int) -> None:
        """The copy is complete (the target was readmitted): lift the fence, delete the
        snapshots."""
        s = self._get(session)
        if s.state is CopyState.SNAPSHOTTING:
            raise InvalidRequest(f"copy session {session} is still snapshotting")
        self._end(s, CopyState.DONE, "finished")
        self.log.info("copy session {session} of {rg} to {target} done: {bytes} bytes "
                      "sent, writes fenced for {fence_s}", session=s.id, rg=s.rg,
                      target=s.target, bytes=s.bytes_sent, fence_s=s.fence_held_s)

    def cancel(self, session: int, reason: str) -> bool:
        """Give the session up (idempotent): lift its fence, delete its snapshots.  False
        if it was not live."""
        s = self.sessions.get(session)
        if s is None:
            return False
        self._end(s, CopyState.CANCELLED, reason)
        self.metrics.inc("copy_cancelled_total")
        self.log.warn("copy session {session} of {rg} to {target} cancelled: {reason}",
                      session=s.id, rg=s.rg, target=s.target, reason=reason)
        return True

    def close(self) -> None:
        """The brick stops: cancel every session."""
        for sid in list(self.sessions):
            self.cancel(sid, f"brick {self.brick_id} is stopping")
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def status(self) -> list[dict[str, Any]]:
        """Live and recently ended sessions, for ``dds-admin status``."""
        now = self.clock.seconds()
        return [{"session": s.id, "rg": s.rg, "target": s.target, "state": s.state.value,
                 "pids": [str(p) for p in s.pids], "bytes_sent": s.bytes_sent,
                 "size": s.size, "full_lease": s.fence_whole_copy,
                 "age_s": now - s.started,
                 "fenced_s": (s.fence_held_s if s.fence_held_s is not None else
                              None if s.fenced_at is None else now - s.fenced_at),
                 "reason": s.reason}
                for s in [*self.sessions.values(), *self._ended.values()]]

    # -- internals ---------------------------------------------------------------------

    def _new_id(self) -> int:
        while True:
            sid = self._rng.getrandbits(63)
            if sid not in self.sessions and sid not in self._ended:
                return sid

    async def _snapshot(self, s: CopySession, pid: PartitionId) -> SnapshotInfo:
        """A snapshot of ``pid`` for ``s``, shared or not (``dds.bricks.copy.shared``)."""
        stream = self._stream
        # With streams (real threads), the backup too runs at their low priority.
        run = (self.run_in_thread if stream is None
               else background(stream.call_from_thread))
        return await self._snapshots.take(s, pid, run, self.run_in_thread)

    async def _fence_and_drain(self, s: CopySession) -> None:
        """Fence the session's partitions, wait (bounded by ``fence_s``) for their
        transactions in flight, then flush.  On failure the session is cancelled."""
        self.participant.fence(s.pids)
        s.fenced_at = self.clock.seconds()
        self.metrics.inc("copy_fences_total")
        self.log.info("copy session {session}: writes to {pids} fenced", session=s.id,
                      pids=[str(p) for p in s.pids])
        bound = min(self.fence_s, self.participant.DRAIN_S)
        quiet = await self.participant.quiesce(s.pids, bound)
        if s.state not in LIVE:
            self._gone(s)
        if not quiet:
            busy = self.participant.busy(s.pids)
            self.cancel(s.id, f"{busy} transactions still in flight after {bound:g}s "
                        "of fence")
            raise Timeout(f"copy session {s.id}: {busy} transactions on "
                          f"{[str(p) for p in s.pids]} did not resolve within "
                          f"{bound:g}s; fence lifted")
        await self._flush(s)

    async def _flush(self, s: CopySession) -> None:
        try:
            # Under the fence: the log is enough (deltas serve staged rows up to the
            # durable position); committing every file here held writes ~100 ms.
            await self.storage.flush(files=False)
        except Exception as e:  # noqa: BLE001 -- any commit error ends the session
            self.cancel(s.id, f"flush failed: {e!r}")
            raise InternalError(f"copy session {s.id}: flush failed: {e}") from e

    def _lsns(self, s: CopySession) -> dict[str, int]:
        gone = [str(p) for p in s.pids if not self.storage.has_partition(str(p))]
        if gone:        # dropped meanwhile: do not create empty replicas of them
            self.cancel(s.id, f"{', '.join(gone)} dropped here")
            raise NotServing(f"brick {self.brick_id} holds no replica of "
                             f"{', '.join(gone)} any more")
        return {str(p): self.storage.open_partition(str(p)).committed_lsn() for p in s.pids}

    def renew(self, session: int, lapse_s: float) -> dict[str, Any]:
        """The session's holder (a move's tool) is alive: its fence lapses ``lapse_s``
        from now, also while READMITTING for a move, as long as the source RG still
        lists the partitions active here.  A lapse costs the move, never a write: the
        tool checks the fence again once the record lists them outgoing, and repair
        rolls back a move whose fence is gone.  Once they are outgoing here the record
        refuses their writes anyway, and the fence is kept for repair to see.  A fence
        not yet taken starts with that lapse.  An unknown or ended session is no
        error."""
        s = self.sessions.get(session)
        if s is None or s.state not in LIVE:
            return {"held": False, "known": False}
        self._touch(s)
        s.lapse_s = lapse_s
        held = s.state in (CopyState.FENCED, CopyState.READMITTING)
        if held and self._renewed_lapse(s):
            self._cancel(s.fence_timer)
            self._arm_fence(s, lapse_s)
        return {"held": held, "known": True}

    def _arm_fence(self, s: CopySession, delay: float) -> None:
        s.fence_due = self.clock.seconds() + delay
        s.fence_timer = self.clock.callLater(delay, self._fence_lapsed, s)

    def _renewed_lapse(self, s: CopySession) -> bool:
        """Whether the fence lapses when its holder stops renewing: a move's, or one not
        yet in the record change of a recovery's readmission (which this brick runs)."""
        return s.lapse_s is not None and (s.move or s.state is CopyState.FENCED)

    def _cut_over_begun(self, s: CopySession) -> bool:
        """Whether this brick's record of the move's source RG no longer lists every
        partition of ``s`` active (the cut-over made it ``outgoing``)."""
        rec = self.maps.map.rgs.get(s.rg)
        return rec is None or any(rec.partition_state(p) != "active" for p in s.pids)

    def _fence_delay(self, s: CopySession) -> float:
        if s.lapse_s is not None:
            return min(self.fence_s, s.lapse_s) if not s.move else s.lapse_s
        return self.fence_s

    def _fence_lapsed(self, s: CopySession) -> None:
        s.fence_timer = None
        if s.state in LIVE and self._renewed_lapse(s):
            assert s.lapse_s is not None
            late = self.clock.seconds() - s.fence_due
            if s.move and self._cut_over_begun(s):
                # The record refuses writes to it now; repair finishes the move only if
                # the fence still holds, so it is kept.
                self._arm_fence(s, s.lapse_s)
                return
            if late > STALL_S:
                # This brick did not run for a while (paused, starved): the renewals
                # sent meanwhile are still unread.  The holder gets a whole lapse again.
                self.log.info("copy session {session}: fence lapse deferred: this brick "
                              "did not run for {late:.1f}s", session=s.id, late=late)
                self._arm_fence(s, s.lapse_s)
                return
            self.metrics.inc("copy_fences_lapsed_total")
            self.cancel(s.id, f"fence lapsed: no renewal from its holder for {s.lapse_s:g}s")
            return
        if s.state is CopyState.READMITTING:
            # The record change decides whether the target is active; lifting the fence
            # before it does could let a write miss the target.  Say so, and keep it.
            self.log.warn("copy session {session}: fence held past {fence_s}s while "
                          "readmitting {target}", session=s.id, fence_s=self.fence_s,
                          target=s.target)
            s.fence_timer = self.clock.callLater(self.fence_s, self._fence_lapsed, s)
            return
        if s.state in LIVE:
            self.cancel(s.id, f"fence lapsed after {self.fence_s}s without readmission")

    def _arm_idle(self, s: CopySession, delay: float) -> None:
        s.idle_timer = self.clock.callLater(delay, self._idle_check, s)

    def _idle_check(self, s: CopySession) -> None:
        s.idle_timer = None
        if s.state not in LIVE:
            return
        if s.state in (CopyState.SNAPSHOTTING, CopyState.READMITTING):
            self._arm_idle(s, IDLE_S)       # waiting on this brick, not on the target
            return
        idle = self.clock.seconds() - s.last_request
        if idle >= IDLE_S:
            self.cancel(s.id, f"no request from {s.target} for {idle:.0f}s")
        else:
            self._arm_idle(s, IDLE_S - idle)

    def _touch(self, s: CopySession) -> None:
        s.last_request = self.clock.seconds()

    def _get(self, session: int) -> CopySession:
        s = self.sessions.get(session)
        if s is not None:
            return s
        ended = self._ended.get(session)
        if ended is not None:
            raise InvalidRequest(f"copy session {session} is {ended.state.value}"
                                 + (f": {ended.reason}" if ended.reason else ""))
        raise InvalidRequest(f"unknown copy session {session}")

    def _serving(self, session: int) -> CopySession:
        s = self._get(session)
        if s.state not in SERVING:
            raise InvalidRequest(f"copy session {session} is {s.state.value}")
        self._touch(s)
        return s

    def _gone(self, s: CopySession) -> NoReturn:
        """The session ended while a step of it waited: say why."""
        raise NotServing(f"copy session {s.id} is {s.state.value}: {s.reason}")

    def _end(self, s: CopySession, state: CopyState, reason: str) -> None:
        s.state = state
        s.reason = reason
        self._cancel(s.fence_timer)
        self._cancel(s.idle_timer)
        s.fence_timer = s.idle_timer = None
        if s.fenced_at is not None and s.fence_held_s is None:
            self.participant.unfence(s.pids)
            s.fence_held_s = self.clock.seconds() - s.fenced_at
            self.log.info("copy session {session}: fence on {pids} lifted after "
                          "{held:.3f}s", session=s.id, pids=[str(p) for p in s.pids],
                          held=s.fence_held_s)
        if self._stream is not None:
            self._stream.unregister(s.id)
        self._snapshots.release(s, self.run_in_thread)
        self.sessions.pop(s.id, None)
        if self._by_pair.get((s.rg, s.target)) is s:
            del self._by_pair[(s.rg, s.target)]
        self._ended[s.id] = s
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()


__all__ = ["CopySessions"]
