"""An in-memory network on a simulated clock, and a cluster of bricks on it.

No sockets, no real time, no global reactor.  ``MemoryNetwork`` connects protocols through
small in-memory transports: bytes written are queued and delivered by the pump (after
``latency`` simulated seconds, plus up to ``jitter``), in order per direction, as TCP does.
A ``twisted.internet.task.Clock`` is the only reactor: bricks and clients use it for
``callLater``/``seconds`` and get their connections from :meth:`MemoryNetwork.opener`.

The pump interleaves deliveries and timers in simulated-time order:

* :meth:`MemoryNetwork.flush` delivers everything due now and runs the timers due now
  (``callLater(0, ...)`` chains such as storage group commit), without advancing time;
* :meth:`MemoryNetwork.advance` lets ``seconds`` of simulated time pass;
* :meth:`MemoryNetwork.run` pumps until a Deferred fires and returns its result (or raises
  its failure), and fails loudly if it does not fire within ``timeout`` simulated seconds
  or if nothing at all is pending.

Faults: :meth:`~MemoryNetwork.disconnect` cuts every connection to an address (both ends
see ``connectionLost``) and refuses new ones; :meth:`~MemoryNetwork.partition` does the
same between two groups of nodes; :meth:`~MemoryNetwork.heal` lifts every block;
:meth:`~MemoryNetwork.cut` breaks one connection.  :meth:`~MemoryNetwork.set_delay` adds
latency to every connection between two nodes (a slow link; FIFO per direction stays).
:meth:`~MemoryNetwork.pause` holds deliveries to a node until :meth:`~MemoryNetwork.resume`
(its timers still run: the clock is shared); with ``stop_process=True`` the node's
accepted connections and connection losses are held too, so that, with its timers held by
its ``tests.sim.nodes.NodeReactor``, none of its code runs (``kill -STOP``).
:meth:`~MemoryNetwork.kill` makes a node dead (``kill -9``): its connections break (only
the peers see it), its listeners go, nothing is delivered to it until
:meth:`~MemoryNetwork.revive`.  An exception raised by a protocol callback is not
swallowed: it closes the connection and is raised out of the pump.

``SimCluster`` builds N bricks (real SQLite files under a temporary directory), a hand-made
map pushed to all of them, and ``DDSClient``s on the network.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.error import ConnectionLost as TCPConnectionLost
from twisted.internet.interfaces import IProtocol, IProtocolFactory, ITransport
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from dds.bricks.server import Brick
from dds.bricks.partstore import ReadResult
from dds.auth import MIN_SECRET_BYTES, ROLES, Credentials, secret_env
from dds.config import BrickConfig, parse_brick_config
from dds.connect import credentials_of
from dds.connect import Opener
from dds.errors import DDSError, Unavailable
from dds.lib.client import DDSClient
from dds.maps import ClusterMap
from dds.metrics import Metrics
from dds.partition import initial_partitions
from dds.records import (BrickRecord, ClusterRecord, Member, PartitionEntry, Record,
                         RGRecord)
from dds.rpc import Handler, RPCProtocol

from tests.sim.clock import SimClock, earliest

__all__ = ["MemoryNetwork", "Connection", "SimCluster", "SimulationError", "CLIENT", "SERVER",
           "as_deferred"]

T = TypeVar("T")

Address = tuple[str, int]
#: Sides of a connection: the end that connected and the end that listened.
CLIENT, SERVER = 0, 1


def as_deferred(aw: Awaitable[T]) -> Deferred[T]:
    """A Deferred for any awaitable (a Deferred itself, a coroutine, an opener's result)."""
    if isinstance(aw, Deferred):
        return aw

    async def wait() -> T:
        return await aw
    return ensureDeferred(wait())


class SimulationError(AssertionError):
    """The simulation could not do what was asked: a run that did not finish in time,
    a run with nothing left to do, or a protocol callback that raised."""


@implementer(ITransport)
class _Transport:
    """One end of a :class:`Connection`, as its protocol sees it."""

    def __init__(self, net: MemoryNetwork, conn: Connection, side: int) -> None:
        self._net = net
        self._conn = conn
        self._side = side

    def write(self, data: bytes) -> None:
        self._net._send(self._conn, self._side, bytes(data))

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close after what was written so far is delivered; stop reading at once."""
        self._net._lose(self._conn, self._side)

    def abortConnection(self) -> None:
        """Close at once (on the next pump step), dropping what is still in flight."""
        self._net._schedule(self._conn, 1 - self._side, "abort", b"", self._net.clock.seconds())

    def getPeer(self) -> IPv4Address:
        return self._conn.addresses[1 - self._side]

    def getHost(self) -> IPv4Address:
        return self._conn.addresses[self._side]


class Connection:
    """A connection between a client protocol and a server protocol."""

    def __init__(self, cid: int, names: tuple[str, str], server_addr: Address,
                 protos: tuple[IProtocol, IProtocol], client_port: int) -> None:
        self.id = cid
        #: Node names of (client, server): the opener's node id, the listener's name.
        self.names = names
        self.server_addr = server_addr
        self.protos = protos
        self.addresses = (IPv4Address("TCP", names[0], client_port),
                          IPv4Address("TCP", server_addr[0], server_addr[1]))
        self.open = True
        #: Per side: it called loseConnection (stopped reading, writes ignored).
        self.closing = [False, False]
        #: Per receiving side: delivery time of the last byte queued towards it (FIFO).
        self.last_delivery = [0.0, 0.0]
        #: Per sending side: bytes written.
        self.bytes_sent = [0, 0]
        #: Per side: ``makeConnection`` was called (the server's waits while it is stopped).
        self.made = [True, True]

    def __repr__(self) -> str:
        state = "open" if self.open else "closed"
        return f"<Connection {self.id} {self.names[0]} -> {self.names[1]} {state}>"

    def involves(self, name: str) -> bool:
        return name in self.names


_Event = tuple[float, int, Connection, int, str, bytes]   # time, seq, conn, to side, kind, data
Tap = Callable[[Connection, int, bytes], None]


class MemoryNetwork:
    """In-memory connections between protocols, driven by a simulated clock."""

    def __init__(self, clock: Clock, rng: random.Random | None = None,
                 latency: float = 0.0, jitter: float = 0.0, strict: bool = True) -> None:
        self.clock = clock
        self.rng = rng if rng is not None else random.Random(0)
        self.latency = latency
        self.jitter = jitter
        #: Raise protocol callback exceptions out of the pump (else only record them).
        self.strict = strict
        #: Most deliveries and timers one :meth:`flush` may run (a livelock guard).
        self.max_steps = 100_000
        self.errors: list[Failure] = []
        self.connections: list[Connection] = []
        #: Called as ``tap(connection, receiving side, data)`` for every delivered chunk.
        self.taps: list[Tap] = []
        self.connects = 0
        self.bytes_sent = 0
        self._listeners: dict[Address, tuple[IProtocolFactory, str]] = {}
        self._down: set[Address] = set()
        self._cuts: set[frozenset[str]] = set()
        self._paused: set[str] = set()
        self._stopped: set[str] = set()
        self._dead: set[str] = set()
        self._delays: dict[frozenset[str], float] = {}
        self._held: list[_Event] = []
        self._events: list[_Event] = []
        self._seq = itertools.count()
        self._ports = itertools.count(40000)

    # -- topology ------------------------------------------------------------------------

    def listen(self, host: str, port: int, factory: IProtocolFactory,
               name: str | None = None) -> None:
        """Accept connections to ``host:port`` with ``factory``; ``name`` identifies the
        node in :meth:`partition`/:meth:`pause` (default ``"host:port"``)."""
        addr = (host, port)
        if addr in self._listeners:
            raise SimulationError(f"{host}:{port} is already listening")
        self._listeners[addr] = (factory, name or f"{host}:{port}")

    def unlisten(self, host: str, port: int) -> None:
        """Stop accepting connections (existing ones stay)."""
        self._listeners.pop((host, port), None)

    def name_of(self, host: str, port: int) -> str:
        return self._listeners[(host, port)][1]

    def connect(self, host: str, port: int, protocol: IProtocol,
                name: str = "client") -> Connection:
        """Connect ``protocol`` (as node ``name``) to the listener at ``host:port``;
        ``dds.errors.Unavailable`` if nobody listens there or the path is cut."""
        addr = (host, port)
        listener = self._listeners.get(addr)
        if listener is None:
            raise Unavailable(f"cannot connect to {host}:{port}: connection refused")
        factory, server_name = listener
        if addr in self._down or frozenset((name, server_name)) in self._cuts:
            raise Unavailable(f"cannot connect to {host}:{port}: unreachable "
                              f"(memory network cut)")
        client_port = next(self._ports)
        server = factory.buildProtocol(IPv4Address("TCP", name, client_port))
        if server is None:
            raise Unavailable(f"cannot connect to {host}:{port}: connection refused")
        conn = Connection(next(self._seq), (name, server_name), addr, (protocol, server),
                          client_port)
        self.connections.append(conn)
        self.connects += 1
        protocol.makeConnection(_Transport(self, conn, CLIENT))
        if server_name in self._stopped:    # accepted by the kernel, seen by it later
            conn.made[SERVER] = False
            self._held.append((self.clock.seconds(), next(self._seq), conn, SERVER, "made",
                               b""))
        else:
            server.makeConnection(_Transport(self, conn, SERVER))
        return conn

    def opener(self) -> Opener:
        """An ``Opener`` (see ``dds.connect``) that connects over this network."""
        net = self

        async def open_memory(reactor: Any, host: str, port: int, *, node_id: str,
                              cluster: str, max_frame: int,
                              credentials: Credentials | None = None,
                              secret: bytes | str | None = None, role: str = "client",
                              timeout: float = 5.0, handler: Handler | None = None,
                              metrics: Metrics | None = None) -> RPCProtocol:
            proto = RPCProtocol(is_client=True, node_id=node_id, cluster=cluster,
                                credentials=credentials_of(credentials, secret, role),
                                clock=reactor, handler=handler,
                                max_frame=max_frame, metrics=metrics,
                                handshake_timeout=timeout)
            net.connect(host, port, proto, name=node_id)
            try:
                await proto.ready
            except DDSError:
                proto.close()
                raise
            return proto
        return open_memory

    # -- faults --------------------------------------------------------------------------

    def disconnect(self, host: str, port: int, refuse: bool = True) -> None:
        """Cut every connection to ``host:port`` (both ends see ``connectionLost``); with
        ``refuse``, new connections fail with ``Unavailable`` until :meth:`heal`."""
        if refuse:
            self._down.add((host, port))
        for conn in list(self.connections):
            if conn.server_addr == (host, port):
                self._close(conn, TCPConnectionLost("memory network: link cut"))

    def partition(self, a: str | Iterable[str], b: str | Iterable[str]) -> None:
        """Cut every connection between a node of ``a`` and a node of ``b`` (node names:
        listener names and the opener's node ids) and refuse new ones until :meth:`heal`."""
        group_a = {a} if isinstance(a, str) else set(a)
        group_b = {b} if isinstance(b, str) else set(b)
        for x in group_a:
            for y in group_b:
                self._cuts.add(frozenset((x, y)))
        for conn in list(self.connections):
            x, y = conn.names
            if (x in group_a and y in group_b) or (x in group_b and y in group_a):
                self._close(conn, TCPConnectionLost("memory network: partitioned"))

    def cut(self, conn: Connection) -> None:
        """Break one connection now: both ends see ``connectionLost`` (a stopped end when
        it resumes, a dead end never); what was in flight is lost."""
        self._close(conn, TCPConnectionLost("memory network: connection cut"))

    def set_delay(self, a: str, b: str, seconds: float) -> None:
        """Add ``seconds`` of latency to every connection between nodes ``a`` and ``b``
        (0 lifts it).  Bytes already in flight keep their delivery time; FIFO per
        direction is kept (later bytes never overtake earlier ones)."""
        pair = frozenset((a, b))
        if seconds > 0:
            self._delays[pair] = seconds
        else:
            self._delays.pop(pair, None)

    def clear_delays(self) -> None:
        """Lift every :meth:`set_delay`."""
        self._delays.clear()

    def heal(self) -> None:
        """Lift every :meth:`disconnect` and :meth:`partition` (cut connections stay cut)."""
        self._down.clear()
        self._cuts.clear()

    def pause(self, name: str, stop_process: bool = False) -> None:
        """Hold every delivery to node ``name`` (a paused process reads nothing).  With
        ``stop_process``, also hold the connections it accepts and the connection losses
        it would see: the whole process is stopped, not just its reading."""
        self._paused.add(name)
        if stop_process:
            self._stopped.add(name)

    def resume(self, name: str) -> None:
        """Deliver what was held for ``name``, in order, on the next pump step."""
        self._paused.discard(name)
        self._stopped.discard(name)
        held, self._held = self._held, []
        for ev in held:
            if ev[2].names[ev[3]] == name:
                heapq.heappush(self._events, ev)
            else:
                self._held.append(ev)

    def kill(self, name: str) -> None:
        """Node ``name`` died: stop listening for it, break its connections (the peers see
        ``connectionLost``, the dead end sees nothing), drop what is held for it, and
        deliver nothing to it until :meth:`revive`."""
        self._dead.add(name)
        self._paused.discard(name)
        self._stopped.discard(name)
        for addr, (_factory, lname) in list(self._listeners.items()):
            if lname == name:
                del self._listeners[addr]
        self._held = [ev for ev in self._held if ev[2].names[ev[3]] != name]
        for conn in list(self.connections):
            if conn.involves(name):
                self._close(conn, TCPConnectionLost(f"memory network: {name} died"))

    def revive(self, name: str) -> None:
        """A new incarnation of ``name`` may listen and connect (see :meth:`kill`)."""
        self._dead.discard(name)

    def is_dead(self, name: str) -> bool:
        return name in self._dead

    # -- transports ----------------------------------------------------------------------

    def _schedule(self, conn: Connection, to_side: int, kind: str, data: bytes,
                  at: float) -> None:
        heapq.heappush(self._events, (at, next(self._seq), conn, to_side, kind, data))

    def _delivery_time(self, conn: Connection, to_side: int) -> float:
        t = self.clock.seconds() + self.latency
        if self._delays:
            t += self._delays.get(frozenset(conn.names), 0.0)
        if self.jitter:
            t += self.jitter * self.rng.random()
        t = max(t, conn.last_delivery[to_side])     # FIFO per direction
        conn.last_delivery[to_side] = t
        return t

    def _send(self, conn: Connection, side: int, data: bytes) -> None:
        if not conn.open or conn.closing[side] or not data or conn.names[side] in self._dead:
            return
        conn.bytes_sent[side] += len(data)
        self.bytes_sent += len(data)
        to = 1 - side
        self._schedule(conn, to, "data", data, self._delivery_time(conn, to))

    def _lose(self, conn: Connection, side: int) -> None:
        if not conn.open or conn.closing[side]:
            return
        conn.closing[side] = True
        to = 1 - side
        self._schedule(conn, to, "fin", b"", self._delivery_time(conn, to))

    def _close(self, conn: Connection, reason: Exception) -> None:
        if not conn.open:
            return
        conn.open = False
        self.connections.remove(conn)
        raised: list[Exception | None] = []
        for side, proto in enumerate(conn.protos):
            name = conn.names[side]
            if name in self._dead or not conn.made[side]:
                continue
            if name in self._stopped:       # it learns of the loss when it resumes
                self._held.append((self.clock.seconds(), next(self._seq), conn, side,
                                   "lost", b""))
                continue
            raised.append(self._call(proto.connectionLost, Failure(reason)))
        self._raise(conn, next((e for e in raised if e is not None), None))

    def _call(self, fn: Callable[..., Any], *args: Any) -> Exception | None:
        """Run a protocol callback; record (and return) what it raised."""
        try:
            fn(*args)
        except Exception as e:
            self.errors.append(Failure())
            return e
        return None

    def _raise(self, conn: Connection, error: Exception | None) -> None:
        if error is not None and self.strict:
            raise SimulationError(f"{conn}: a protocol callback raised {error!r}") from error

    def _deliver(self, ev: _Event) -> None:
        _t, _seq, conn, to, kind, data = ev
        if conn.names[to] in self._dead:
            return
        if kind in ("lost", "made") and conn.names[to] in self._stopped:
            self._held.append(ev)           # stopped again before it was delivered
            return
        if kind == "lost":
            self._raise(conn, self._call(conn.protos[to].connectionLost, Failure(
                TCPConnectionLost("memory network: connection lost while stopped"))))
            return
        if not conn.open:
            return
        if kind == "made":
            conn.made[to] = True
            self._raise(conn, self._call(conn.protos[to].makeConnection,
                                         _Transport(self, conn, to)))
            return
        if kind == "abort":
            self._close(conn, TCPConnectionLost("memory network: connection aborted"))
        elif conn.names[to] in self._paused:
            self._held.append(ev)
        elif kind == "fin":
            self._close(conn, ConnectionDone("memory network: connection closed"))
        elif not conn.closing[to]:          # else: that end stopped reading
            for tap in self.taps:
                tap(conn, to, data)
            error = self._call(conn.protos[to].dataReceived, data)
            if error is not None:           # as a reactor does: drop the connection
                self._close(conn, error)
                self._raise(conn, error)

    # -- the pump ------------------------------------------------------------------------

    def _next_time(self) -> float | None:
        times = [t for t in (earliest(self.clock),) if t is not None]
        if self._events:
            times.append(self._events[0][0])
        return min(times) if times else None

    def _set_time(self, t: float) -> None:
        if t > self.clock.seconds():
            self.clock.rightNow = t

    def flush(self) -> None:
        """Deliver everything due and run every timer due, without advancing time.

        Works like reactor iterations: run the timers due, then deliver the bytes that were
        due when the iteration began; what those callbacks send or schedule waits for the
        next iteration.  Raises ``SimulationError`` after ``max_steps`` deliveries and
        timer rounds at one instant: with no latency, a retry loop without backoff never
        lets time pass.
        """
        steps = 0
        while True:
            now = self.clock.seconds()
            due = earliest(self.clock)
            timers = due is not None and due <= now
            if timers:
                self.clock.advance(0)
            batch: list[_Event] = []
            while self._events and self._events[0][0] <= now:
                batch.append(heapq.heappop(self._events))
            for ev in batch:
                self._deliver(ev)
            if not timers and not batch:
                return
            steps += len(batch) + timers
            if steps > self.max_steps:
                raise SimulationError(
                    f"flush did not settle after {self.max_steps} steps at t="
                    f"{now:g} (a livelock: something retries without letting time pass?)")

    def deliver_in_flight(self) -> None:
        """Let time pass until everything sent so far (and what its delivery sends at
        the same instants) has arrived; timers due meanwhile run, as they would."""
        self.flush()
        while self._events:
            self._set_time(self._events[0][0])
            self.flush()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass, delivering and firing in time order."""
        target = self.clock.seconds() + seconds
        while True:
            self.flush()
            nxt = self._next_time()
            if nxt is None or nxt > target:
                break
            self._set_time(nxt)
        self._set_time(target)
        self.flush()

    def run(self, d: Awaitable[Any], timeout: float = 60.0) -> Any:
        """Pump until ``d`` fires; return its result or raise its failure.  Raises
        ``SimulationError`` if it has not fired after ``timeout`` simulated seconds, or
        if nothing is pending that could make it fire."""
        outcome: list[Any] = []
        as_deferred(d).addBoth(outcome.append)
        start = self.clock.seconds()
        deadline = start + timeout
        while True:
            self.flush()
            if outcome:
                break
            nxt = self._next_time()
            if nxt is None:
                raise SimulationError("run: the Deferred has not fired and nothing is "
                                      "pending (no message in flight, no timer)")
            if nxt > deadline:
                self._set_time(deadline)
                self.flush()
                if outcome:
                    break
                raise SimulationError(f"run: the Deferred did not fire within {timeout:g} "
                                      f"simulated seconds")
            self._set_time(nxt)
        result = outcome[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def fail_of(self, d: Awaitable[Any],
                timeout: float = 60.0) -> BaseException:
        """Pump until ``d`` fires and return the exception it failed with (raise
        ``SimulationError`` if it succeeded)."""
        try:
            result = self.run(d, timeout)
        except SimulationError:
            raise
        except Exception as e:
            return e
        raise SimulationError(f"expected a failure, got {result!r}")


# -- a cluster on the network ---------------------------------------------------------------

BASE_PORT = 7401


class SimCluster:
    """``n`` bricks ``b0``…``b{n-1}`` on 127.0.0.1:7401+i with ``disk`` durability under
    ``data_dir``, a map pushed to all of them, and clients made by :meth:`client`.

    ``rgs`` lists each replica group's members by brick index (default: one group ``rg0``
    of every brick); ``partitions`` initial partitions are dealt round-robin to the groups.
    ``config`` entries override brick settings (``{"timeouts": {"read_wait_ms": 500}}``).
    """

    def __init__(self, data_dir: Path, n: int = 3, *,
                 rgs: Sequence[Sequence[int]] | None = None, partitions: int = 4,
                 name: str = "dds", secret: str = "s", max_key_bytes: int = 256,
                 max_value_bytes: int = 4096, config: dict[str, dict[str, Any]] | None = None,
                 latency: float = 0.0, jitter: float = 0.0, seed: int = 0,
                 gossip: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.name = name
        #: One secret per role (DESIGN §10), made long enough from ``secret``; clients
        #: connect with the client role's (``self.secret``).
        self.secrets = {role: f"{secret}-{role}-".ljust(MIN_SECRET_BYTES, "x")
                        for role in ROLES}
        self.secret = self.secrets["client"]
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        self.config_overrides = config or {}
        self.clock = SimClock()
        self.rng = random.Random(seed)
        self.net = MemoryNetwork(self.clock, self.rng, latency=latency, jitter=jitter)
        self.bricks: list[Brick] = [self.add_brick(i) for i in range(n)]
        groups = [list(g) for g in (rgs if rgs is not None else [range(n)])]
        pids = initial_partitions(partitions)
        rg_records = [
            RGRecord(f"rg{g}", 1, [Member(f"b{i}") for i in members],
                     [PartitionEntry(p) for j, p in enumerate(pids) if j % len(groups) == g])
            for g, members in enumerate(groups)]
        self.records: list[Record] = [
            ClusterRecord(name, 1, replication=len(groups[0]), max_key_bytes=max_key_bytes,
                          max_value_bytes=max_value_bytes),
            *(self.brick_record(i) for i in range(n)),
            *rg_records]
        self.push(*self.records)
        self.clients: list[DDSClient] = []
        self._raw = itertools.count()
        self._stopped: list[Brick] = []
        if gossip:
            for b in self.bricks:
                b.start()
        self.settle_leases()

    def settle_leases(self, timeout: float = 10.0) -> None:
        """Let simulated time pass until every brick holds the lease of each RG it is an
        active member of."""
        deadline = self.clock.seconds() + timeout
        while not all(b.leases.valid(rg.name) for b in self.bricks
                      for rg in b.maps.map.rgs.values() if b.id in rg.active_members):
            if self.clock.seconds() > deadline:
                raise SimulationError("bricks did not gain their membership leases")
            self.net.advance(0.01)

    # -- bricks --------------------------------------------------------------------------

    def brick_config(self, i: int) -> BrickConfig:
        data: dict[str, dict[str, Any]] = {
            "brick": {"id": f"b{i}", "host": "127.0.0.1", "port": BASE_PORT + i,
                      "data_dir": str(self.data_dir / f"b{i}"), "durability": "disk",
                      "stream_port": 0,
                      "http_port": -1},
            "cluster": {"name": self.name},
            "limits": {"max_key_bytes": self.max_key_bytes,
                       "max_value_bytes": self.max_value_bytes},
            "timeouts": {},
        }
        for section, values in self.config_overrides.items():
            data.setdefault(section, {}).update(values)
        env = {secret_env(role): value for role, value in self.secrets.items()}
        return parse_brick_config(data, source=f"<sim b{i}>", env=env)

    def brick_record(self, i: int, version: int = 1) -> BrickRecord:
        return BrickRecord(f"b{i}", version, "127.0.0.1", BASE_PORT + i, host=f"host{i}")

    def add_brick(self, i: int) -> Brick:
        """Build brick ``b{i}`` and listen for it (it learns the map by :meth:`push`)."""
        brick = Brick(self.brick_config(i), self.clock, opener=self.net.opener())
        self.net.listen("127.0.0.1", BASE_PORT + i, brick.factory(), name=brick.id)
        # Membership leases even without gossip: without them no brick serves (§6).
        brick.leases.start()
        return brick

    def brick(self, brick_id: str) -> Brick:
        return next(b for b in self.bricks if b.id == brick_id)

    def push(self, *records: Record, to: Iterable[Brick] | None = None) -> None:
        """Give ``records`` to bricks (all by default), as a map push would."""
        for b in (self.bricks if to is None else to):
            b.maps.merge(records, source="sim")

    @property
    def map(self) -> ClusterMap:
        """The map as brick ``b0`` holds it."""
        return self.bricks[0].maps.map

    def rg(self, name: str = "rg0") -> RGRecord:
        return self.map.rgs[name]

    # -- keys ----------------------------------------------------------------------------

    def pid(self, key: bytes) -> str:
        return str(self.map.route(key)[0])

    def replicas(self, key: bytes) -> list[Brick]:
        _pid, rg = self.map.route(key)
        return [self.brick(b) for b in rg.active_members]

    def read(self, key: bytes) -> dict[str, ReadResult]:
        """The key as each replica's storage holds it (no RPC)."""
        pid = self.pid(key)
        return {b.id: b.storage.read(pid, key) for b in self.replicas(key)}

    def read_settled(self, key: bytes) -> dict[str, ReadResult]:
        """``read`` once every message on the wire was delivered: with parallel commit a
        write is reported done at the last YES vote, its COMMITs still in flight
        (DESIGN §4)."""
        self.net.deliver_in_flight()
        return self.read(key)

    def locks_held(self) -> dict[str, int]:
        return {b.id: len(b.locks) for b in self.bricks}

    def ref(self, key: bytes, rg: RGRecord | None = None) -> dict[str, Any]:
        """The routing fields of a data request for ``key`` (by ``b0``'s map)."""
        pid, routed = self.map.route(key)
        rg = rg or routed
        return {"pid": str(pid), "rg": rg.name, "rg_version": rg.version, "rg_fp": rg.fp}

    def prepare_body(self, key: bytes, txid: tuple[int, int], *, op: str = "put",
                     value: bytes | None = b"v", ts: tuple[int, int] | None = None,
                     expected_version: int | None = None,
                     timeout_ms: int = 1000) -> dict[str, Any]:
        """A PREPARE body as the coordinator would send it (``ts`` defaults to ``txid``)."""
        return {"txid": list(txid), "ts": list(ts or txid), "op": op, "key": key,
                "value": None if op == "remove" else value,
                "expected_version": expected_version, "timeout_ms": timeout_ms,
                "participants": [b.id for b in self.replicas(key)], **self.ref(key)}

    # -- clients -------------------------------------------------------------------------

    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{BASE_PORT + i}" for i in range(len(self.bricks))]

    def client(self, start: bool = True, **options: Any) -> DDSClient:
        """A ``DDSClient`` on the network (started: it has fetched the map)."""
        options.setdefault("node_id", f"client{len(self.clients)}")
        options.setdefault("metrics_registry", None)   # its own counts, as a process's
        client = DDSClient(self.clock, self.seeds(), cluster=self.name,
                           secret=self.secret.encode(), opener=self.net.opener(), **options)
        self.clients.append(client)
        if start:
            self.run(client.start())
        return client

    def raw(self, brick: Brick | int, name: str | None = None,
            handler: Handler | None = None) -> RPCProtocol:
        """A bare authenticated RPC connection to a brick, for hand-made requests."""
        b = self.bricks[brick] if isinstance(brick, int) else brick
        open_ = self.net.opener()
        proto: RPCProtocol = self.run(open_(
            self.clock, b.config.brick.host, b.config.brick.port,
            node_id=name or f"raw{next(self._raw)}", cluster=self.name,
            secret=self.secrets["brick"].encode(), role="brick",
            max_frame=b.config.limits.max_frame_bytes,
            handler=handler))
        return proto

    # -- driving -------------------------------------------------------------------------

    def run(self, d: Awaitable[Any], timeout: float = 60.0) -> Any:
        return self.net.run(d, timeout)

    def fail_of(self, d: Awaitable[Any],
                timeout: float = 60.0) -> BaseException:
        return self.net.fail_of(d, timeout)

    def close(self) -> None:
        """Close clients and stop bricks (flushing and closing their SQLite files)."""
        for client in self.clients:
            self.run(client.close())
        self.clients = []
        for b in self.bricks:
            if b not in self._stopped:
                self._stopped.append(b)
                self.run(b.stop(grace_s=0))
