"""A fault-injecting TCP proxy, one listening port in front of each brick.

The cluster map names the proxies' addresses, so every connection to a brick, from a
client library or from another brick (gossip, termination queries), passes through the
proxy of the brick it connects to.

**Frame-aware.**  The proxy splits each direction of a connection into the wire
protocol's length-prefixed frames (4 bytes big-endian + payload) and forwards, drops or
delays whole frames.  A dropped frame is a lost *message* on a connection that stays up,
the way a partition looks to an RPC layer whose TCP connection survives it, and the stream
stays well-formed when the fault heals.  The first frame the connecting side sends is the
handshake's HELLO2, which names its node id: that tells the proxy who is calling (a brick
id, or ``"client"`` for everything else), so a rule can apply to some sources only.
Frames before that (the brick's HELLO) follow the proxy's default rule.

**Modes** (a :class:`Rule`), per proxy and optionally per source:

* ``pass``: forward.
* ``drop``: blackhole: connections are accepted and stay open, every frame is discarded
  (a new connection's handshake therefore times out).
* ``delay``: every frame is held ``delay_ms`` before it is forwarded; order is kept.
* ``cut_in`` / ``cut_out``: one direction only: frames *to* the brick, or *from* it, are
  discarded; the other direction passes.
* ``refuse``: open connections are closed, new ones are closed right after accept.

**Why asyncio in a thread.**  The proxy runs its own event loop in a daemon thread of the
process that controls it (:class:`ProxyPool`): control is a plain thread-safe method call,
there is no control protocol to write or to fail, and fast tests need no subprocess.  It
is independent of Twisted's reactor, so the runner can use its reactor (through crochet)
for the cluster's administration without ever stalling the proxied traffic.  The work per
frame is a header parse and a write; the runner's own thread is idle while faults run.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import attrs
import msgpack

T = TypeVar("T")
Mode = Literal["pass", "drop", "delay", "cut_in", "cut_out", "refuse"]
MODES: tuple[str, ...] = ("pass", "drop", "delay", "cut_in", "cut_out", "refuse")
CLIENT = "client"
IN, OUT = 0, 1   # directions: IN = toward the brick, OUT = from the brick
_HEADER = 4


@attrs.frozen
class Rule:
    mode: Mode = "pass"
    delay_ms: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown proxy mode {self.mode!r}")

    def drops(self, direction: int) -> bool:
        return self.mode == "drop" or (self.mode == "cut_in" and direction == IN) \
            or (self.mode == "cut_out" and direction == OUT)


PASS = Rule()


@attrs.define
class Stats:
    connections: int = 0
    refused: int = 0
    forwarded: int = 0
    dropped: int = 0
    delayed: int = 0


class _Side(asyncio.Protocol):
    """One TCP end of a proxied connection (the accepted one or the upstream one)."""

    def __init__(self, pipe: _Pipe, direction: int) -> None:
        self.pipe = pipe
        self.direction = direction      # the direction of the bytes this side *receives*
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.pipe.closing:
            transport.close()
        elif self.direction == IN:
            self.pipe.proxy.accepted(self.pipe)

    def data_received(self, data: bytes) -> None:
        self.pipe.received(self.direction, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.side_lost(self)


class _Pipe:
    """A proxied connection: splits frames in both directions and applies the rule."""

    def __init__(self, proxy: BrickProxy) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.down = _Side(self, IN)      # accepted from the caller; receives IN bytes
        self.up: _Side | None = None     # to the brick; receives OUT bytes
        self.source: str | None = None
        self.bufs = [bytearray(), bytearray()]
        self.queues: list[collections.deque[tuple[float, bytes]]] = [
            collections.deque(), collections.deque()]
        self.early: list[bytes] = []     # IN frames before the upstream connected
        self.closing = False

    def rule(self) -> Rule:
        return self.proxy.rule_for(self.source)

    async def connect_upstream(self) -> None:
        try:
            _, side = await self.loop.create_connection(
                lambda: _Side(self, OUT), "127.0.0.1", self.proxy.upstream_port)
        except OSError:
            self.close()
            return
        self.up = side
        if self.closing:
            self.close()
            return
        early, self.early = self.early, []
        for frame in early:
            self._write(IN, frame)

    def received(self, direction: int, data: bytes) -> None:
        buf = self.bufs[direction]
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= _HEADER:
            n = int.from_bytes(buf[pos:pos + _HEADER], "big")
            if end - pos - _HEADER < n:
                break
            frame = bytes(buf[pos:pos + _HEADER + n])
            pos += _HEADER + n
            if direction == IN and self.source is None:
                self.source = self.proxy.classify(frame[_HEADER:])
            self.route(direction, frame)
        del buf[:pos]

    def route(self, direction: int, frame: bytes) -> None:
        rule = self.rule()
        stats = self.proxy.stats
        if rule.mode == "refuse":
            self.close()
            return
        if rule.drops(direction):
            stats.dropped += 1
            return
        q = self.queues[direction]
        if rule.mode == "delay" or q:
            due = self.loop.time() + rule.delay_ms / 1000.0
            if q:
                due = max(due, q[-1][0])
            else:
                self.loop.call_at(due, self._drain, direction)
            q.append((due, frame))
            stats.delayed += rule.mode == "delay"
            return
        self._write(direction, frame)

    def _drain(self, direction: int) -> None:
        q = self.queues[direction]
        now = self.loop.time()
        while q and q[0][0] <= now:
            self._write(direction, q.popleft()[1])
        if q:
            self.loop.call_at(q[0][0], self._drain, direction)
        elif self.closing and not any(self.queues):
            self.close()

    def _write(self, direction: int, frame: bytes) -> None:
        target = self.up if direction == IN else self.down
        if target is None:
            self.early.append(frame)
            return
        if target.transport is not None and not target.transport.is_closing():
            target.transport.write(frame)
            self.proxy.stats.forwarded += 1

    def side_lost(self, side: _Side) -> None:
        # Like TCP: what was already sent (delayed frames included) still arrives, then
        # the other end sees the close.
        self.closing = True
        if not any(self.queues):
            self.close()

    def close(self) -> None:
        self.closing = True
        self.proxy.pipes.discard(self)
        for side in (self.down, self.up):
            if side is not None and side.transport is not None:
                side.transport.close()


class BrickProxy:
    """The proxy in front of one brick: ``listen_port`` → 127.0.0.1:``upstream_port``."""

    def __init__(self, name: str, listen_port: int, upstream_port: int,
                 loop: asyncio.AbstractEventLoop, known: set[str]) -> None:
        self.name = name
        self.listen_port = listen_port
        self.upstream_port = upstream_port
        self.loop = loop
        self.known = known              # brick ids; any other caller is a CLIENT
        self.default = PASS
        self.by_source: dict[str, Rule] = {}
        self.pipes: set[_Pipe] = set()
        self.stats = Stats()
        self.server: asyncio.Server | None = None

    def classify(self, payload: bytes) -> str:
        try:
            obj = msgpack.unpackb(payload, raw=False)
            node = obj[2]["node"] if obj[0] == "hello2" else None
        except Exception:
            node = None
        return node if isinstance(node, str) and node in self.known else CLIENT

    def rule_for(self, source: str | None) -> Rule:
        if source is not None:
            rule = self.by_source.get(source)
            if rule is not None:
                return rule
        return self.default

    async def start(self) -> None:
        self.server = await self.loop.create_server(self._accept, "127.0.0.1",
                                                    self.listen_port, reuse_address=True)

    def _accept(self) -> _Side:
        return _Pipe(self).down

    def accepted(self, pipe: _Pipe) -> None:
        self.stats.connections += 1
        if self.default.mode == "refuse":
            self.stats.refused += 1
            pipe.close()
        else:
            self.pipes.add(pipe)
            self.loop.create_task(pipe.connect_upstream())

    def apply(self, default: Rule | None, by_source: dict[str, Rule] | None) -> None:
        if default is not None:
            self.default = default
        if by_source is not None:
            self.by_source = dict(by_source)
        for pipe in list(self.pipes):
            if pipe.rule().mode == "refuse":
                self.stats.refused += 1
                pipe.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for pipe in list(self.pipes):
            pipe.close()
        if self.server is not None:
            await self.server.wait_closed()


class ProxyPool:
    """Proxies for a whole cluster, on one event loop in a daemon thread.

    Every method is thread-safe and returns once the change is in effect on the loop.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxies: dict[str, BrickProxy] = {}
        self._known: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)
        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    def _await(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, name: str, listen_port: int, upstream_port: int) -> BrickProxy:
        """Listen on ``listen_port`` for the brick ``name`` serving on ``upstream_port``."""
        proxy = BrickProxy(name, listen_port, upstream_port, self.loop, self._known)
        self._call(lambda: self._known.add(name))
        self._await(proxy.start())
        self.proxies[name] = proxy
        return proxy

    def set(self, name: str, rule: Rule, sources: list[str] | None = None) -> None:
        """Apply ``rule`` at the proxy of ``name``: for every caller, or for ``sources``
        only (brick ids and/or ``"client"``), on top of the rules already there."""
        proxy = self.proxies[name]
        if sources is None:
            self._call(lambda: proxy.apply(rule, None))
        else:
            merged = dict(proxy.by_source)
            merged.update({s: rule for s in sources})
            self._call(lambda: proxy.apply(None, merged))

    def heal(self, name: str | None = None) -> None:
        """Back to ``pass`` everywhere (or at one proxy)."""
        for p in ([self.proxies[name]] if name is not None else list(self.proxies.values())):
            self._call(lambda p=p: p.apply(PASS, {}))   # type: ignore[misc]

    def stats(self, name: str) -> Stats:
        p = self.proxies[name]
        return self._call(lambda: attrs.evolve(p.stats))

    def open_connections(self, name: str) -> int:
        p = self.proxies[name]
        return self._call(lambda: len(p.pipes))

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        for p in self.proxies.values():
            self._await(p.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
