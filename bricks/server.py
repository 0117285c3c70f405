"""The brick: answers data, map and admin requests over authenticated RPC connections.

``Brick`` is the composition root: it builds storage, locks, the 2PC participant and the
map, hands what the components share to each as one ``BrickContext``
(``bricks/context.py``), and dispatches every request to the component that answers it
(each lists its own in ``handlers()``).  It is the ``handler`` of every inbound
connection, and keeps the hot path's dispatch here: the bodies of GET, PREPARE and
COMMIT are checked field by field and handed, without building a message object, to the
data path's fast entries (``bricks/datapath.py``, bound once).  Requests are decoded and
validated before any state is touched; a bad request is answered with an error naming
the problem.
"""

from __future__ import annotations

import random
import sqlite3
import time
from time import perf_counter
from typing import Any, Callable, cast

import attrs

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds.config import BrickConfig
from dds.errors import DDSError, PermissionDenied
from dds.maps import ClusterMap
from dds.messages import (GET_COMPACT, GET_COMPACT_FIELDS, MAX_PARTICIPANTS, OPS, Get, Lease,
                          MapPush, Message, Ping, Prepare, RGChange, RGStatus, decode_request,
                          roles_of)
from dds.metrics import Count, Histogram, Metrics
from dds.connect import ConnectionCache, Opener
from dds.records import Record, RGRecord
from dds.ratelimit import LogLimiter
from dds.rpc import LATER, RPCProtocol, flush_sends

from dds.bricks.admission import Admission
from dds.bricks.admin import AdminRequests
from dds.bricks.backup import Backups
from dds.bricks.bounded import BoundedReads
from dds.bricks.changes import ChangeStream
from dds.bricks.drapply import DrApplier
from dds.bricks.drtags import DrTagStore
from dds.bricks.context import BrickContext, peer_caller, thread_runner
from dds.bricks.copy.movein import IncomingMoves
from dds.bricks.copy.pull import Streams
from dds.bricks.copy.serve import CopySource
from dds.bricks.copy.source import CopySessions
from dds.bricks.copy.stream import StreamServer
from dds.bricks.damage import Damage, set_aside_unreadable, unreadable
from dds.bricks.datapath import DataPath, To
from dds.bricks.diskspace import DiskSpace, StepOut
from dds.bricks.gossip import MapGossip
from dds.bricks.journal import Journal
from dds.bricks.listener import CertificateWatch, rpc_factory
from dds.bricks.leases import Leases
from dds.bricks.locks import LockTable
from dds.bricks.quarantine import Quarantine
from dds.bricks.mapstate import MapState
from dds.bricks.participant import Participant
from dds.bricks.recovery import Recoveries
from dds.bricks.replicas import LocalReplicas
from dds.bricks.rgchange import RecordChanges
from dds.bricks.scrub import Scrubber
from dds.bricks.checksumwalk import ChecksumWalk
from dds.bricks.selfrepair import SelfRepair
from dds.bricks.split import Splits
from dds.bricks.partstore import Durability
from dds.bricks.storage import Storage
from dds.bricks.termination import Terminator


_GET_FIELDS = frozenset(attrs.fields_dict(Get))
_PREPARE_FIELDS = frozenset(attrs.fields_dict(Prepare))
_OPS = frozenset(OPS)
_U64 = 1 << 64


def _compact_reply(reply: dict[str, Any]) -> list[Any]:
    return [reply["value"], reply["version"]]


def _prepare_body_ok(b: dict[str, Any]) -> bool:
    """Whether a PREPARE body (with exactly ``Prepare``'s fields) passes every check of
    ``Prepare``; False sends it down the general path, which names the problem."""
    txid, ts, op, value, expected = b["txid"], b["ts"], b["op"], b["value"], b["expected_version"]
    version, fp, timeout = b["rg_version"], b["rg_fp"], b["timeout_ms"]
    parts = b["participants"]
    return (type(txid) is list and len(txid) == 2 and type(txid[0]) is int
            and type(txid[1]) is int and type(ts) is list and len(ts) == 2
            and type(ts[0]) is int and type(ts[1]) is int
            and type(b["pid"]) is str and type(b["key"]) is bytes and type(b["rg"]) is str
            and type(version) is int and 0 <= version < _U64
            and type(fp) is int and 0 <= fp < 1 << 32
            and type(timeout) is int and 1 <= timeout <= 600_000
            and type(op) is str and op in _OPS
            and (value is None if op == "remove"
                 else value is None or type(value) is bytes if op == "replay"
                 else type(value) is bytes)
            and (type(expected) is int and 0 <= expected < _U64 if op == "cas"
                 else type(expected) is int and 1 <= expected < _U64 if op == "replay"
                 else expected is None)
            and type(parts) is list and len(parts) <= MAX_PARTICIPANTS
            and all(type(p) is str and 0 < len(p) <= 128 for p in parts)
            and len(set(parts)) == len(parts))

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
        self.metrics = Metrics(process=True)
        #: Each request type's counter and latency histogram, held for the hot path.
        self._request_series: dict[str, tuple[Count, Histogram]] = {}
        self.started = time.time()
        t = config.timeouts
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._in_thread = thread_runner(reactor)
        # Before the storage opens a file: one it cannot read stopped the brick's start.
        unreadable_files = set_aside_unreadable(config.data_dir)
        self.storage = self._open_storage(config, unreadable_files)
        self.storage.after_completions = lambda: flush_sends(self.clock)
        self.locks = LockTable(self.clock)
        # The map, the record locks and the journal are as durable as the data (DESIGN §4).
        durability = cast(Durability, config.brick.durability)
        self.maps = MapState(self.id, config.data_dir, self.metrics, durability=durability,
                             clock=self.clock)
        self.participant = Participant(self.storage, self.locks, self.clock, self.metrics,
                                       lock_wait_s=t.lock_wait_ms / 1000.0,
                                       txn_deadline_s=t.txn_deadline_ms / 1000.0,
                                       max_txn_deadline_s=t.max_txn_deadline_ms / 1000.0,
                                       on_deadline=lambda txn: self.termination.later(txn))
        self.peers = ConnectionCache(reactor, opener, node_id=self.id,
                                     cluster=config.cluster.name,
                                     credentials=config.credentials,
                                     max_frame=config.limits.max_frame_bytes,
                                     metrics=self.metrics)
        self._peer = peer_caller(self.maps, self.peers)
        #: What the components share (``bricks/context.py``).
        self.ctx = ctx = BrickContext(
            id=self.id, clock=self.clock, metrics=self.metrics, maps=self.maps,
            storage=self.storage, participant=self.participant, peer=self._peer,
            run_in_thread=self._in_thread, rng=self.rng, durability=durability,
            data_dir=config.data_dir)
        self.termination = Terminator(self.id, self.participant, self.storage, self.maps,
                                      self._peer, self.clock, self.metrics,
                                      membership_changing=lambda rg: rg in self.changes.locks,
                                      exclude=self._exclude_for_termination)
        self.participant.on_blocked = self.termination.nudge
        self.lease_s = t.lease_ms / 1000.0
        self.leases = Leases(self.id, self.clock, self.lease_s, t.lease_drift_percent / 100.0,
                             lambda: self.maps.map, self._send_lease, self.metrics)
        self.changes = RecordChanges(ctx, self.leases, lease_s=self.lease_s,
                                     suspect_check_s=t.suspect_check_ms / 1000.0)
        # Snapshot streams (dds.bricks.copy.stream) need real sockets and threads: not in the
        # simulation, whose bricks have an opener of their own.  The server binds
        # brick.stream_port now, so a port already taken fails the start; the copy
        # sessions own it (and close it).  In TLS mode streams run inside TLS.
        streams = (Streams.for_brick(config, reactor.callFromThread)
                   if opener is None and hasattr(reactor, "callFromThread") else None)
        self.copies = CopySessions(ctx, config.data_dir / "snapshots", t.copy_fence_ms / 1000.0,
                                   stream=None if streams is None else StreamServer.for_brick(
                                       config, reactor.callFromThread))
        # The source's copy requests, checked before they reach the sessions.
        self.copy_source = CopySource(self.id, config, self.maps, self.storage, self.copies,
                                      self.serving, self.changes.readmit)
        self.recoveries = Recoveries(ctx, config.data_dir / "incoming",
                                     fence_whole_copy=config.brick.full_lease_recovery)
        # Unreadable partition files (bricks/damage.py): set aside, re-copied.
        self.damage = Damage(ctx, self.recoveries)
        self.damage.started(unreadable_files)
        self.participant.on_unreadable = self.damage.read_error
        # A full disk (bricks/diskspace.py): writes refused, out of the RGs' write path.
        step_out = StepOut(ctx, timeout_s=t.suspect_check_ms / 1000.0 + self.lease_s + 5.0)
        self.disk = DiskSpace(self.id, config.data_dir, self.clock, self.metrics,
                              min_free_bytes=config.brick.min_free_mb << 20,
                              check_s=config.brick.disk_check_ms / 1000.0,
                              on_full=lambda: step_out.ask(self.disk),
                              on_free=self.recoveries.check)
        self.participant.full = self.disk.saw
        self.recoveries.hold = lambda: self.disk.reason if self.disk.full else None
        # Journal of multi-step admin operations (DESIGN §8); opens its file on first use.
        self.journal = Journal(config.data_dir, self.clock, self.metrics,
                               durability=durability)
        # The data requests and their gates (bricks/datapath.py); the hot path's entries
        # bound once here, so that ``handle`` calls them as directly as its own methods.
        self.data = DataPath(ctx, config, self.locks, self.leases, self.termination,
                             self.recoveries, self.damage, self.disk, self._answer)
        self._get_fast = self.data.get_fast
        self._read_fast = self.data.read_fast
        self._prepare_fast = self.data.prepare_fast
        self._commit_fast = self.data.commit_fast
        if config.brick.unsafe_ignore_read_lease:
            self.log.error("brick.unsafe_ignore_read_lease is set: this brick serves reads "
                           "without a membership lease and can return stale values")
        self._restarted = len(self.maps.map) > 0
        self._recovery_check = LoopingCall(self.recoveries.check)
        self._recovery_check.clock = self.clock
        self.connections: set[RPCProtocol] = set()
        #: Caps on connections still authenticating (DESIGN §10: a stranger gets little).
        self.admission = Admission(config.auth.max_unauthenticated,
                                   config.auth.max_unauthenticated_per_source, self.metrics,
                                   self.clock)
        self._denials = LogLimiter(self.clock, self.log)
        #: The RPC port actually bound (the configured one may be 0).
        self.port = config.brick.port
        self.quarantine = Quarantine(config.data_dir, self.storage, self.clock, self.metrics,
                                     config.brick.quarantine_hours * 3600.0,
                                     run_in_thread=self._in_thread)
        self.replicas = LocalReplicas(self.id, self.maps, self.storage, self.participant,
                                      self.quarantine, self.metrics)
        self.maps.on_change(self._map_changed)
        self.replicas.reconcile()
        self.replicas.restore_prepared()
        # The map requests and gossip (DESIGN §2).
        self.gossip = MapGossip(ctx, self.peers, config.cluster.seeds,
                                config.timeouts.gossip_interval_ms / 1000.0, self._denials)
        # Scrub (dds-admin scrub): per-bucket checksums and keys of a replica.
        self.scrubber = Scrubber(self.id, self.storage, self._in_thread, self.maps,
                                 self.recoveries, config.limits.max_frame_bytes,
                                 damaged=self.damage.damaged,
                                 on_unreadable=self.damage.read_error)
        self.bounded = BoundedReads(self.clock, self.leases, self.participant,
                                    lambda *gate: self.data.gate(*gate)[2], self.data.read,
                                    lambda: self.recoveries.blocked)
        # Row checksums (issue 13): a damaged row is repaired from the RG by itself,
        # found by a read or by the background walk (migration of old files, scrub).
        self.repairs = SelfRepair(ctx, self.locks)
        self.storage.on_damage = self.repairs.found
        self.checksum_walk = ChecksumWalk(self.storage, self.clock, self.metrics,
                                          config.brick.scrub_mb_s, self.storage.on_damage)
        self.storage.on_missing_checksums = self.checksum_walk.migrate
        self.metrics.gauge("txlog_damaged_records", lambda: len(self.storage.log_damage))
        # Reorganization (DESIGN §8): administrative changes of RG records, moves.
        self.moves_in = IncomingMoves(ctx, config.data_dir / "incoming", streams=streams)
        # Split and merge in place (DESIGN §8): each member builds the new replicas locally.
        self.splits = Splits(ctx, config.data_dir / "split-staging", self.changes.update,
                             blocked=lambda rg: rg in self.recoveries.blocked)
        self.admin = AdminRequests(self)
        # DR tags (DESIGN §12): what the DR follower applied, carried by YES votes.
        self.dr_tags = DrTagStore(self.maps, self.clock)
        self.participant.dr_tags = self.dr_tags
        self.change_stream = ChangeStream(ctx, lambda *g: self.data.gate(*g)[2],
                                          lambda: self.recoveries.blocked,
                                          config.brick.change_max_skew_ms / 1000.0,
                                          self.dr_tags)
        self.backups = Backups(ctx, self.serving, self.damage.damaged)   # dds-admin backup
        # A DR site's side of the follower (DESIGN §12): dr_apply, dr_marks.
        self.dr_apply = DrApplier(ctx, lambda *g: self.data.gate(*g)[2],
                                  lambda rg, pid: self.data._check_serving(rg, False, pid),
                                  self.locks, self.disk, config.limits.max_key_bytes,
                                  config.limits.max_value_bytes)
        # Every request type, by the component that answers it (each lists its own).
        self._handlers: dict[type[Message], Callable[[Any], Any]] = {
            Ping: self.ping, Lease: self.lease, RGStatus: self.rg_status,
        }
        for component in (self.data, self.gossip, self.admin, self.changes, self.copy_source,
                          self.moves_in, self.splits, self.journal, self.scrubber,
                          self.bounded, self.change_stream, self.backups, self.dr_tags,
                          self.dr_apply):
            handlers = component.handlers()
            twice = handlers.keys() & self._handlers.keys()
            if twice:
                raise AssertionError(f"requests answered twice: {sorted(t.TYPE for t in twice)}")
            self._handlers.update(handlers)
        for handled in self._handlers:      # every request type counted from zero
            self.metrics.counter("requests", type=handled.TYPE)
        self.metrics.gauge("locks_held", lambda: len(self.locks))
        self.metrics.gauge("txns_prepared", lambda: len(self.participant.active))
        self.metrics.gauge("connections", lambda: len(self.connections))
        # Connections whose peer reads no replies, so the brick stopped reading from them
        # (``dds.rpc``'s flow control; ``connections_paused_total`` counts the stops).
        self.metrics.gauge("paused_connections",
                           lambda: sum(1 for p in self.connections if p.paused))
        self.certificate = CertificateWatch(self.id, config, self.clock, self.metrics)
        self.metrics.gauge("partitions", lambda: len(self.storage.partitions()))
        for name in self.storage.stats:
            self.metrics.gauge(f"storage_{name}",
                               lambda name=name: self.storage.stats[name])  # type: ignore[misc]

    # -- lifecycle -----------------------------------------------------------------------

    def _open_storage(self, config: BrickConfig, moved: dict[str, str]) -> Storage:
        """The storage; if opening it meets a file the quick probe passed but SQLite
        cannot read (the log's redo reads rows), every file is checked in depth and the
        unreadable ones are set aside (``bricks/damage.py``), then it is opened again."""
        while True:
            try:
                return Storage(config.data_dir, self.clock,
                               durability=cast(Durability, config.brick.durability),
                               cache_entries=config.brick.cache_entries,
                               memory_flush_s=config.brick.memory_flush_ms / 1000.0,
                               commit_window_s=config.brick.commit_window_ms / 1000.0,
                               run_in_thread=self._in_thread)
            except sqlite3.DatabaseError as e:
                if not unreadable(e):
                    raise
                found = set_aside_unreadable(config.data_dir, deep=True)
                if not found:
                    raise
                moved.update(found)

    def factory(self) -> Factory:
        """The RPC port's factory (``bricks/listener.py``)."""
        return rpc_factory(self.id, self.config, self.clock, self.metrics, self.admission,
                           self.handle, self.connections)

    def start(self) -> None:
        self.certificate.start()
        self.gossip.start()
        self.leases.start()
        if self._restarted and (self.config.brick.recover_on_start
                                or self.storage.log_damage):
            if self.storage.log_damage and not self.config.brick.recover_on_start:
                self.log.error("the transaction log was damaged ({n} records): re-syncing "
                               "every replica before serving", n=len(self.storage.log_damage))
            self.recoveries.after_restart()
        self._recovery_check.start(2.0, now=False)
        self.quarantine.start()
        self.checksum_walk.start()
        self.disk.start()
        self.damage.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Clean shutdown: stop gossip, let prepared transactions finish for a bounded
        time, flush storage.  Prepared transactions left after the grace period stay
        prepared on disk-less memory; their coordinators see ``Indeterminate`` or
        termination resolves them on the other members."""
        self.data.stop()
        self.gossip.stop()
        self.leases.stop()
        self.certificate.stop()
        self.recoveries.stop()
        self.quarantine.stop()
        self.checksum_walk.stop()
        self.repairs.stopping = True
        self.disk.stop()
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
        self.backups.close_all()
        await self.storage.flush()
        self.storage.close()
        self.journal.close()
        self.log.info("brick {brick} stopped cleanly", brick=self.id)

    def _map_changed(self, new_map: ClusterMap, adopted: tuple[Record, ...]) -> None:
        self.replicas.reconcile()
        self.leases.on_map_change(new_map, adopted)
        self.recoveries.check()
        if not self.data.stopping and self.leases.running:
            # A new record may make this brick active somewhere: ask for leases now
            # rather than up to a third of a lease later.
            ensureDeferred(self.leases.renew())

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, mtype: str, body: Any, conn: RPCProtocol) -> Any:
        # The data operations first, without building a message object: their bodies are
        # checked field by field here, and anything unusual takes the general path, whose
        # decoding names the problem.
        t0 = perf_counter()
        if mtype == GET_COMPACT:
            return self._get_compact(body, t0)
        if type(body) is dict:
            if mtype == "get":
                if body.keys() == _GET_FIELDS:
                    fast = self._get_fast(body)
                    if fast is not None:
                        count, latency = self._series("get")
                        count.value += 1
                        latency.observe(perf_counter() - t0)
                        return fast
            elif mtype == "prepare":
                if body.keys() == _PREPARE_FIELDS and _prepare_body_ok(body):
                    return self._counted("prepare", self._prepare_fast,
                                         (body, (conn, conn.request_id, mtype, t0)), t0)
            elif mtype == "commit":
                txid = body.get("txid") if len(body) == 1 else None
                if (type(txid) is list and len(txid) == 2 and type(txid[0]) is int
                        and type(txid[1]) is int):
                    return self._counted("commit", self._commit_fast,
                                         ((txid[0], txid[1]),
                                          (conn, conn.request_id, mtype, t0)), t0)
        role = conn.peer_role
        if role not in roles_of(mtype):
            return self._deny(conn, mtype, f"{mtype!r:.40} is not allowed for the {role} role")
        msg = decode_request(mtype, body)
        if type(msg) is RGChange:
            if role == "client" and msg.state != "excluded":
                return self._deny(conn, mtype, "a client may only ask for an exclusion, "
                                  f"not to make a member {msg.state}")
            return self._counted(mtype, lambda m: self.rg_change(m, conn.peer_id), msg, t0)
        if type(msg) is MapPush and role == "client":
            return self._counted(mtype, self.gossip.map_hint, msg, t0)
        return self._counted(mtype, self._handlers[type(msg)], msg, t0)

    def _deny(self, conn: RPCProtocol, mtype: str, why: str) -> Any:
        """A request outside the connection's role: refused, counted, logged at a bounded
        rate; nothing was decoded further or applied."""
        self.metrics.inc("requests_denied_total")
        self.metrics.inc("errors", code=PermissionDenied.code)
        self._denials.warn("refused {mtype} from {peer} (role {role}): {why}",
                           mtype=f"{mtype:.40}", peer=conn.peer_id, role=conn.peer_role,
                           why=why)
        raise PermissionDenied(f"permission denied: {why}")

    def _series(self, mtype: str) -> tuple[Count, Histogram]:
        """``mtype``'s request counter and latency histogram."""
        series = self._request_series.get(mtype)
        if series is None:
            series = self._request_series[mtype] = (
                self.metrics.counter("requests", type=mtype),
                self.metrics.histogram("request_seconds", type=mtype))
        return series

    def _counted(self, mtype: str, handler: Callable[[Any], Any], arg: Any, t0: float) -> Any:
        """Run ``handler(arg)``, counting the request and its error, if any, and timing
        it from ``t0`` (its arrival) to its answer."""
        count, latency = self._series(mtype)
        count.value += 1
        try:
            result = handler(arg)
        except BaseException as e:
            if isinstance(e, DDSError):
                self.metrics.inc("errors", code=e.code)
            latency.observe(perf_counter() - t0)
            raise
        if result is LATER:         # ``_answer`` times it
            return result
        if isinstance(result, Deferred):
            return result.addBoth(self._finished, latency, t0)
        if hasattr(result, "__await__"):
            return ensureDeferred(result).addBoth(self._finished, latency, t0)
        latency.observe(perf_counter() - t0)
        return result

    def _answer(self, to: To, result: Any) -> None:
        """The answer to a request a hot path finished later (``LATER``), counted."""
        conn, rid, mtype, t0 = to
        if isinstance(result, DDSError):
            self.metrics.inc("errors", code=result.code)
        self._series(mtype)[1].observe(perf_counter() - t0)
        conn.answer(rid, mtype, result)

    def _finished(self, result: Any, latency: Histogram, t0: float) -> Any:
        latency.observe(perf_counter() - t0)
        if isinstance(result, Failure) and isinstance(result.value, DDSError):
            self.metrics.inc("errors", code=result.value.code)
        return result

    def _get_compact(self, body: Any, t0: float) -> Any:
        """The compact read (``dds.messages.GET_COMPACT``): the fast path, or ``get``'s
        general path (whose reply is given in the compact form)."""
        if type(body) is list and len(body) == 5:
            r = self._read_fast(*body)
            if r is not None:
                count, latency = self._series("get")
                count.value += 1
                latency.observe(perf_counter() - t0)
                return [r.value, r.version]
            fields: dict[str, Any] = dict(zip(GET_COMPACT_FIELDS, body))
        else:
            fields = {"body": body}     # refused by the decoding below, with a reason
        result = self._counted("get", self._handlers[Get], decode_request("get", fields), t0)
        if isinstance(result, Deferred):
            return result.addCallback(_compact_reply)
        return _compact_reply(result)

    # -- membership: leases, record changes, termination's exclusions -------------------

    async def _exclude_for_termination(self, rg: RGRecord, member: str, why: str) -> bool:
        """Exclude ``member`` from ``rg`` (DESIGN §5), coordinated by this brick; true once
        it is no longer active (the change protocol refuses while the member answers)."""
        try:
            await self.changes.change(RGChange(rg.name, rg.version, rg.fp, member,
                                               "excluded", why), self.id, internal=True)
        except DDSError as e:
            self.log.warn("could not exclude {member} from {rg}: {error}", member=member,
                          rg=rg.name, error=e.message)
        now = self.maps.map.rgs.get(rg.name)
        return now is not None and member not in now.active_members

    def _send_lease(self, peer: str, rgs: list[str]) -> Deferred[Any]:
        async def go() -> Any:
            conn = await self._peer(peer)
            return await conn.send(Lease(holder=self.id, rgs=rgs), timeout=self.lease_s / 3)
        return Deferred.fromCoroutine(go())

    def lease(self, msg: Lease) -> dict[str, Any]:
        return self.leases.grant(msg.holder, msg.rgs)

    def ping(self, msg: Ping) -> dict[str, Any]:
        """Alive; and whether the disk is full: a voter then excludes this brick although
        it answers (``bricks/rgchange.py``)."""
        return {"storage_full": True} if self.disk.full else {}

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


__all__ = ["Brick"]
