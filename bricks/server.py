"""The brick: answers data, map and admin requests over authenticated RPC connections.

``Brick`` wires together storage, locks, the 2PC participant and the map, and is the
``handler`` of every inbound connection.  Requests are decoded and validated before any
state is touched; a bad request is answered with an error naming the problem.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Callable, cast

import attrs

from twisted.internet import threads
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dds import failpoints
from dds.config import BrickConfig
from dds.errors import (DDSError, InvalidRequest, KeyTooLarge, NotServing, Refused,
                        UnknownTransaction, ValueTooLarge)
from dds.maps import ClusterMap
from dds.messages import (Abort, Checksum, Commit, CopyBegin, CopyCancel, CopyChunk,
                          CopyDelta, CopyFence, Failpoint, Get, Gossip, Lease, MapGet,
                          MapPush, Message, Ping, Prepare, Readmit, RecordDecide,
                          RecordPrepare, RecordState, Recover, Resolve, RGChange, RGStatus,
                          Status, Txns, TxnState as TxnStateMsg, decode_request)
from dds.messages import MoveFinish, MovePull, RGUpdate
from dds.messages import JournalRead, JournalWrite  # journal (DESIGN §8)
from dds.messages import RangeChecksums, RangeKeys  # scrub
from dds.messages import (SplitAbort, SplitCutover, SplitFence, SplitFinish,  # split/merge
                          SplitPrepare, SplitRelease, SplitStatus)
from dds.metrics import Metrics
from dds.connect import ConnectionCache, Opener
from dds.partition import PartitionId
from dds.records import Record, record_from_wire
from dds.rpc import RPCProtocol

from dds.bricks.copysource import CopySessions
from dds.bricks.journal import Journal
from dds.bricks.leases import Leases
from dds.bricks.locks import LockTable
from dds.bricks.mapstate import MapState, parse_pid
from dds.bricks.movein import IncomingMoves
from dds.bricks.participant import Participant
from dds.bricks.recovery import Recoveries
from dds.bricks.rgchange import RecordChanges
from dds.bricks.scrub import Scrubber
from dds.bricks.split import Splits
from dds.bricks.storage import Durability, Storage
from dds.bricks.termination import Terminator


_GET_FIELDS = frozenset(attrs.fields_dict(Get))
#: A restored prepared transaction asks the other members this soon after a restart.
RESOLVE_AFTER_RESTART_S = 1.0
_REQUEST_COUNTERS: dict[str, str] = {}

class Brick:
    log = Logger()
    termination: Terminator
    changes: RecordChanges

    def __init__(self, config: BrickConfig, reactor: Any, opener: Opener | None = None,
                 rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.config = config
        self.id = config.brick.id
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.metrics = Metrics()
        self.started = time.time()
        t = config.timeouts
        self.read_wait_s = t.read_wait_ms / 1000.0
        self.max_key = config.limits.max_key_bytes
        self.max_value = config.limits.max_value_bytes
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = Storage(config.data_dir, self.clock,
                               durability=cast(Durability, config.brick.durability),
                               cache_entries=config.brick.cache_entries,
                               memory_flush_s=config.brick.memory_flush_ms / 1000.0,
                               commit_window_s=config.brick.commit_window_ms / 1000.0)
        self.locks = LockTable(self.clock)
        self.maps = MapState(self.id, config.data_dir, self.metrics)
        self.participant = Participant(self.storage, self.locks, self.clock, self.metrics,
                                       lock_wait_s=t.lock_wait_ms / 1000.0,
                                       txn_deadline_s=t.txn_deadline_ms / 1000.0,
                                       on_deadline=lambda txn: self.termination.later(txn))
        self.peers = ConnectionCache(reactor, opener, node_id=self.id,
                                     cluster=config.cluster.name,
                                     secret=config.secret,
                                     max_frame=config.limits.max_frame_bytes,
                                     metrics=self.metrics)
        self.termination = Terminator(self.id, self.participant, self.storage, self.maps,
                                      self._peer, self.clock, self.metrics,
                                      membership_changing=lambda rg: rg in self.changes.locks)
        self.lease_s = t.lease_ms / 1000.0
        self.leases = Leases(self.id, self.clock, self.lease_s, t.lease_drift_percent / 100.0,
                             lambda: self.maps.map, self._send_lease, self.metrics)
        self.changes = RecordChanges(self.id, self.maps, self.leases, self.clock, self._peer,
                                     config.data_dir, self.metrics, lease_s=self.lease_s,
                                     suspect_check_s=t.suspect_check_ms / 1000.0, rng=self.rng)
        self.copies = CopySessions(self.id, self.storage, self.participant, self.clock,
                                   config.data_dir / "snapshots", self._in_thread,
                                   t.copy_fence_ms / 1000.0, self.metrics, rng=self.rng)
        self.recoveries = Recoveries(self.id, self.maps, self.storage, self.participant,
                                     self._peer, self.clock, self.metrics,
                                     config.data_dir / "incoming",
                                     full_lease=config.brick.full_lease_recovery,
                                     durability=config.brick.durability)
        # Journal of multi-step admin operations (DESIGN §8); opens its file on first use.
        self.journal = Journal(config.data_dir, self.clock, self.metrics)
        self.ignore_read_lease = config.brick.unsafe_ignore_read_lease
        if self.ignore_read_lease:
            self.log.error("brick.unsafe_ignore_read_lease is set: this brick serves reads "
                           "without a membership lease and can return stale values")
        self._restarted = len(self.maps.map) > 0
        self._recovery_check = LoopingCall(self.recoveries.check)
        self._recovery_check.clock = self.clock
        self.connections: set[RPCProtocol] = set()
        #: The RPC port actually bound (the configured one may be 0).
        self.port = config.brick.port
        self.maps.on_change(self._map_changed)
        self._open_my_partitions()
        self._restore_prepared()
        self._gossip = LoopingCall(self._gossip_round)
        self._gossip.clock = self.clock
        self._stopping = False
        self._handlers: dict[type[Message], Callable[[Any], Any]] = {
            Get: self.get, Prepare: self.prepare, Commit: self.commit, Abort: self.abort,
            MapGet: self.map_get, MapPush: self.map_push, Gossip: self.gossip,
            Status: self.status, Checksum: self.checksum, Ping: lambda m: {},
            TxnStateMsg: self.txn_state, Failpoint: self.failpoint, Txns: self.txns,
            Resolve: self.resolve, Lease: self.lease, RecordPrepare: self.changes.prepare,
            RecordDecide: self.changes.decide, RecordState: self.changes.state,
            RGStatus: self.rg_status, CopyBegin: self.copy_begin, CopyChunk: self.copy_chunk,
            CopyFence: self.copy_fence, CopyDelta: self.copy_delta, Readmit: self.readmit,
            CopyCancel: self.copy_cancel, Recover: self.recover,
        }
        # Scrub (dds-admin scrub): per-bucket checksums and keys of a replica.
        self.scrubber = Scrubber(self.id, self.storage, self._in_thread, self.maps,
                                 self.recoveries, config.limits.max_frame_bytes)
        self._handlers[RangeChecksums] = self.scrubber.range_checksums
        self._handlers[RangeKeys] = self.scrubber.range_keys
        # Reorganization (DESIGN §8): administrative changes of RG records, moves.
        self.moves_in = IncomingMoves(self.id, self.maps, self.storage, self.participant,
                                      self._peer, self.clock, config.data_dir / "incoming",
                                      durable=config.brick.durability == "fsync",
                                      metrics=self.metrics)
        self._move_sessions: set[int] = set()
        self._handlers[RGUpdate] = self.changes.update
        # Split and merge in place (DESIGN §8): each member builds the new replicas locally.
        self.splits = Splits(self.id, self.maps, self.storage, self.participant, self.clock,
                             self._in_thread, config.data_dir / "split-staging", self.metrics,
                             self.changes.update,
                             durable=config.brick.durability == "fsync", rng=self.rng)
        self._handlers[SplitPrepare] = self.splits.prepare
        self._handlers[SplitFence] = self.splits.fence
        self._handlers[SplitFinish] = self.splits.finish
        self._handlers[SplitCutover] = self.splits.cutover
        self._handlers[SplitRelease] = self.splits.release
        self._handlers[SplitAbort] = self.splits.abort
        self._handlers[SplitStatus] = self.splits.status
        self._handlers[MovePull] = self.moves_in.pull
        self._handlers[MoveFinish] = self.moves_in.finish
        # Journal of multi-step admin operations (DESIGN §8).
        self._handlers[JournalWrite] = self.journal.write
        self._handlers[JournalRead] = self.journal.read
        self.metrics.gauge("locks_held", lambda: len(self.locks))
        self.metrics.gauge("txns_prepared", lambda: len(self.participant.active))
        self.metrics.gauge("connections", lambda: len(self.connections))
        self.metrics.gauge("partitions", lambda: len(self.storage.partitions()))
        for name in self.storage.stats:
            self.metrics.gauge(f"storage_{name}",
                               lambda name=name: self.storage.stats[name])  # type: ignore[misc]

    # -- lifecycle -----------------------------------------------------------------------

    def factory(self) -> Factory:
        brick = self

        class BrickFactory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> RPCProtocol:
                proto = RPCProtocol(is_client=False, node_id=brick.id,
                                    cluster=brick.config.cluster.name,
                                    secret=brick.config.secret, clock=brick.clock,
                                    handler=brick.handle,
                                    max_frame=brick.config.limits.max_frame_bytes,
                                    metrics=brick.metrics)
                # Handshake failures are logged and counted by the protocol; nobody awaits
                # a server's ``ready``, so consume its failure here.
                proto.ready.addErrback(lambda _: None)
                brick.connections.add(proto)
                proto.closed.addCallback(lambda _: brick.connections.discard(proto))
                return proto
        return BrickFactory()

    def start(self) -> None:
        self._gossip.start(self.config.timeouts.gossip_interval_ms / 1000.0, now=False)
        self.leases.start()
        if self._restarted and self.config.brick.recover_on_start:
            self.recoveries.after_restart()
        self._recovery_check.start(2.0, now=False)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Clean shutdown: stop gossip, let prepared transactions finish for a bounded
        time, flush storage.  Prepared transactions left after the grace period stay
        prepared on disk-less memory; their coordinators see ``Indeterminate`` or
        termination resolves them on the other members."""
        self._stopping = True
        if self._gossip.running:
            self._gossip.stop()
        self.leases.stop()
        self.recoveries.stop()
        if self._recovery_check.running:
            self._recovery_check.stop()
        deadline = self.clock.seconds() + grace_s
        while self.participant.active and self.clock.seconds() < deadline:
            d: Deferred[None] = Deferred()
            self.clock.callLater(0.05, d.callback, None)
            await d
        if self.participant.active:
            self.log.warn("stopping with {n} transactions still prepared",
                          n=len(self.participant.active))
        for proto in list(self.connections):
            proto.close()
        self.peers.close_all()
        self.copies.close()
        await self.storage.flush()
        self.storage.close()
        self.journal.close()
        self.log.info("brick {brick} stopped cleanly", brick=self.id)

    def _open_my_partitions(self) -> None:
        mine = self.maps.my_partitions()
        for pid in mine:
            if not self.storage.has_partition(str(pid)):
                self.storage.open_partition(str(pid))
                self.log.info("created replica of {pid}", pid=str(pid))
        if not self.maps.map.rgs_of_brick(self.id):
            return      # not (yet) in any RG: keep whatever is on disk
        # A partition none of my RGs lists any more moved away, was split or merged
        # (DESIGN §8), or I left its RG: its replica is no longer mine to keep.
        for text in self.storage.partitions():
            pid = parse_pid(text)
            if pid not in mine:
                self.participant.forget_partition(pid)
                self.storage.drop_partition(text)
                self.log.warn("dropped replica of {pid}: no RG of mine lists it",
                              pid=text)

    def _restore_prepared(self) -> None:
        """Transactions this brick voted YES on before it stopped are prepared again, with
        their locks, before it serves anything; termination resolves them shortly."""
        records = self.storage.prepared()
        if records:
            n = self.participant.restore(records, resolve_after_s=RESOLVE_AFTER_RESTART_S)
            self.log.warn("restored {n} prepared transactions of {total} recorded; resolving "
                          "them with the other members", n=n, total=len(records))

    def _map_changed(self, new_map: ClusterMap, adopted: tuple[Record, ...]) -> None:
        self._open_my_partitions()
        self.leases.on_map_change(new_map, adopted)
        self.recoveries.check()
        if not self._stopping and self.leases.running:
            # A new record may make this brick active somewhere: ask for leases now
            # rather than up to a third of a lease later.
            ensureDeferred(self.leases.renew())

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Blocking file work (snapshots) off the reactor thread; inline on a reactor
        without threads (the deterministic simulation)."""
        pool = getattr(self.reactor, "getThreadPool", None)
        if pool is None:
            return maybeDeferred(f, *args)
        return threads.deferToThreadPool(self.reactor, pool(), f, *args)

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, mtype: str, body: Any, conn: RPCProtocol) -> Any:
        if mtype == "get" and type(body) is dict and body.keys() == _GET_FIELDS:
            fast = self._get_fast(body)
            if fast is not None:
                return fast
        msg = decode_request(mtype, body)
        name = _REQUEST_COUNTERS.get(mtype)
        if name is None:
            name = _REQUEST_COUNTERS[mtype] = f"requests_{mtype}_total"
        self.metrics.counters[name] += 1
        try:
            if type(msg) is RGChange:
                result = self.rg_change(msg, conn.peer_id)
            else:
                result = self._handlers[type(msg)](msg)
        except DDSError as e:
            self.metrics.inc(f"errors_{e.code}_total")
            raise
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            d = ensureDeferred(result) if not isinstance(result, Deferred) else result
            d.addErrback(self._count_error)
            return d
        return result

    def _count_error(self, failure: Any) -> Any:
        if isinstance(failure.value, DDSError):
            self.metrics.inc(f"errors_{failure.value.code}_total")
        return failure

    # -- data operations -----------------------------------------------------------------

    def _check_key(self, key: bytes) -> None:
        if len(key) > self.max_key:
            raise KeyTooLarge(f"key of {len(key)} bytes exceeds the limit of "
                              f"{self.max_key} bytes")

    def _get_fast(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """GET without building a message object: the hottest request.  Anything unusual
        (a bad type, a lock, an error) returns None and takes the general path, which
        gives the precise answer."""
        key, pid_text, rg = body["key"], body["pid"], body["rg"]
        version, fp = body["rg_version"], body["rg_fp"]
        if not (type(key) is bytes and type(pid_text) is str and type(rg) is str
                and type(version) is int and type(fp) is int
                and len(key) <= self.max_key):
            return None
        rec = self.maps.map.rgs.get(rg)
        if rec is None or rec.version != version or rec.fp != fp:
            return None
        try:
            pid = parse_pid(pid_text)
        except InvalidRequest:
            return None
        if (str(pid) != pid_text or pid not in rec.active_partitions
                or self.id not in rec.active_members or not pid.owns(key)
                or self.locks.holder((pid, key)) is not None
                or rg in self.recoveries.blocked
                or not (self.ignore_read_lease or self.leases.valid(rg))):
            return None
        self.metrics.counters["requests_get_total"] += 1
        r = self.storage.read(pid_text, key)
        return {"value": r.value, "version": r.version}

    def _check_serving(self, rg: str, read: bool) -> None:
        """DESIGN §6–7: no reads and no YES votes without a valid lease, and nothing at
        all from an RG still being re-synced."""
        if rg in self.recoveries.blocked:
            raise NotServing(f"brick {self.id} is re-syncing {rg}")
        if not self.leases.valid(rg) and not (read and self.ignore_read_lease):
            self.metrics.inc("no_lease_refusals_total")
            raise NotServing(f"brick {self.id} holds no valid membership lease for {rg}")

    def get(self, msg: Get) -> Any:
        self._check_key(msg.key)
        pid, _rec = self.maps.check(msg.pid, msg.rg, msg.rg_version, msg.rg_fp)
        self._check_serving(msg.rg, read=True)
        if not pid.owns(msg.key):
            raise InvalidRequest(f"key does not belong to partition {pid}")
        lock_key = (pid, msg.key)
        if self.locks.holder(lock_key) is None:
            r = self.storage.read(str(pid), msg.key)
            return {"value": r.value, "version": r.version}
        return self._get_after_outcome(msg, lock_key)

    async def _get_after_outcome(self, msg: Get, lock_key: tuple[PartitionId, bytes]) -> Any:
        """A prepared key may already be committed on another replica: wait for the
        outcome here so that no read returns a value older than one already visible."""
        self.metrics.inc("reads_waited_total")
        await self.locks.wait_free(lock_key, self.read_wait_s)
        pid, _rec = self.maps.check(msg.pid, msg.rg, msg.rg_version, msg.rg_fp)
        self._check_serving(msg.rg, read=True)
        r = self.storage.read(str(pid), msg.key)
        return {"value": r.value, "version": r.version}

    def prepare(self, msg: Prepare) -> dict[str, int] | Deferred[dict[str, int]]:
        if self._stopping:
            raise NotServing(f"brick {self.id} is shutting down")
        self._check_key(msg.key)
        if msg.value is not None and len(msg.value) > self.max_value:
            raise ValueTooLarge(f"value of {len(msg.value)} bytes exceeds the limit of "
                                f"{self.max_value} bytes")
        pid, _rec = self.maps.check(msg.pid, msg.rg, msg.rg_version, msg.rg_fp)
        if not pid.owns(msg.key):
            raise InvalidRequest(f"key does not belong to partition {pid}")
        self._check_serving(msg.rg, read=False)

        def recheck() -> Any:
            checked = self.maps.check(msg.pid, msg.rg, msg.rg_version, msg.rg_fp)
            self._check_serving(msg.rg, read=False)
            return checked
        return self.participant.prepare(msg, pid, recheck)

    def commit(self, msg: Commit) -> dict[str, int] | Deferred[dict[str, int]]:
        return self.participant.commit(msg.txid)

    def abort(self, msg: Abort) -> dict[str, Any]:
        return self.termination.coordinator_abort(msg.txid)

    def txn_state(self, msg: TxnStateMsg) -> dict[str, str]:
        return self.termination.answer(msg)

    async def _peer(self, brick_id: str) -> RPCProtocol:
        rec = self.maps.map.bricks.get(brick_id)
        if rec is None:
            raise UnknownTransaction(f"no address for brick {brick_id}")
        return await self.peers.get(rec.address, rec.port)

    # -- maps ----------------------------------------------------------------------------

    def map_get(self, msg: MapGet) -> dict[str, Any]:
        return {"map": self.maps.map.to_wire()}

    def _decode_records(self, items: list[Any]) -> list[Record]:
        try:
            return [record_from_wire(r) for r in items]
        except ValueError as e:
            raise InvalidRequest(str(e)) from None

    def map_push(self, msg: MapPush) -> dict[str, Any]:
        result = self.maps.merge(self._decode_records(msg.records), source="push")
        return {"adopted": len(result.adopted),
                "conflicts": [c.mine.record_id for c in result.conflicts]}

    def gossip(self, msg: Gossip) -> dict[str, Any]:
        try:
            digest = [(str(r), int(v), int(f)) for r, v, f in msg.digest]
        except (TypeError, ValueError) as e:
            raise InvalidRequest(f"gossip: malformed digest: {e}") from None
        send, want = self.maps.map.newer_than(digest)
        return {"records": [r.canonical() for r in send], "want": want}

    async def _gossip_round(self) -> None:
        """Exchange digests with one random peer; pull what it has newer, push ours."""
        peers = [b for b in self.maps.map.bricks.values() if b.id != self.id]
        seeds = [s for s in self.config.cluster.seeds]
        if not peers and not seeds:
            return
        try:
            if peers:
                rec = self.rng.choice(peers)
                conn = await self.peers.get(rec.address, rec.port)
            else:
                host, _, port = self.rng.choice(seeds).rpartition(":")
                conn = await self.peers.get(host.strip("[]"), int(port))
            reply = await conn.call("gossip", {"digest": [list(d) for d in
                                                          self.maps.map.digest]},
                                    timeout=5.0)
            records = self._decode_records(reply.get("records", []))
            if records:
                self.maps.merge(records, source=f"gossip:{conn.peer_id}")
            want = set(reply.get("want", []))
            if want:
                push = [r.canonical() for r in self.maps.map if r.record_id in want]
                await conn.call("map_push", {"records": push}, timeout=5.0)
            self.metrics.inc("gossip_rounds_total")
        except DDSError as e:
            self.metrics.inc("gossip_failures_total")
            self.log.debug("gossip round failed: {error}", error=e.message)

    # -- membership: leases, record changes, recovery ----------------------------------

    def _send_lease(self, peer: str, rgs: list[str]) -> Deferred[Any]:
        async def go() -> Any:
            conn = await self._peer(peer)
            return await conn.call("lease", {"holder": self.id, "rgs": rgs},
                                   timeout=self.lease_s / 3)
        return Deferred.fromCoroutine(go())

    def lease(self, msg: Lease) -> dict[str, Any]:
        return self.leases.grant(msg.holder, msg.rgs)

    def rg_change(self, msg: RGChange, requester: str | None) -> Deferred[dict[str, Any]]:
        return self.changes.change(msg, requester)

    def serving(self, rg: str) -> bool:
        rec = self.maps.map.rgs.get(rg)
        return (rec is not None and self.id in rec.active_members
                and rg not in self.recoveries.blocked and self.leases.valid(rg))

    def rg_status(self, msg: RGStatus) -> dict[str, Any]:
        rec = self.maps.map.rgs.get(msg.rg)
        return {"record": rec.canonical() if rec else None, "serving": self.serving(msg.rg),
                "state": rec.member_state(self.id) if rec else None,
                "reconciled": self.recoveries.reconciled(msg.rg)}

    async def copy_begin(self, msg: CopyBegin) -> dict[str, Any]:
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
        rate = (msg.rate_mb_s if msg.rate_mb_s is not None
                else self.config.brick.copy_rate_mb_s)
        reply = await self.copies.begin(msg.rg, msg.target, pids, msg.full_lease, rate)
        if msg.pids is not None:
            self._move_sessions.add(int(reply["session"]))
        reply["record"] = rec.canonical()
        return reply

    def _moving_out(self, rec: Any, target: str, texts: list[str]) -> list[PartitionId]:
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

    def copy_chunk(self, msg: CopyChunk) -> dict[str, Any] | Deferred[dict[str, Any]]:
        return self.copies.chunk(msg.session, msg.pid, msg.offset, msg.size)

    async def copy_fence(self, msg: CopyFence) -> dict[str, Any]:
        reply = await self.copies.fence(msg.session)
        if msg.session in self._move_sessions:
            # A move's fence is held until dds-admin lifts it (copy_cancel) after the
            # cut-over, or repair does: lapsing on a timer could let a write reach the
            # source after the last delta, and the targets would never see it.
            self.copies.readmitting(msg.session)
        return reply

    def copy_delta(self, msg: CopyDelta) -> dict[str, Any]:
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
            reply = await self.changes.readmit(session.rg, session.target)
        except Exception as e:
            self.copies.cancel(msg.session, f"readmission failed: {e!r}")
            raise
        self.copies.finish(msg.session)
        return reply

    def copy_cancel(self, msg: CopyCancel) -> dict[str, Any]:
        self.copies.cancel(msg.session, msg.reason or "cancelled by the target")
        return {}

    def recover(self, msg: Recover) -> dict[str, Any]:
        """``dds-admin recover``: re-sync now (an RG, or every RG this brick is in)."""
        if msg.rg is not None and (msg.rg not in self.maps.map.rgs or
                                   self.maps.map.rgs[msg.rg].member_state(self.id) is None):
            raise InvalidRequest(f"brick {self.id} is not a member of {msg.rg!r}")
        rgs = [msg.rg] if msg.rg else [r.name for r in self.maps.map.rgs.values()
                                       if r.member_state(self.id) is not None]
        started = [rg for rg in rgs
                   if self.recoveries.ensure(rg, why="requested by dds-admin recover",
                                             full_lease=msg.full_lease)]
        return {"started": started}

    # -- administration ------------------------------------------------------------------

    def status(self, msg: Status) -> dict[str, Any]:
        m = self.maps.map
        return {
            "id": self.id,
            "address": f"{self.config.brick.host}:{self.port}",
            "pid": os.getpid(),
            "uptime_s": time.time() - self.started,
            "durability": self.config.brick.durability,
            "map_fp": m.fp,
            "map_version": m.version,
            "digest": [list(d) for d in m.digest],
            "partitions": sorted(self.storage.partitions()),
            "prepared": len(self.participant.active),
            "in_doubt": [list(t.txid) for t in self.participant.in_doubt()],
            "failpoints": failpoints.armed(),
            "members": {rg.name: rg.member_state(self.id) for rg in m.rgs.values()
                        if rg.member_state(self.id) is not None},
            "blocked": sorted(self.recoveries.blocked),
            "leases": self.leases.status(),
            "recovery": self.recoveries.status(),
            "copies": self.copies.status(),
            "moves_in": self.moves_in.status(),
            "changes": self.changes.status(),
            "metrics": self.metrics.snapshot(),
        }

    def failpoint(self, msg: Failpoint) -> dict[str, Any]:
        """Arm or disarm a failpoint of this process (tests only; see
        ``docs/failpoints.md``).  Name and action were validated on decoding.  Refused
        unless ``brick.allow_failpoints``: the secret alone must not let a peer crash a
        production brick."""
        if not self.config.brick.allow_failpoints:
            raise InvalidRequest(f"failpoints are disabled on brick {self.id} "
                                 "(set brick.allow_failpoints = true on test clusters)")
        if msg.action is None:
            failpoints.disarm(msg.name)
            self.log.warn("failpoint {name} disarmed", name=msg.name)
        else:
            action = failpoints.arm(msg.name, msg.action)
            self.log.warn("failpoint {name} armed: {action}", name=msg.name,
                          action=str(action))
        return {"armed": failpoints.armed()}

    def txns(self, msg: Txns) -> dict[str, Any]:
        """Every active transaction (``dds-admin txns`` filters the in-doubt ones)."""
        return {"brick": self.id, "txns": self.termination.listing()}

    async def resolve(self, msg: Resolve) -> dict[str, Any]:
        """Termination now, on request (``dds-admin repair``)."""
        results = await self.termination.resolve(msg.txid, msg.force)
        self.metrics.inc("txn_resolutions_total", len(results))
        return {"brick": self.id, "resolved": [r.to_wire() for r in results]}

    def checksum(self, msg: Checksum) -> dict[str, int]:
        pid = parse_pid(msg.pid)
        if not self.storage.has_partition(str(pid)):
            raise NotServing(f"brick {self.id} holds no replica of {pid}")
        store = self.storage.open_partition(str(pid))
        return {"count": store.count(), "checksum": store.checksum(),
                "last_lsn": store.last_lsn()}


__all__ = ["Brick"]
