"""``DDSClient``: the hash table as a service sees it (DESIGN §11).

Methods return Deferreds (usable with ``await``).  Each call has a deadline; inside it
the client repairs a stale map, backs off on ``Locked`` (keeping the transaction's start
timestamp, so wait-die lets it win eventually), and moves reads to another replica when
one does not answer.  Bad input (oversize keys or values, wrong types) fails before any I/O.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Mapping
from typing import Any, Callable, Coroutine, TypeVar

import attrs
from prometheus_client import REGISTRY, CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds.auth import Credentials
from dds.codec import DEFAULT_MAX_FRAME
from dds.deferreds import sleep
from dds.connect import ConnectionCache, Opener, open_connection
from dds.errors import (AuthenticationFailed, Recovering, ConnectionLost, DDSError, Divergence,
                        Exists, Indeterminate, InternalError, InvalidRequest, KeyTooLarge,
                        Locked, NotPrimary, NotServing, ReplayRefused, ReplayWindow,
                        ReplicaDamaged, StaleMap, StorageFull, Timeout, Unavailable,
                        ValueTooLarge, VersionMismatch)
from dds.maps import ClusterMap
from dds.messages import GET_COMPACT
from dds.metricdefs import CLIENT
from dds.metrics import Metrics
from dds.rpc import RPCProtocol

from dds.changemsgs import MAX_PAGE
from dds.lib.bounded import Bounded, bounded_get, check_consistency
from dds.lib.changes import ChangeCursor
from dds.lib.drjournal import (DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, DEFAULT_SKEW_MS,
                               DrJournal)
from dds.lib.drreplay import ReplayReport
from dds.lib.drsite import DrSide
from dds.lib.exclusion import Excluder
from dds.lib.hedging import HedgeDelay
from dds.lib.logging_bridge import TO_LOGGING, library_logger
from dds.lib.coordinator import UNREACHABLE, Coordinator, PrepareFailed
from dds.lib.mapcache import MapCache
from dds.lib.routing import Route, Router, pick_replica
from dds.records import BrickRecord

T = TypeVar("T")
_F = TypeVar("_F", bound=Callable[..., Deferred[Any]])


def _timed_call(op: str) -> Callable[[_F], _F]:
    """Observe a call's time, start to outcome, in ``dds_client_request_seconds``
    (on the reactor's clock)."""
    def wrap(f: _F) -> _F:
        @functools.wraps(f)
        def timed(self: "DDSClient", *args: Any, **kw: Any) -> Deferred[Any]:
            return self._timed(f(self, *args, **kw), op, self.clock.seconds())
        return timed  # type: ignore[return-value]
    return wrap

#: Errors after which the same operation may be tried again (on another replica or
#: after the map was repaired).
_TRANSIENT = (NotServing, Timeout, ConnectionLost, Unavailable)
#: A read that failed with one of these on one replica is tried on another: the replica
#: could not serve it (its file is damaged, or it failed unexpectedly) but another may.
#: A read changes nothing, so an internal error is as safe to retry as a timeout; a
#: write's internal error is not (what did the brick apply?), so writes keep _TRANSIENT.
_DAMAGED = (ReplicaDamaged, InternalError)
_READ_RETRY = _TRANSIENT + _DAMAGED
#: A write whose PREPARE one member refused with one of these applied nothing there; the
#: member is stepping out of its RG's write path (a full disk) or re-copying a damaged
#: replica, so a retry after a short pause reaches the RG without it.
_STEPPING_OUT = (StorageFull, ReplicaDamaged)


@attrs.frozen
class GetResult:
    """A read: ``value`` is None for a key never written or removed; ``version`` is 0
    only for a key never written."""

    value: bytes | None
    version: int
    #: How stale the value may be, in seconds: 0 for a linearizable read; for a bounded
    #: one (``consistency=Bounded(s)``), at most ``s``.
    stale_s: float = 0.0


#: TLS files as paths: ``{"ca": …, "cert": …, "key": …}`` (or a ``(ca, cert, key)``
#: tuple); the certificate's role must be ``role`` (``client`` by default).
TLSPaths = Mapping[str, str] | tuple[str, str, str]


def _credentials(cluster: str, secret: bytes | str | None, tls: TLSPaths | None,
                 role: str, credentials: Credentials | None) -> Credentials:
    """The one way a caller says who it is: a shared secret for its role, TLS files, or
    ready-made credentials."""
    given = [x for x in (secret, tls, credentials) if x is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of secret=, tls= or credentials=")
    if credentials is not None:
        return credentials
    if secret is not None:
        return Credentials.shared(role, secret)
    from dds.tls import load_tls_files
    assert tls is not None
    ca, cert, key = ((tls["ca"], tls["cert"], tls["key"]) if isinstance(tls, Mapping)
                     else tls)
    return Credentials(role, {}, load_tls_files(ca, cert, key, cluster=cluster, role=role))


class DDSClient:
    """The DDS library's client: ``get``, ``put``, ``remove``, ``create`` and
    ``compare_and_put`` on one big table.

    Authenticate as the ``client`` role (DESIGN §10) with the cluster's client ``secret``
    or with ``tls`` files (a certificate issued by ``dds-admin certs issue --role
    client``).  ``dds-admin`` connects the same way as ``role="admin"``.

    ``commit_mode``: ``"parallel"`` (the default) reports a write done once every replica
    voted YES, one round trip (DESIGN §4); ``"ack"`` waits for every COMMIT
    acknowledgement as well, the older behaviour, kept for comparison.

    Metrics (``dds_client_*``: latency per operation, retries, ...) go to
    ``metrics_registry``: prometheus_client's global ``REGISTRY`` by default, shared by
    every client of the process; None keeps them out of any registry.

    Disaster recovery (DESIGN §12, ``lib/drsite.py``): on a primary that a DR site
    follows, every acknowledged write is kept in the **journal** (``dr_journal``) until a
    tag shows the DR site holds it: at most ``dr_journal_max_entries`` entries and
    ``dr_journal_max_bytes`` bytes; when it is full a write waits for room before its
    PREPARE (``dr_journal_when_full="wait"``, up to its deadline) or fails at once
    (``"fail"``), with ``JournalFull`` and nothing applied.  ``dr_journal_path`` keeps
    it in a file too, reloaded at start.  ``dr_max_skew_ms``: the bound on clock skew
    between bricks (as the bricks' ``change_max_skew_ms``).  ``dr_site``: the DR site
    (``{"seeds": [...], "cluster": ..., "secret"|"tls"|"credentials": ...}``);
    ``dr_failover="auto"`` replays the journal there and moves every call there when
    the primary is unreachable and the site was promoted from this cluster;
    ``dr_replay()`` does the replay on request."""

    log = Logger(observer=TO_LOGGING)       # to ``logging``, see lib/logging_bridge.py

    def __init__(self, reactor: Any, seeds: list[str], *, cluster: str,
                 secret: bytes | str | None = None, tls: TLSPaths | None = None,
                 role: str = "client", credentials: Credentials | None = None,
                 timeout: float = 10.0, max_key_bytes: int = 1024,
                 max_value_bytes: int = 1 << 20, max_frame: int = DEFAULT_MAX_FRAME,
                 refresh_interval: float = 30.0, node_id: str | None = None,
                 opener: Opener | None = None, rng: random.Random | None = None,
                 commit_mode: str = "parallel",
                 metrics_registry: CollectorRegistry | None = REGISTRY,
                 hedge: bool = True, dr_site: Mapping[str, Any] | None = None,
                 dr_failover: str = "auto",
                 dr_journal_max_entries: int = DEFAULT_MAX_ENTRIES,
                 dr_journal_max_bytes: int = DEFAULT_MAX_BYTES,
                 dr_journal_when_full: str = "wait",
                 dr_journal_path: str | os.PathLike[str] | None = None,
                 dr_max_skew_ms: int = DEFAULT_SKEW_MS) -> None:
        credentials = _credentials(cluster, secret, tls, role, credentials)
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.timeout = timeout
        #: Whether a read that a replica has not answered within the hedge delay is also
        #: sent to another replica (``lib/hedging.py``).
        self.hedging = hedge
        self.hedges = HedgeDelay()
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        # ``dds_client_*`` in the registry the service exports (prometheus_client's
        # global one by default; None: counted, but in no registry anyone exports).
        self.metrics = Metrics(CLIENT, metrics_registry)
        self._latency = {op: self.metrics.histogram("request_seconds", op=op)
                         for op in ("get", "put", "remove", "create", "cas")}
        # Every random choice (library id, backoff jitter, replica and seed order) comes
        # from one generator, so a seeded simulation replays exactly.
        self.rng = rng if rng is not None else random.Random(os.urandom(16))
        lib_id = self.rng.getrandbits(64)
        self.node_id = node_id or f"lib-{lib_id:016x}"
        self.role = role
        self.cluster = cluster
        #: The last failure to open a connection, by address: when it happened and why.
        #: A refused connection is a fact about the brick, not about one request, so a
        #: call can tell "every brick refused" (fail now) from "some may answer" (retry).
        self._unreachable: dict[tuple[str, int], tuple[float, str]] = {}
        #: Bricks that refused our credentials, the same way.
        self._refused: dict[tuple[str, int], tuple[float, str]] = {}
        self.connections = ConnectionCache(reactor, _logging_opener(opener or open_connection),
                                           node_id=self.node_id,
                                           cluster=cluster,
                                           credentials=credentials, max_frame=max_frame,
                                           metrics=self.metrics)
        self.maps = MapCache(seeds, self._connect, self.rng)
        self.excluder = Excluder(self._connect, self.maps, self.clock, self.metrics)
        self.coordinator = Coordinator(self.clock, self._connect, self.connections.cached,
                                       lib_id=lib_id, exclude=self.excluder.exclude,
                                       left=self.excluder.left, commit_mode=commit_mode)
        # Their classes log to Twisted's global log (they are shared with bricks and
        # tools); in a service's process the library's events go to ``logging``.
        for part in (self.maps, self.excluder, self.coordinator):
            part.log = library_logger(part)
        self.router = Router()
        # A timer on the given clock, not a LoopingCall: LoopingCall's constructor imports
        # twisted.internet.reactor, which installs the global reactor as a side effect
        # (an asyncio service must be free to install its own, lib/aio.py).
        self._refresh_call: Any = None
        self._refresh_interval = refresh_interval
        # The DR journal, tags, replay and failover (lib/drsite.py).
        journal = DrJournal(max_entries=dr_journal_max_entries,
                            max_bytes=dr_journal_max_bytes, when_full=dr_journal_when_full,
                            skew_ms=dr_max_skew_ms, path=dr_journal_path,
                            metrics=self.metrics, log=self.log)
        try:
            self.dr = DrSide(self, journal, dr_site, dr_failover)
        except BaseException:
            journal.close()
            raise
        self.coordinator.on_tagged = self.dr.on_tagged

    # -- construction --------------------------------------------------------------------

    @classmethod
    def connect(cls, reactor: Any, seeds: list[str], **options: Any) -> Deferred["DDSClient"]:
        """Create a client and fetch the map from the seeds."""
        async def go() -> DDSClient:
            client = cls(reactor, seeds, **options)
            await client.start()
            return client
        return Deferred.fromCoroutine(go())

    async def start(self) -> None:
        """Fetch the map.  A wrong secret or certificate is ``AuthenticationFailed``, not
        a retryable ``Unavailable``: retrying cannot help until the configuration changes."""
        since = self.clock.seconds()
        try:
            await self.maps.refresh()
        except Unavailable:
            refused = _since(self._refused, since)
            if refused:
                raise AuthenticationFailed(
                    f"the cluster refused the credentials of role {self.role!r} (cluster "
                    f"{self.cluster!r}): " + "; ".join(f"{h}:{p}: {why}" for (h, p), why
                                                       in refused.items())
                    + "; check the secret (or TLS files) the client was given") from None
            raise
        cluster = self.maps.map.cluster
        if cluster is not None:
            self.max_key_bytes = min(self.max_key_bytes, cluster.max_key_bytes)
            self.max_value_bytes = min(self.max_value_bytes, cluster.max_value_bytes)
        self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        self._refresh_call = self.clock.callLater(self._refresh_interval, self._refresh_tick)

    def _refresh_tick(self) -> None:
        d = Deferred.fromCoroutine(self._periodic_refresh())
        d.addBoth(lambda _: self._schedule_refresh() if self._refresh_call is not None
                  else None)

    def close(self) -> Deferred[None]:
        self.stop_refresh()

        async def go() -> None:
            await self.dr.close()
            for d in self.connections.close_all():
                await d
        return Deferred.fromCoroutine(go())

    def stop_refresh(self) -> None:
        """No more periodic map refreshes (at close, and once failed over to the DR
        site, whose own client refreshes its map)."""
        call, self._refresh_call = self._refresh_call, None
        if call is not None and call.active():
            call.cancel()

    @property
    def map(self) -> ClusterMap:
        """The map calls are routed by: the DR site's once this client failed over."""
        site = self.dr.failed_over
        return self.maps.map if site is None else site.map

    # -- disaster recovery (DESIGN §12, lib/drsite.py) -------------------------------------

    @property
    def dr_journal(self) -> DrJournal:
        """The journal of acknowledged writes the DR site may not hold yet (``len()``
        entries, ``.bytes``)."""
        return self.dr.journal

    def dr_replay(self) -> Deferred[ReplayReport]:
        """Replay the journal at the DR site (``dr_site``), which must have been promoted
        from this cluster (``NotPrimary`` otherwise, nothing replayed).  Entries applied
        or refused leave the journal; the report lists each by outcome."""
        return self._run(self.dr.replay())

    def replay_write(self, key: bytes, value: bytes | None, version: int,
                     timeout: float | None = None) -> Deferred[int]:
        """One journal entry replayed here (this client is the promoted site's):
        ``Prepare(op="replay")`` at ``version``, through the normal 2PC."""
        try:
            self._check(key)
        except DDSError as e:
            return _failed(e)
        return self._write_checked(key, "replay", value, version, timeout)

    async def _connect(self, host: str, port: int) -> RPCProtocol:
        try:
            conn = await self.connections.get(host, port)
        except AuthenticationFailed as e:
            self._refused[(host, port)] = (self.clock.seconds(), e.message)
            raise
        except Unavailable as e:       # the opener's: the connection could not be opened
            self._unreachable[(host, port)] = (self.clock.seconds(), e.message)
            raise
        self._unreachable.pop((host, port), None)
        return conn

    async def _nobody_answers(self, replicas: list[BrickRecord],
                              since: float) -> Unavailable | None:
        """When every replica of a key refused a connection since ``since``: whether any
        brick at all may answer (a fresh map fetch tries each one and the seeds).  If none
        can, waiting out the deadline only delays the error, so it is returned (naming
        each address and why) for the call to raise at once; otherwise None, and the call
        keeps retrying, since the map may route the key elsewhere soon."""
        if not replicas or not all((b.address, b.port) in _since(self._unreachable, since)
                                   for b in replicas):
            return None
        try:
            await self.maps.refresh()
            return None
        except Unavailable:
            pass
        down = _since(self._unreachable, since)
        everyone = {(b.address, b.port) for b in self.maps.map.bricks.values()}
        everyone.update(self.maps.seeds)
        if not everyone <= down.keys():
            return None                 # some brick answered, or failed otherwise
        self.metrics.inc("unavailable_total")
        return Unavailable("no brick of the cluster can be reached: " +
                           "; ".join(sorted(set(down.values()))))

    async def _periodic_refresh(self) -> None:
        try:
            await self.maps.refresh()
        except DDSError as e:
            self.log.warn("periodic map refresh failed: {error}", error=e.message)

    # -- input checks --------------------------------------------------------------------

    def _check(self, key: Any, value: Any = None, needs_value: bool = False) -> None:
        if not isinstance(key, bytes):
            raise InvalidRequest(f"keys are bytes, got {type(key).__name__}")
        if len(key) > self.max_key_bytes:
            raise KeyTooLarge(f"key of {len(key)} bytes exceeds the limit of "
                              f"{self.max_key_bytes} bytes")
        if needs_value:
            if not isinstance(value, bytes):
                raise InvalidRequest(f"values are bytes, got {type(value).__name__}")
            if len(value) > self.max_value_bytes:
                raise ValueTooLarge(f"value of {len(value)} bytes exceeds the limit of "
                                    f"{self.max_value_bytes} bytes")

    def _run(self, coro: Coroutine[Any, Any, T]) -> Deferred[T]:
        return Deferred.fromCoroutine(coro)

    # -- reads ---------------------------------------------------------------------------

    def _timed(self, d: Deferred[T], op: str, start: float) -> Deferred[T]:
        return d.addBoth(self._observe, op, start)

    def _observe(self, result: T, op: str, start: float) -> T:
        self._latency[op].observe(self.clock.seconds() - start)
        return result

    def get(self, key: bytes, timeout: float | None = None,
            consistency: str | Bounded | None = None) -> Deferred[GetResult]:
        """The key's value and version.  ``consistency``: ``"linearizable"`` (the
        default) or ``Bounded(seconds)``: any replica whose copy is provably at most that
        old answers, without waiting on a prepared key (DESIGN §3)."""
        dr = self.dr
        if dr.auto or dr.failed_over is not None:
            return dr.get(lambda: self._get_here(key, timeout, consistency),
                          lambda site: site.get(key, timeout, consistency))
        return self._get_here(key, timeout, consistency)

    def _get_here(self, key: bytes, timeout: float | None,
                  consistency: str | Bounded | None) -> Deferred[GetResult]:
        # Timed in ``dds_client_request_seconds`` (the fast path's in ``_got``, cheaper).
        if type(key) is not bytes or len(key) > self.max_key_bytes:
            try:
                self._check(key)
            except DDSError as e:
                return self._timed(_failed(e), "get", self.clock.seconds())
        timeout = timeout or self.timeout
        if consistency is not None:
            try:
                bound = check_consistency(consistency)
            except DDSError as e:
                return self._timed(_failed(e), "get", self.clock.seconds())
            if bound is not None:
                return self._timed(self._run(bounded_get(self, key, timeout, bound)), "get",
                                   self.clock.seconds())
        # Fast path, no coroutine: a routable key whose chosen replica is connected.
        try:
            route = self.router.route(self.maps.map, key)
        except (LookupError, ValueError):
            return self._timed(self._run(self._get(key, timeout)), "get", self.clock.seconds())
        conns = self.connections.open
        brick = pick_replica(route, _NONE, conns, self.rng)
        conn = conns.get((brick.address, brick.port)) if brick is not None else None
        if conn is None or brick is None:
            return self._timed(self._run(self._get(key, timeout)), "get", self.clock.seconds())
        d: Deferred[GetResult] = Deferred()
        read = _Read(d, key, timeout, self.clock.seconds(), brick.id, route)
        self._send_get(conn, read)
        if self.hedging and len(route.replicas) > 1:
            read.hedge = self.clock.callLater(self.hedges.delay(), self._hedge, read)
        return d

    def _send_get(self, conn: RPCProtocol, read: _Read) -> None:
        read.pending += 1
        route, key = read.route, read.key
        timeout = max(read.timeout - (self.clock.seconds() - read.start), 0.001)
        if GET_COMPACT in conn.peer_features:
            rg = route.rg
            conn.request(GET_COMPACT, [route.pid_text, rg.name, rg.version, rg.fp, key],
                         timeout, self._got, read)
        else:
            conn.request("get", route.request(key), timeout, self._got, read)

    def _hedge(self, read: _Read) -> None:
        """The replica has not answered within the hedge delay (a paused or overloaded
        brick): ask another one as well; the first valid answer wins (DESIGN §3 permits
        any active replica with a lease)."""
        read.hedge = None
        if read.done:
            return
        conns = self.connections.open
        other = pick_replica(read.route, {read.brick_id}, conns, self.rng)
        conn = conns.get((other.address, other.port)) if other is not None else None
        if conn is None or other is None:
            return
        read.hedged = other.id
        self.metrics.inc("get_hedged_total")
        self._send_get(conn, read)

    def _got(self, read: _Read, reply: Any) -> None:
        """The fast path's reply (or error), straight from the connection; with a hedge
        out, the first valid answer wins and an error waits for the other leg."""
        read.pending -= 1
        if read.done:
            return
        d, start = read.d, read.start
        if isinstance(reply, BaseException):
            if read.pending:
                read.failed = reply          # the other leg may still answer
                return
            read.finish()
            again = self._get_again(Failure(reply), read.key, read.timeout, start,
                                    read.brick_id, read.hedged)
            if isinstance(again, Deferred):
                self._timed(again, "get", start).chainDeferred(d)
            else:
                self._observe(None, "get", start)
                d.errback(again)
            return
        read.finish()
        elapsed = self.clock.seconds() - start
        self._latency["get"].observe(elapsed)
        if read.hedged is None:
            self.hedges.observe(elapsed)
        try:
            result = (GetResult(reply[0], reply[1]) if type(reply) is list
                      else _get_result(reply))
        except Exception:
            d.errback()
            return
        d.callback(result)

    def _get_again(self, failure: Failure, key: bytes, timeout: float, start: float,
                   brick_id: str, hedged: str | None = None) -> Deferred[GetResult] | Failure:
        """The fast path failed: a stale map or an unresponsive replica is handled by the
        general path, which starts by avoiding the replica that just failed."""
        error = failure.value
        if isinstance(error, Divergence) or not isinstance(error, (StaleMap,) + _READ_RETRY):
            return failure      # divergence needs an operator (dds-admin repair), not a retry
        remaining = timeout - (self.clock.seconds() - start)
        if remaining <= 0:
            return Failure(Timeout(f"get timed out after {timeout:g}s: {error}"))
        tried = set() if isinstance(error, StaleMap) else {brick_id}
        if hedged is not None and not isinstance(error, StaleMap):
            tried.add(hedged)
        failed: dict[str, DDSError] = {}
        if isinstance(error, _DAMAGED):
            failed[brick_id] = error
            self._read_failed(key, brick_id, error)
        return self._run(self._get(key, remaining, tried, failed))

    def _read_failed(self, key: bytes, brick_id: str, error: DDSError) -> None:
        """A replica could not serve a read (damaged, or an internal error): counted, and
        logged at debug level, since the read goes on with another replica."""
        self.metrics.inc("get_replica_errors_total")
        self.log.debug("get of {key!r} from {brick} failed ({code}: {error}); trying "
                       "another replica", key=key[:64], brick=brick_id, code=error.code,
                       error=error.message)

    async def _get(self, key: bytes, timeout: float, tried: set[str] | None = None,
                   failed: dict[str, DDSError] | None = None) -> GetResult:
        """The general read: each replica at most once per round, a pause between
        rounds.  ``failed``: replicas that answered a damaged replica or an internal
        error (this round); when every replica did, no other can serve the key, and the
        first such error is the answer rather than a wait for the deadline."""
        start = self.clock.seconds()
        deadline = start + timeout
        tried = tried if tried is not None else set()
        failed = failed if failed is not None else {}
        attempt = 0
        while True:
            route = await self._route(key, deadline)
            brick = pick_replica(route, tried, self.connections.open, self.rng)
            if brick is None:        # every replica failed once: start over after a pause
                if route.replicas and all(b.id in failed for b in route.replicas):
                    raise next(e for e in failed.values())
                down = await self._nobody_answers(route.replicas, start)
                if down is not None:
                    raise down
                tried.clear()
                failed.clear()
                attempt += 1
                await self._backoff(attempt, deadline, "no replica of "
                                    f"{route.pid_text} answered")
                continue
            remaining = deadline - self.clock.seconds()
            conn: RPCProtocol | None = None
            try:
                conn = await self._connect(brick.address, brick.port)
                reply = await conn.call("get", route.request(key),
                                        timeout=max(remaining, 0.001))
                return _get_result(reply)
            except StaleMap as e:
                attempt += 1
                await self._repair(e, conn, deadline)
            except _READ_RETRY as e:
                tried.add(brick.id)
                if isinstance(e, _DAMAGED):
                    failed[brick.id] = e
                    self._read_failed(key, brick.id, e)
                self.metrics.inc("get_retries_total")
                if self.clock.seconds() >= deadline:
                    raise Timeout(f"get timed out after {timeout:g}s: {e.message}") from None

    def changes(self, partition: str, from_position: str | None = None, *,
                limit: int = MAX_PAGE, timeout: float | None = None) -> ChangeCursor:
        """A cursor over ``partition``'s committed changes after ``from_position`` (a
        position a change or page carried, ``"beginning"`` (None) or ``"now"``); see
        ``dds.lib.changes``: at least once, compacted, ordered per key by version."""
        site = self.dr.failed_over
        if site is not None:
            return site.changes(partition, from_position, limit=limit, timeout=timeout)
        return ChangeCursor(self, partition, from_position, limit=limit, timeout=timeout)

    # -- writes --------------------------------------------------------------------------

    @_timed_call("put")
    def put(self, key: bytes, value: bytes, timeout: float | None = None) -> Deferred[int]:
        """Store ``value``; returns the key's new version."""
        return self._write(key, "put", value, None, timeout, needs_value=True)

    @_timed_call("remove")
    def remove(self, key: bytes, timeout: float | None = None) -> Deferred[int]:
        """Delete the key (a tombstone; its version still grows)."""
        return self._write(key, "remove", None, None, timeout)

    @_timed_call("create")
    def create(self, key: bytes, value: bytes, timeout: float | None = None) -> Deferred[int]:
        """Store ``value`` only if the key has none; fails with ``Exists`` otherwise."""
        return self._write(key, "create", value, None, timeout, needs_value=True)

    @_timed_call("cas")
    def compare_and_put(self, key: bytes, value: bytes, expected_version: int,
                        timeout: float | None = None) -> Deferred[int]:
        """Store ``value`` only if the key is at ``expected_version`` (0: never written);
        fails with ``VersionMismatch`` otherwise."""
        if not isinstance(expected_version, int) or expected_version < 0:
            return _failed(InvalidRequest("expected_version must be a non-negative int"))
        return self._write(key, "cas", value, expected_version, timeout, needs_value=True)

    def _write(self, key: bytes, op: str, value: bytes | None, expected: int | None,
               timeout: float | None, needs_value: bool = False) -> Deferred[int]:
        try:
            self._check(key, value, needs_value)
        except DDSError as e:
            return _failed(e)
        dr = self.dr
        if dr.auto or dr.journal.engaged or dr.failed_over is not None:
            return dr.write(key, op, value, expected, timeout)
        return self._write_checked(key, op, value, expected, timeout)

    def _write_checked(self, key: bytes, op: str, value: bytes | None,
                       expected: int | None, timeout: float | None) -> Deferred[int]:
        """A write whose input was checked, at this client's cluster."""
        now = self.clock.seconds()
        deadline = now + (timeout or self.timeout)
        # Wait-die priority: fixed across retries, so a retried write only gets older.
        # The reactor's clock is wall-clock time in production, so timestamps of different
        # libraries are comparable; in a simulation it is the simulated clock.
        ts = (int(now * 1e9), self.coordinator.lib_id)
        try:
            route = self.router.route(self.maps.map, key)
        except (LookupError, ValueError):
            return self._run(self._write_loop(key, op, value, expected, deadline, ts))
        # The first attempt without a coroutine; retries take the general loop.  The
        # caller's Deferred fires only with the final outcome.
        result: Deferred[int] = Deferred()
        self.coordinator.start(route, key, op, value, expected, ts, deadline).addCallbacks(
            result.callback, self._write_failed,
            errbackArgs=(result, route, key, op, value, expected, deadline, ts))
        return result

    def _write_failed(self, failure: Failure, result: Deferred[int], route: Route,
                      key: bytes, op: str, value: bytes | None, expected: int | None,
                      deadline: float, ts: tuple[int, int]) -> None:
        error = failure.value
        if isinstance(error, PrepareFailed):
            self._run(self._write_loop(key, op, value, expected, deadline, ts,
                                       (error, route))).chainDeferred(result)
            return
        if isinstance(error, Indeterminate):
            self.metrics.inc("indeterminate_total")
        result.errback(failure)

    async def _write_loop(self, key: bytes, op: str, value: bytes | None,
                          expected: int | None, deadline: float, ts: tuple[int, int],
                          failed: tuple[PrepareFailed, Route] | None = None) -> int:
        """Attempts until one succeeds or the deadline; ``failed``: a first attempt that
        already failed with nothing applied, and the route it took."""
        attempt = 0
        while True:
            if failed is not None:
                e, route = failed
                failed = None
                if all(isinstance(x, Unavailable) for x in e.errors):
                    # No member could even be connected to: none saw the PREPARE.
                    down = await self._nobody_answers(route.replicas, ts[0] / 1e9)
                    if down is not None:
                        raise down
                # Retries during a recovery's write fence are expected and short: they
                # must not grow the backoff of whatever error comes next.
                fenced = all(isinstance(x, Recovering) for x in e.errors)
                attempt = 0 if fenced else attempt + 1
                await self._after_no_votes(e.errors, deadline, max(attempt, 1), e.bricks,
                                           route)
            route = await self._route(key, deadline)
            try:
                return await self.coordinator.start(route, key, op, value, expected, ts,
                                                    deadline)
            except PrepareFailed as e:
                failed = (e, route)
            except Indeterminate:
                self.metrics.inc("indeterminate_total")
                raise

    async def _after_no_votes(self, errors: list[DDSError], deadline: float,
                              attempt: int, bricks: list[BrickRecord] | None = None,
                              route: Route | None = None) -> None:
        """Nothing was applied; decide whether and when to try again."""
        for e in errors:
            if isinstance(e, (Exists, VersionMismatch, Divergence, ReplayRefused,
                              NotPrimary)):
                raise e
        if all(isinstance(e, ReplayWindow) for e in errors):
            await self._replay_window(errors[0], deadline)
            return
        who: list[BrickRecord | None] = list(bricks) if bricks else [None] * len(errors)
        lost = [(b, e) for b, e in zip(who, errors)
                if b is not None and isinstance(e, UNREACHABLE)]
        if lost and route is not None and len(lost) == len(errors):
            # Write-all cannot go on without them: have them excluded, then retry at once.
            outcomes = [await self.excluder.exclude(route, b, f"prepare failed: {e.message}",
                                                    deadline) for b, e in lost if b]
            if all(outcomes):
                return
        stale = [(b, e) for b, e in zip(who, errors) if isinstance(e, StaleMap)]
        if stale:
            self.metrics.inc("write_stale_map_total")
            for brick, error in stale:      # adopt the brick's record, or push ours to it
                conn: RPCProtocol | None = None
                try:
                    if brick is not None:
                        conn = await self._connect(brick.address, brick.port)
                    await self._repair(error, conn, deadline)
                except _TRANSIENT:
                    pass
            if attempt > 1:                 # the repair did not help at once: pause
                await self._backoff(attempt, deadline, "map still stale: " +
                                    stale[0][1].message)
            return
        if all(isinstance(e, Recovering) for e in errors):
            # A recovery source fences writes for the short delta of a re-sync (DESIGN
            # §7): try again soon, without growing the backoff or refetching the map.
            self.metrics.inc("write_fenced_retries_total")
            await self._backoff(1, deadline, "; ".join(e.message for e in errors))
            return
        if all(isinstance(e, (Locked,) + _STEPPING_OUT + _TRANSIENT) for e in errors):
            self.metrics.inc("write_retries_total")
            if any(isinstance(e, _STEPPING_OUT) for e in errors):
                self.metrics.inc("write_member_stepping_out_total")
                self.log.debug("write refused by a member stepping out ({error}); retrying",
                               error="; ".join(e.message for e in errors))
            if any(isinstance(e, _TRANSIENT + _STEPPING_OUT) for e in errors):
                self._refresh_soon()
            await self._backoff(attempt, deadline, "; ".join(e.message for e in errors))
            return
        raise errors[0]

    async def _route(self, key: bytes, deadline: float | None = None) -> Route:
        """Route by the current map; if the map cannot route the key (a record missing,
        or a partition between two RGs in the cut-over of a move, DESIGN §8), fetch it
        again, and keep trying until the deadline, then give up with Unavailable."""
        try:
            return self.router.route(self.maps.map, key)
        except (LookupError, ValueError):
            pass
        attempt = 0
        while True:
            # Mid-move, the RG taking the key's partition has the record that routes it
            # first: ask its members before the others.
            await self.maps.refresh(prefer=self.maps.takers(
                e.pid for rec in self.maps.map.rgs.values() for e in rec.partitions
                if e.pid.owns(key)))
            try:
                return self.router.route(self.maps.map, key)
            except (LookupError, ValueError) as e:
                attempt += 1
                self.metrics.inc("route_retries_total")
                if deadline is None:
                    raise Unavailable(f"the map does not route key {key[:64]!r}: "
                                      f"{e}") from None
                try:
                    # A cut-over lasts tens of ms: retry soon, not exponentially; while
                    # the key's partition is between two RGs, every 2-6 ms (the
                    # backoff's first step).
                    step = 1 if _mid_move(self.maps.map, key) else min(attempt, 2)
                    await self._backoff(step, deadline, f"the map does not route key "
                                        f"{key[:64]!r}: {e}")
                except Timeout:
                    raise Unavailable(f"the map does not route key {key[:64]!r}: "
                                      f"{e}") from None

    # -- recovery from errors ------------------------------------------------------------

    async def _repair(self, error: StaleMap, conn: RPCProtocol | None,
                      deadline: float) -> None:
        self.metrics.inc("map_repairs_total")
        if self.clock.seconds() >= deadline:
            raise Timeout(f"map could not be repaired in time: {error.message}")
        if conn is None:
            await self.maps.refresh()
        else:
            await self.maps.repair(error, conn)

    async def _replay_window(self, error: DDSError, deadline: float) -> None:
        """A promoted DR site takes only journal replays until its window closes (DESIGN
        §12): wait for that (re-asking at least every half second), or give up with the
        error at the deadline."""
        data = error.data if isinstance(error.data, dict) else {}
        until = data.get("until_ms")
        now = self.clock.seconds()
        wait = (until / 1000.0 - now) if isinstance(until, (int, float)) else 0.1
        wait = min(max(wait, 0.01), 0.5)
        if now + wait >= deadline:
            raise error
        await sleep(self.clock, wait)

    def _refresh_soon(self) -> None:
        d = Deferred.fromCoroutine(self._periodic_refresh())
        d.addErrback(lambda f: None)

    async def _backoff(self, attempt: int, deadline: float, why: str) -> None:
        delay = min(0.2, 0.002 * (2 ** min(attempt, 7))) * (0.5 + self.rng.random())
        if self.clock.seconds() + delay >= deadline:
            raise Timeout(f"gave up at the deadline: {why}")
        d: Deferred[None] = Deferred()
        self.clock.callLater(delay, d.callback, None)
        await d


_NONE: frozenset[str] = frozenset()


class _Read:
    """One fast-path read: its first request and, if the replica is slow to answer, a
    hedged second one (``hedged``: that replica's id)."""

    __slots__ = ("d", "key", "timeout", "start", "brick_id", "route", "pending", "done",
                 "hedge", "hedged", "failed")

    def __init__(self, d: Deferred[GetResult], key: bytes, timeout: float, start: float,
                 brick_id: str, route: Route) -> None:
        self.d = d
        self.key = key
        self.timeout = timeout
        self.start = start
        self.brick_id = brick_id
        self.route = route
        self.pending = 0
        self.done = False
        self.hedge: Any = None
        self.hedged: str | None = None
        self.failed: BaseException | None = None

    def finish(self) -> None:
        self.done = True
        if self.hedge is not None and self.hedge.active():
            self.hedge.cancel()
        self.hedge = None


def _since(failures: dict[tuple[str, int], tuple[float, str]], since: float
           ) -> dict[tuple[str, int], str]:
    """The failures seen at or after ``since``, by address."""
    return {addr: why for addr, (at, why) in failures.items() if at >= since}


#: A brick that answers nothing on a connection for this long while requests wait is
#: pinged, and given up (its requests fail with ``Timeout``) if the ping too goes
#: unanswered for ``SILENCE_PROBE_TIMEOUT_S`` (``RPCProtocol.probe_silence``): a paused
#: member then costs a write about a second before its exclusion is asked for, instead
#: of the whole vote timeout (``PREPARE_ATTEMPT_S``).  The timeout is generous: a brick
#: busy with a long request still answers a ping within it.
SILENCE_PROBE_AFTER_S = 0.5
SILENCE_PROBE_TIMEOUT_S = 1.0


def _logging_opener(opener: Opener) -> Opener:
    """``opener`` whose connections log to ``logging`` (see lib/logging_bridge.py):
    ``RPCProtocol`` is shared with bricks, so its class-level logger cannot change."""
    async def open_logging(reactor: Any, host: str, port: int, **options: Any
                           ) -> RPCProtocol:
        conn = await opener(reactor, host, port, **options)
        try:
            conn.log = library_logger(conn)
        except AttributeError:                   # a test's stand-in with __slots__
            pass
        if isinstance(conn, RPCProtocol):
            conn.probe_silence(SILENCE_PROBE_AFTER_S, SILENCE_PROBE_TIMEOUT_S)
        return conn
    return open_logging


def _mid_move(cmap: ClusterMap, key: bytes) -> bool:
    """Whether an RG lists ``key``'s partition as outgoing or incoming: a move of it is
    in its cut-over (DESIGN §8), which the next map will end."""
    return any(e.state in ("outgoing", "incoming") and e.pid.owns(key)
               for rec in cmap.rgs.values() for e in rec.partitions)


def _get_result(reply: dict[str, Any]) -> GetResult:
    return GetResult(reply["value"], reply["version"])


def _failed(error: DDSError) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d
