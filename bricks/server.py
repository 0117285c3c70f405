"""The brick: answers data, map and admin requests over authenticated RPC connections.

``Brick`` wires together storage, locks, the 2PC participant and the map, and is the
``handler`` of every inbound connection.  Requests are decoded and validated before any
state is touched; a bad request is answered with an error naming the problem.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Callable

import attrs

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dds import failpoints
from dds.config import BrickConfig
from dds.errors import (DDSError, InvalidRequest, KeyTooLarge, NotServing,
                        UnknownTransaction, ValueTooLarge)
from dds.maps import ClusterMap
from dds.messages import (Abort, Checksum, Commit, Failpoint, Get, Gossip, MapGet, MapPush,
                          Message, Ping, Prepare, Resolve, Status, Txns,
                          TxnState as TxnStateMsg, decode_request)
from dds.metrics import Metrics
from dds.connect import ConnectionCache, Opener
from dds.partition import PartitionId
from dds.records import Record, record_from_wire
from dds.rpc import RPCProtocol

from dds.bricks.locks import LockTable
from dds.bricks.mapstate import MapState, parse_pid
from dds.bricks.participant import Participant
from dds.bricks.storage import Storage
from dds.bricks.termination import Terminator


_GET_FIELDS = frozenset(attrs.fields_dict(Get))
#: A restored prepared transaction asks the other members this soon after a restart.
RESOLVE_AFTER_RESTART_S = 1.0
_REQUEST_COUNTERS: dict[str, str] = {}

class Brick:
    log = Logger()
    termination: Terminator

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
        self.storage = Storage(config.data_dir, self.clock, durability=config.brick.durability,
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
                                      self._peer, self.clock, self.metrics)
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
            Resolve: self.resolve,
        }
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

    async def stop(self, grace_s: float = 5.0) -> None:
        """Clean shutdown: stop gossip, let prepared transactions finish for a bounded
        time, flush storage.  Prepared transactions left after the grace period stay
        prepared on disk-less memory; their coordinators see ``Indeterminate`` or
        termination resolves them on the other members."""
        self._stopping = True
        if self._gossip.running:
            self._gossip.stop()
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
        await self.storage.flush()
        self.storage.close()
        self.log.info("brick {brick} stopped cleanly", brick=self.id)

    def _open_my_partitions(self) -> None:
        for pid in self.maps.my_partitions():
            if not self.storage.has_partition(str(pid)):
                self.storage.open_partition(str(pid))
                self.log.info("created replica of {pid}", pid=str(pid))

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
        if (str(pid) != pid_text or pid not in rec.active_partitions or self.id not in rec.active_members
                or not pid.owns(key) or self.locks.holder((pid, key)) is not None):
            return None
        self.metrics.counters["requests_get_total"] += 1
        r = self.storage.read(pid_text, key)
        return {"value": r.value, "version": r.version}

    def get(self, msg: Get) -> Any:
        self._check_key(msg.key)
        pid, _rec = self.maps.check(msg.pid, msg.rg, msg.rg_version, msg.rg_fp)
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
        return self.participant.prepare(
            msg, pid, lambda: self.maps.check(msg.pid, msg.rg, msg.rg_version, msg.rg_fp))

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
