"""Multiplexed request/response over framed msgpack, with a mutual HMAC handshake.

One ``RPCProtocol`` serves both ends of a connection.  Requests carry a request id and
are answered out of order; either side may send requests once the handshake is done
(bricks call each other for gossip).  The handshake proves to each side that the other
knows the cluster's shared secret, without sending it:

    server → HELLO  {proto, cluster, node, nonce_s}
    client → HELLO2 {proto, cluster, node, nonce_c, mac = HMAC(secret, "c" nonce_s nonce_c …)}
    server → HELLO3 {mac = HMAC(secret, "s" nonce_c nonce_s …)}

A wrong secret, cluster name or protocol version ends the connection with an error that
names the problem.  Malformed frames are answered with an error (or, when the stream can
no longer be trusted, a disconnect), logged and counted; they never reach a handler.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from typing import Any, Callable, Coroutine

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds.codec import DEFAULT_MAX_FRAME, FrameDecoder, decode_payload, encode_frame
from dds.errors import (AuthenticationFailed, ConnectionLost, DDSError, InternalError,
                        ProtocolError, Timeout, from_wire)
from dds.metrics import Metrics

PROTOCOL_VERSION = 1
HANDSHAKE_TIMEOUT_S = 10.0

Handler = Callable[[str, Any, "RPCProtocol"], Any]


class State(enum.Enum):
    AWAIT_HELLO = "await-hello"      # client: waiting for the server's challenge
    AWAIT_HELLO2 = "await-hello2"    # server: waiting for the client's proof
    AWAIT_HELLO3 = "await-hello3"    # client: waiting for the server's proof
    READY = "ready"
    CLOSED = "closed"


def _mac(secret: bytes, tag: bytes, *parts: bytes) -> bytes:
    h = hmac.new(secret, tag, hashlib.sha256)
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p)
    return h.digest()


class RPCProtocol(Protocol):
    log = Logger()

    def __init__(self, *, is_client: bool, node_id: str, cluster: str, secret: bytes,
                 clock: IReactorTime, handler: Handler | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME, metrics: Metrics | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        self.is_client = is_client
        self.node_id = node_id
        self.cluster = cluster
        self._secret = secret
        self.clock = clock
        self.handler = handler
        self.metrics = metrics if metrics is not None else Metrics()
        self._decoder = FrameDecoder(max_frame)
        self._handshake_timeout = handshake_timeout
        self.state = State.AWAIT_HELLO if is_client else State.AWAIT_HELLO2
        self.peer_id: str | None = None
        self.ready: Deferred[RPCProtocol] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._nonce = os.urandom(16)
        self._peer_nonce = b""
        self._next_id = 1
        self._pending: dict[int, Deferred[Any]] = {}
        # Request deadlines: one table swept by a single timer, rather than a DelayedCall
        # scheduled and cancelled per request (that cost showed in every profile).
        self._deadlines: dict[int, tuple[float, str, float]] = {}
        self._sweeper: Any = None
        self._sweep_at = float("inf")
        self._hs_timer: Any = None
        self.outstanding = 0

    # -- connection lifecycle ----------------------------------------------------------

    def connectionMade(self) -> None:
        self._hs_timer = self.clock.callLater(self._handshake_timeout,
                                              self._handshake_timed_out)
        if not self.is_client:
            self._send("hello", 0, {"proto": PROTOCOL_VERSION, "cluster": self.cluster,
                                    "node": self.node_id, "nonce": self._nonce})

    def _handshake_timed_out(self) -> None:
        self._hs_timer = None
        self._fail_handshake(Timeout("handshake did not complete in "
                                     f"{self._handshake_timeout:g}s"))

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        was_ready = self.state is State.READY
        self.state = State.CLOSED
        if self._hs_timer is not None and self._hs_timer.active():
            self._hs_timer.cancel()
        self._hs_timer = None
        if not self.ready.called:
            self.ready.errback(ConnectionLost(
                f"connection closed during handshake: {reason.getErrorMessage()}"))
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        self._deadlines.clear()
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(ConnectionLost(f"connection to {self.peer_id or 'peer'} lost"))
        if was_ready or not self.closed.called:
            self.closed.callback(None)

    def close(self) -> None:
        if self.transport is not None and self.state is not State.CLOSED:
            self.transport.loseConnection()

    # -- framing -------------------------------------------------------------------------

    def _send(self, mtype: str, rid: int, body: Any) -> None:
        assert self.transport is not None
        self.transport.write(encode_frame(mtype, rid, body))

    def dataReceived(self, data: bytes) -> None:
        try:
            for payload in self._decoder.feed(data):
                if self.state is State.CLOSED:
                    return
                try:
                    mtype, rid, body = decode_payload(payload)
                except ProtocolError as e:
                    self.metrics.inc("frames_malformed_total")
                    self.log.warn("malformed frame from {peer}: {error}",
                                  peer=self._peer_name(), error=e.message)
                    if self.state is not State.READY:
                        self._fail_handshake(e)
                        return
                    self._send("err", 0, e.to_wire())
                    continue
                self._frame(mtype, rid, body)
        except ProtocolError as e:  # oversize frame: the stream is no longer usable
            self.metrics.inc("frames_oversize_total")
            self.log.warn("dropping connection from {peer}: {error}",
                          peer=self._peer_name(), error=e.message)
            if self.state is State.READY or not self.is_client:
                self._send("err", 0, e.to_wire())
            self._abort(e)

    def _peer_name(self) -> str:
        if self.peer_id:
            return self.peer_id
        peer = self.transport.getPeer() if self.transport is not None else None
        return str(getattr(peer, "host", "?")) + ":" + str(getattr(peer, "port", "?"))

    def _abort(self, error: DDSError) -> None:
        if not self.ready.called:
            self.ready.errback(error)
        if self.transport is not None:
            self.transport.loseConnection()

    def _frame(self, mtype: str, rid: int, body: Any) -> None:
        if self.state is State.READY:
            if mtype == "ok":
                self._resolve(rid, body, None)
            elif mtype == "err":
                self._resolve(rid, None, body)
            else:
                self._request(mtype, rid, body)
        else:
            self._handshake(mtype, body)

    # -- handshake -----------------------------------------------------------------------

    def _handshake(self, mtype: str, body: Any) -> None:
        try:
            if mtype == "err":
                raise from_wire(body)
            if not isinstance(body, dict):
                raise ProtocolError(f"malformed handshake message {mtype!r:.20}")
            if self.state is State.AWAIT_HELLO and mtype == "hello":
                self._check_peer(body)
                self._peer_nonce = _nonce(body)
                self._send("hello2", 0, {
                    "proto": PROTOCOL_VERSION, "cluster": self.cluster,
                    "node": self.node_id, "nonce": self._nonce,
                    "mac": self._proof(b"c", self._peer_nonce, self._nonce)})
                self.state = State.AWAIT_HELLO3
            elif self.state is State.AWAIT_HELLO2 and mtype == "hello2":
                self._check_peer(body)
                self._peer_nonce = _nonce(body)
                expected = self._proof(b"c", self._nonce, self._peer_nonce)
                if not hmac.compare_digest(expected, _bytes(body.get("mac"))):
                    raise AuthenticationFailed(
                        f"node {self.peer_id!r} failed authentication: wrong shared secret")
                self._send("hello3", 0, {"mac": self._proof(b"s", self._peer_nonce,
                                                            self._nonce)})
                self._become_ready()
            elif self.state is State.AWAIT_HELLO3 and mtype == "hello3":
                expected = self._proof(b"s", self._nonce, self._peer_nonce)
                if not hmac.compare_digest(expected, _bytes(body.get("mac"))):
                    raise AuthenticationFailed(
                        f"brick {self.peer_id!r} failed authentication: wrong shared secret")
                self._become_ready()
            else:
                raise ProtocolError(f"unexpected {mtype!r:.20} during handshake "
                                    f"({self.state.value})")
        except DDSError as e:
            self._fail_handshake(e)

    def _proof(self, tag: bytes, nonce_s: bytes, nonce_c: bytes) -> bytes:
        client, server = ((self.node_id, self.peer_id) if self.is_client
                          else (self.peer_id, self.node_id))
        return _mac(self._secret, tag, nonce_s, nonce_c, self.cluster.encode(),
                    (client or "").encode(), (server or "").encode())

    def _check_peer(self, body: dict[str, Any]) -> None:
        if body.get("proto") != PROTOCOL_VERSION:
            raise AuthenticationFailed(f"protocol version {body.get('proto')!r:.20} not "
                                       f"supported (this side speaks {PROTOCOL_VERSION})")
        if body.get("cluster") != self.cluster:
            raise AuthenticationFailed(f"peer belongs to cluster {body.get('cluster')!r:.64},"
                                       f" not {self.cluster!r}")
        node = body.get("node")
        if not isinstance(node, str) or not node or len(node) > 128:
            raise ProtocolError("handshake: missing or bad node id")
        self.peer_id = node

    def _become_ready(self) -> None:
        self.state = State.READY
        if self._hs_timer is not None and self._hs_timer.active():
            self._hs_timer.cancel()
        self._hs_timer = None
        self.ready.callback(self)

    def _fail_handshake(self, error: DDSError) -> None:
        self.metrics.inc("handshake_failures_total")
        self.log.warn("handshake with {peer} failed: {error}", peer=self._peer_name(),
                      error=error.message)
        if self.transport is not None and self.state is not State.CLOSED:
            if not (self.is_client and isinstance(error, AuthenticationFailed)
                    and self.state is State.AWAIT_HELLO3):
                self._send("err", 0, error.to_wire())
        self._abort(error)

    # -- requests ------------------------------------------------------------------------

    def call(self, mtype: str, body: Any, timeout: float | None = None) -> Deferred[Any]:
        """Send a request; the Deferred fires with the reply body or fails with the
        ``DDSError`` the peer answered (or ``ConnectionLost`` / ``Timeout``)."""
        if self.state is not State.READY:
            return fail(ConnectionLost(f"connection to {self.peer_id or 'peer'} "
                                       f"is {self.state.value}"))
        rid = self._next_id
        self._next_id = rid + 1
        d: Deferred[Any] = Deferred()
        self._pending[rid] = d
        self.outstanding += 1
        self._send(mtype, rid, body)
        if timeout is not None:
            at = self.clock.seconds() + timeout
            self._deadlines[rid] = (at, mtype, timeout)
            if at < self._sweep_at:
                self._schedule_sweep(at)
        return d

    def _schedule_sweep(self, at: float) -> None:
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweep_at = at
        self._sweeper = self.clock.callLater(max(0.0, at - self.clock.seconds()), self._sweep)

    def _sweep(self) -> None:
        """Fail every request past its deadline; sleep until the next deadline."""
        self._sweeper = None
        self._sweep_at = float("inf")
        now = self.clock.seconds()
        expired = [rid for rid, (at, _m, _t) in self._deadlines.items() if at <= now]
        for rid in expired:
            _at, mtype, timeout = self._deadlines.pop(rid)
            d = self._pending.pop(rid, None)
            if d is not None:
                self.outstanding -= 1
                d.errback(Timeout(f"{mtype} to {self.peer_id} timed out after {timeout:g}s"))
        if self._deadlines and self.state is not State.CLOSED:
            self._schedule_sweep(min(at for at, _m, _t in self._deadlines.values()))

    def _resolve(self, rid: int, body: Any, error: Any) -> None:
        d = self._pending.pop(rid, None)
        if self._deadlines:
            self._deadlines.pop(rid, None)
            if not self._deadlines and self._sweeper is not None:
                if self._sweeper.active():
                    self._sweeper.cancel()
                self._sweeper = None
                self._sweep_at = float("inf")
        if d is None:
            if rid == 0 and error is not None:
                self.log.warn("{peer} reported a protocol error: {error}",
                              peer=self._peer_name(), error=from_wire(error).message)
            return  # a late reply to a request that timed out
        self.outstanding -= 1
        if error is None:
            d.callback(body)
        else:
            d.errback(from_wire(error))

    def _request(self, mtype: str, rid: int, body: Any) -> None:
        if self.handler is None:
            self._send("err", rid, ProtocolError(
                f"this node does not accept requests ({mtype!r:.40})").to_wire())
            return
        try:
            result = self.handler(mtype, body, self)
        except Exception:
            result = fail()
        if type(result) is dict:     # the common case: answered synchronously
            self._send("ok", rid, result)
            return
        if isinstance(result, Deferred):
            result.addCallbacks(self._reply_ok, self._reply_err, callbackArgs=(rid,),
                                errbackArgs=(rid, mtype))
        elif isinstance(result, Coroutine):
            ensureDeferred(result).addCallbacks(self._reply_ok, self._reply_err,
                                                callbackArgs=(rid,),
                                                errbackArgs=(rid, mtype))
        else:
            self._reply_ok(result, rid)

    def _reply_ok(self, result: Any, rid: int) -> None:
        if self.state is State.READY:
            self._send("ok", rid, result)

    def _reply_err(self, failure: Failure, rid: int, mtype: str) -> None:
        error = failure.value
        if not isinstance(error, DDSError):
            self.log.failure("internal error handling {mtype}", failure=failure,
                             mtype=mtype)
            self.metrics.inc("internal_errors_total")
            error = InternalError(f"{mtype}: {error.__class__.__name__}: {error}")
        if self.state is State.READY:
            self._send("err", rid, error.to_wire())


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else b""


def _nonce(body: dict[str, Any]) -> bytes:
    n = body.get("nonce")
    if not isinstance(n, bytes) or len(n) != 16:
        raise ProtocolError("handshake: missing or bad nonce")
    return n


__all__ = ["RPCProtocol", "State", "PROTOCOL_VERSION", "Handler"]
