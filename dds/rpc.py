"""Multiplexed request/response over framed msgpack, with a mutual authentication.

One ``RPCProtocol`` serves both ends of a connection.  Requests carry a request id and
are answered out of order; either side may send requests once the handshake is done
(bricks call each other for gossip).  The connecting side names its **role** (DESIGN §10:
``brick``, ``admin`` or ``client``, ``dds.auth``), and the handshake proves it:

    client → HELLO0 {proto}                    (plain text only: the client speaks first)
    server → HELLO  {proto, cluster, node, nonce_s}
    client → HELLO2 {proto, cluster, node, role, nonce_c,
                     mac = HMAC(secret[role], "c" nonce_s nonce_c …)}
    server → HELLO3 {mac = HMAC(secret[role], "s" nonce_c nonce_s …)}

With shared secrets, each role has its own secret: a brick holds all three and checks the
MAC with the secret of the role claimed, so a client's secret proves nothing but "client".
With mutual TLS (``dds.tls``) the same messages run inside the TLS session without MACs,
and the role, id and cluster are read from the peer's certificate, never from its claims.

Before the handshake is done a peer is a stranger, and gets little: frames of at most
``PREAUTH_MAX_FRAME`` bytes, decoded with small element limits, only handshake messages,
and a time limit.  Failures are counted in metrics and logged at a bounded rate
(``dds.ratelimit``); the id a peer claims is never logged before it is proven.

Once ready, the messages sent to one peer during a reactor iteration go out together at
its end (``callLater(0)``, one for all the connections of a reactor): one frame
``["*", n, [type, request_id, body, ...]]`` carrying the ``n`` messages, if the peer said
in its handshake message that it reads those (``"features": ["batch", ...]``).  So the
cost of a frame (a msgpack call, a length prefix, a transport write, a ``send``) is paid
once per peer and iteration rather than per message.  A lone message still goes as a plain
frame.  The other features a side announces are the caller's business (``FEATURES``,
``RPCProtocol.peer_features``): a side uses one only if the peer announced it, so nodes of
different versions still talk.

**Flow control.**  A peer that sends requests but reads no reply would make the answering
side buffer every reply (issue 13: a client pipelining gets of a 1 MiB value grew a brick
by over a gigabyte).  So the accepting side (a brick, for the library, the admin tool and
the bricks that connect to it) stops *reading* from a peer once more than
``max_unsent_bytes`` wait in the transport for it (``pauseProducing``): the peer can send
no more requests, and what it sent meanwhile waits, unhandled, in the kernel's buffers
and ours.  It reads again when the transport has sent everything (Twisted calls
``resumeProducing`` on the protocol, registered as the transport's streaming producer).
The cost is a look at the transport's buffer per frame written, and one attribute per
message handled.  The connecting side (the library, a brick calling a peer) never stops
reading: its queued bytes are its own requests, and reading the replies is what drains
the other side -- if both ends of a connection could stop, each waiting for the other to
read, neither would again.

A wrong secret, cluster name or protocol version ends the connection with an error that
names the problem.  Malformed frames are answered with an error (or, when the stream can
no longer be trusted, a disconnect), logged and counted; they never reach a handler.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
import weakref
from typing import Any, Callable, Coroutine

import msgpack
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dds.auth import ROLES, Credentials
from dds.codec import DEFAULT_MAX_FRAME, decode_payload, encode_frame, pack
from dds.errors import (AuthenticationFailed, ConnectionLost, DDSError, FrameTooLarge,
                        InternalError, ProtocolError, Timeout, from_wire)
from dds.messages import Message, title
from dds.metrics import Metrics
from dds.ratelimit import LogLimiter

PROTOCOL_VERSION = 2
HANDSHAKE_TIMEOUT_S = 10.0
#: The largest frame a peer may send before it has authenticated: a handshake message
#: is a few hundred bytes.
PREAUTH_MAX_FRAME = 4096
#: A TLS record of type handshake starts with this byte: a TLS client on a plain port.
_TLS_HANDSHAKE_BYTE = 0x16
#: Messages of a turn go out as one frame only up to this size; beyond it (a partition
#: copy's chunks), each goes in a frame of its own.
BATCH_MAX_BYTES = 1 << 20
#: The frame type of a batch of messages.
BATCH = "*"
#: What this side announces in its handshake message: batch frames, and the compact
#: ``g`` read (``dds.messages.GET_COMPACT``).
FEATURES = ("batch", "g")
#: The most bytes the accepting side lets wait in a transport for a peer before it stops
#: reading from that peer (see "Flow control" above): the brick's default
#: (``limits.max_unsent_bytes``).
DEFAULT_MAX_UNSENT = 16 << 20
#: Messages held back for the end of the iteration are sent, and the transport's buffer
#: looked at, once this many pile up (three entries each): a read of many small requests
#: with large answers must not first make all its answers in memory.
_FLUSH_AT = 3 * 64

_NEVER = float("inf")
_length = struct.Struct(">I").unpack_from
#: ``msgpack.unpackb`` with its defaults, which are the codec's (``raw=False``,
#: ``strict_map_key=True``): ``decode_payload``'s decoding without the keywords.
_unpackb = msgpack.unpackb


def _unpack_preauth(payload: bytes | bytearray) -> Any:
    """Decode a stranger's frame with small element limits: its cost stays bounded by
    the handshake's few fields, whatever the frame is made of."""
    return msgpack.unpackb(payload, max_str_len=1024, max_bin_len=1024, max_array_len=16,
                           max_map_len=16, max_ext_len=0)

Handler = Callable[[str, Any, "RPCProtocol"], Any]
#: ``request``'s callback: called once with ``arg`` and the reply body, or with the
#: ``DDSError`` the request failed with (an exception instance, never a ``Failure``).
ReplyCallback = Callable[[Any, Any], None]


def _fire(d: Deferred[Any], result: Any) -> None:
    """``call``'s reply callback: the Deferred fires with the reply or the error."""
    if isinstance(result, BaseException):
        d.errback(result)
    else:
        d.callback(result)


class _Flusher:
    """The connections of one reactor holding messages back until the end of the current
    iteration: one ``callLater(0)`` sends them all."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.held: list[RPCProtocol] = []

    def hold(self, proto: RPCProtocol) -> None:
        if not self.held:
            self.clock.callLater(0, self.flush)
        self.held.append(proto)

    def flush(self) -> None:
        held, self.held = self.held, []
        for proto in held:
            proto._flush_out()


#: Transports ``_write`` may send on directly.
_TCP = (tcp.Server, tcp.Client)


def _tcp_of(transport: Any) -> Any:
    """The TCP connection under ``transport`` (itself, or the one a ``TLSTransport``
    writes to), whose send buffer flow control measures; None for any other transport
    (the simulation's, a test's): no flow control there."""
    if type(transport) in _TCP:
        return transport
    inner = getattr(transport, "transport", None)
    return inner if type(inner) in _TCP else None


def _no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on the TCP connection under ``transport``.  Frames are
    small and often one-way (a COMMIT, a hint): with Nagle on, such a frame after another
    unacknowledged one waits for the peer's delayed ACK, up to 40 ms here.  Batching is
    done by the protocol (one write per reactor turn), not by the kernel."""
    tcp_ = _tcp_of(transport)
    if tcp_ is not None:
        tcp_.setTcpNoDelay(True)


def _write(transport: Any, data: bytes) -> None:
    """Write ``data``, sending it at once when the transport is a TCP connection with
    nothing queued.  Twisted's ``write`` queues the bytes, registers the socket for writing
    and sends on the next iteration: two ``epoll_ctl`` calls and a reactor event per
    write, more than the send itself for the small frames of a turn.  Whatever the socket
    does not take at once (or an error) goes through ``write`` as usual, so ordering and
    connection loss are Twisted's.  (Reads Twisted's buffer state: ``dataBuffer``,
    ``offset``, ``_tempDataLen``; any other transport just gets ``write``.)"""
    if (type(transport) in _TCP and transport.connected and not transport.disconnecting
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)):
        n = transport.writeSomeData(data)
        if type(n) is int:
            if n == len(data):
                return
            if n > 0:
                data = data[n:]
    transport.write(data)


_flushers: weakref.WeakKeyDictionary[IReactorTime, _Flusher] = weakref.WeakKeyDictionary()


def flush_sends(clock: IReactorTime) -> None:
    """Send now what the connections of this reactor hold back, rather than at the end of
    the iteration: for a burst of answers made by a timer (a group commit), which would
    otherwise leave one iteration later."""
    flusher = _flushers.get(clock)
    if flusher is not None and flusher.held:
        flusher.flush()


def _flusher(clock: IReactorTime) -> _Flusher:
    flusher = _flushers.get(clock)
    if flusher is None:
        flusher = _flushers[clock] = _Flusher(clock)
    return flusher


class _Later:
    def __repr__(self) -> str:
        return "LATER"


#: What a handler returns when it will answer later through ``RPCProtocol.answer`` (the
#: request's id is ``RPCProtocol.request_id`` while the handler runs): a hot path that
#: does without a Deferred per request.
LATER: Any = _Later()


class State(enum.Enum):
    AWAIT_HELLO = "await-hello"      # client: waiting for the server's challenge
    AWAIT_HELLO2 = "await-hello2"    # server: waiting for the client's proof
    AWAIT_HELLO3 = "await-hello3"    # client: waiting for the server's proof
    READY = "ready"
    CLOSED = "closed"


#: Handshake failures and malformed frames logged, per process: a flood of strangers
#: costs a bounded amount of log (each is still counted in metrics).
_log_limiters: weakref.WeakKeyDictionary[IReactorTime, LogLimiter] = \
    weakref.WeakKeyDictionary()


def _limited(clock: IReactorTime) -> LogLimiter:
    limiter = _log_limiters.get(clock)
    if limiter is None:
        limiter = _log_limiters[clock] = LogLimiter(clock, RPCProtocol.log)
    return limiter


def _mac(secret: bytes, tag: bytes, *parts: bytes) -> bytes:
    h = hmac.new(secret, tag, hashlib.sha256)
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p)
    return h.digest()


@implementer(IPushProducer)
class RPCProtocol(Protocol):
    log = Logger()

    def __init__(self, *, is_client: bool, node_id: str, cluster: str,
                 credentials: Credentials, clock: IReactorTime,
                 handler: Handler | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME, metrics: Metrics | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
                 max_unsent_bytes: int = DEFAULT_MAX_UNSENT) -> None:
        self.is_client = is_client
        self.node_id = node_id
        self.cluster = cluster
        self.credentials = credentials
        #: The role the peer proved (a server's peer) or that this side proved (a
        #: client's, whose peer is always a brick); None until the handshake is done.
        self.peer_role: str | None = None
        #: The id the peer claimed, not yet proven: never logged.
        self._claimed_id = ""
        self._log_limited = _limited(clock)
        self.clock = clock
        self.handler = handler
        self.metrics = metrics if metrics is not None else Metrics()
        self.max_frame = max_frame
        #: Bytes of a frame not complete yet (empty between frames, the common case).
        self._buf = bytearray()
        self._handshake_timeout = handshake_timeout
        self.state = State.AWAIT_HELLO if is_client else State.AWAIT_HELLO2
        self.peer_id: str | None = None
        self.ready: Deferred[RPCProtocol] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._nonce = os.urandom(16)
        self._peer_nonce = b""
        self._next_id = 1
        #: Requests waiting for a reply: (callback, arg, deadline, type, timeout).  One
        #: timer sweeps the deadlines, rather than a DelayedCall scheduled and cancelled
        #: per request (that cost showed in every profile).
        self._pending: dict[int, tuple[ReplyCallback, Any, float, str, float]] = {}
        self._sweeper: Any = None
        self._sweep_at = _NEVER
        self._hs_timer: Any = None
        self.outstanding = 0
        #: The id of the request whose handler is running (see ``LATER``).
        self.request_id = 0
        #: What the peer announced in its handshake message (see ``FEATURES``).
        self.peer_features: frozenset[str] = frozenset()
        self._peer_batches = False
        #: Messages held back until the end of the iteration (type, id, body, ...).
        self._out: list[Any] = []
        self._flusher = _flusher(clock)
        #: A server handling a read: its replies go out when the read is handled (the
        #: same frame as at the end of the iteration, without scheduling a call for it).
        self._reading = False
        #: Flow control (see the module's docstring): the bound, the TCP transport whose
        #: buffer is measured (None: no flow control on this connection), whether reading
        #: from the peer is stopped, and the messages of a batch frame left unhandled
        #: when it stopped.
        self.max_unsent = max_unsent_bytes
        self._tcp: Any = None
        self.paused = False
        self._rest: list[Any] | None = None

    # -- connection lifecycle ----------------------------------------------------------

    def connectionMade(self) -> None:
        self._hs_timer = self.clock.callLater(self._handshake_timeout,
                                              self._handshake_timed_out)
        _no_delay(self.transport)
        if not self.is_client and self.max_unsent > 0:
            tcp_ = _tcp_of(self.transport)
            if tcp_ is not None:
                self._tcp = tcp_
                self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        if self.is_client and self.credentials.tls is None:
            # A plain-text client speaks first, so that a TLS brick (which waits for a
            # TLS ClientHello) sees at once that it is not TLS and can say so.
            self._send("hello0", 0, {"proto": PROTOCOL_VERSION})
        if not self.is_client:
            self._send("hello", 0, {"proto": PROTOCOL_VERSION, "cluster": self.cluster,
                                    "node": self.node_id, "nonce": self._nonce,
                                    "features": list(FEATURES),
                                    "auth": self.credentials.mode})

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
            tls = _tls_problem(reason)
            if tls is not None:
                self._count_failure(tls)
                self.ready.errback(tls)
            else:
                self.ready.errback(ConnectionLost(
                    f"connection closed during handshake: {reason.getErrorMessage()}"))
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        self._out = []
        self._rest = None
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            self._run_callback(entry[0], entry[1], ConnectionLost(
                f"connection to {self.peer_id or 'peer'} lost"))
        if was_ready or not self.closed.called:
            self.closed.callback(None)

    def close(self) -> None:
        if self.transport is not None and self.state is not State.CLOSED:
            self._flush_out()
            self._unregister()
            self.transport.loseConnection()

    def _unregister(self) -> None:
        """Stop being the transport's producer before closing it: Twisted would otherwise
        resume a paused producer when the buffer drains, instead of closing."""
        if self._tcp is not None:
            self._tcp = None
            if self.transport is not None:
                self.transport.unregisterProducer()  # type: ignore[attr-defined]

    # -- flow control (IPushProducer, registered on the transport) -------------------------

    def _check_unsent(self) -> None:
        """After a write: stop reading from the peer if more than ``max_unsent`` bytes
        wait for it (what the transport holds; the kernel's buffer is bounded)."""
        t = self._tcp
        if (t is not None and not self.paused
                and len(t.dataBuffer) - t.offset + t._tempDataLen > self.max_unsent):
            self.paused = True
            self.metrics.inc("connections_paused_total")
            self._log_limited.warn("{peer} does not read its replies: stopped reading from "
                                   "it until {unsent} unsent bytes have gone",
                                   peer=self._peer_name(),
                                   unsent=len(t.dataBuffer) - t.offset + t._tempDataLen)
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        """Twisted's own mark (64 KiB unsent) is far below ours: nothing to do; our bound
        is checked by ``_check_unsent``."""

    def resumeProducing(self) -> None:
        """The transport has sent everything: handle what was left unhandled when reading
        stopped, then read from the peer again (unless that filled the buffer anew)."""
        transport = self.transport
        if not self.paused or transport is None or self.state is State.CLOSED:
            return
        if getattr(transport, "disconnecting", False):
            self._unregister()      # let the close complete
            return
        self.paused = False
        rest, self._rest = self._rest, None
        if rest:
            self._reading = not self.is_client
            try:
                self._batch(rest)
            finally:
                self._reading = False
                if self._out:
                    self._flush_out()
        if not self.paused and self._buf:
            self.dataReceived(b"")
        if not self.paused and self.state is not State.CLOSED:
            transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        """The connection is lost; ``connectionLost`` cleans up."""

    # -- framing -------------------------------------------------------------------------

    def _send(self, mtype: str, rid: int, body: Any) -> None:
        if self._peer_batches and self.state is State.READY:
            out = self._out
            if not out and not self._reading:
                self._flusher.hold(self)
            out += (mtype, rid, body)
            if len(out) >= _FLUSH_AT:
                self._flush_out()
            return
        self.transport.write(encode_frame(mtype, rid, body))  # type: ignore[union-attr]
        if self._tcp is not None:
            self._check_unsent()

    def _flush_out(self) -> None:
        """Send the messages held back: one frame for all, or a frame each when they are
        few or large."""
        out, self._out = self._out, []
        if not out or self.transport is None or self.state is State.CLOSED:
            return
        transport = self.transport
        if len(out) == 3:
            _write(transport, encode_frame(out[0], out[1], out[2]))
        else:
            payload = pack([BATCH, len(out) // 3, out])
            if len(payload) <= BATCH_MAX_BYTES:
                _write(transport, len(payload).to_bytes(4, "big") + payload)
            else:
                for i in range(0, len(out), 3):
                    _write(transport, encode_frame(out[i], out[i + 1], out[i + 2]))
        if self._tcp is not None:
            self._check_unsent()

    def dataReceived(self, data: bytes) -> None:
        """Split the stream into frames (``dds.codec``'s framing: the size limit is
        enforced from the length prefix, before buffering) and handle each.  Frames that
        arrive whole are decoded straight from ``data``; only a frame split across reads
        is gathered in a buffer."""
        buf = self._buf
        chunk: bytes | bytearray = data
        if buf:
            buf += data
            chunk = buf
        pos, end = 0, len(chunk)
        ready = True
        self._reading = not self.is_client
        try:
            while end - pos >= 4:
                if self.paused:     # the peer reads no replies: the rest waits (resume)
                    break
                # Checked per frame: the handshake's last message and the first requests
                # may arrive in one read.
                ready = self.state is State.READY
                limit = self.max_frame if ready else PREAUTH_MAX_FRAME
                n = _length(chunk, pos)[0]
                if n > limit:
                    if not ready and chunk[pos] == _TLS_HANDSHAKE_BYTE:
                        raise ProtocolError("a TLS handshake arrived, but this side does "
                                            "not use TLS (auth.mode = \"secret\")")
                    if not ready:
                        raise FrameTooLarge(f"frame of {n} bytes before authentication "
                                            f"exceeds the limit of {limit} bytes")
                    raise FrameTooLarge(f"frame of {n} bytes exceeds the limit of "
                                        f"{limit} bytes")
                start = pos + 4
                pos = start + n
                if pos > end:
                    pos = start - 4
                    break
                if self.state is State.CLOSED:
                    return
                payload = chunk[start:pos]
                try:
                    obj = _unpackb(payload) if ready else _unpack_preauth(payload)
                except Exception:
                    obj = None
                if type(obj) is list and len(obj) == 3:
                    mtype, rid, body = obj
                    if type(mtype) is str and type(rid) is int and rid >= 0:
                        if mtype != BATCH:
                            self._frame(mtype, rid, body)
                            continue
                        if (self.state is State.READY and type(body) is list
                                and len(body) == 3 * rid and self._batch(body)):
                            continue
                self._malformed(payload)
                if self.state is not State.READY:
                    return
        except ProtocolError as e:  # oversize frame: the stream is no longer usable
            self.metrics.inc("frames_oversize_total" if isinstance(e, FrameTooLarge)
                             else "frames_malformed_total")
            if not ready:
                self.metrics.inc("handshake_failures_total")
            self._log_limited.warn("dropping connection from {peer}: {error}",
                                   peer=self._peer_name(), error=e.message)
            if self.state is State.READY or not self.is_client:
                self._send("err", 0, e.to_wire())
            self._abort(e)
        finally:
            if chunk is buf:
                del buf[:pos]
            elif pos < end:
                self._buf = bytearray(data[pos:])
            if self._reading:
                self._reading = False
                if self._out:
                    self._flush_out()

    def _batch(self, items: list[Any]) -> bool:
        """Handle the messages of a batch frame in order; False (nothing handled) if one
        of them is malformed: the whole frame is then answered as malformed."""
        for i in range(0, len(items), 3):
            mtype, rid = items[i], items[i + 1]
            if not (type(mtype) is str and mtype != BATCH and type(rid) is int and rid >= 0):
                return False
        for i in range(0, len(items), 3):
            if self.state is not State.READY:
                break
            if self.paused:         # handled when reading resumes (``resumeProducing``)
                self._rest = items[i:]
                break
            self._frame(items[i], items[i + 1], items[i + 2])
        return True

    def _malformed(self, payload: bytes | bytearray) -> None:
        """A frame that is not ``[type, request_id, body]``: answered with an error (or,
        during the handshake, the end of the connection), logged and counted."""
        if self.state is not State.READY:
            self.metrics.inc("frames_malformed_total")
            self._fail_handshake(ProtocolError("malformed handshake frame"))
            return
        try:
            decode_payload(payload)
            e = ProtocolError("malformed frame")
        except ProtocolError as error:
            e = error
        self.metrics.inc("frames_malformed_total")
        self._log_limited.warn("malformed frame from {peer}: {error}",
                               peer=self._peer_name(), error=e.message)
        self._send("err", 0, e.to_wire())

    def _peer_name(self) -> str:
        """The proven id of the peer, or its address while it is a stranger."""
        if self.peer_id:
            return self.peer_id
        return self._address()

    def _abort(self, error: DDSError) -> None:
        if not self.ready.called:
            self.ready.errback(error)
        if self.transport is not None:
            self._flush_out()
            self._unregister()
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
            if self.state is State.AWAIT_HELLO2 and mtype == "hello0":
                return      # a plain-text client's opening word (see connectionMade)
            if self.state is State.AWAIT_HELLO and mtype == "hello":
                self._check_peer(body)
                self._peer_nonce = _nonce(body)
                role = self.credentials.role
                hello2 = {"proto": PROTOCOL_VERSION, "cluster": self.cluster,
                          "node": self.node_id, "role": role, "nonce": self._nonce,
                          "features": list(FEATURES)}
                if self.credentials.tls is None:
                    hello2["mac"] = self._proof(b"c", self._peer_nonce, self._nonce, role)
                self._send("hello2", 0, hello2)
                self.state = State.AWAIT_HELLO3
            elif self.state is State.AWAIT_HELLO2 and mtype == "hello2":
                self._check_peer(body)
                self._peer_nonce = _nonce(body)
                claimed = body.get("role")
                if not isinstance(claimed, str) or claimed not in ROLES:
                    raise ProtocolError(f"handshake: unknown role {claimed!r:.20} (expected "
                                        f"one of {', '.join(ROLES)})")
                role = claimed
                hello3: dict[str, Any] = {}
                if self.credentials.tls is None:
                    secret = self.credentials.secret(role)
                    expected = self._proof(b"c", self._nonce, self._peer_nonce, role)
                    if secret is None or not hmac.compare_digest(expected,
                                                                 _bytes(body.get("mac"))):
                        raise AuthenticationFailed(
                            f"authentication as {role} failed: wrong shared secret for "
                            f"the {role} role")
                    hello3["mac"] = self._proof(b"s", self._peer_nonce, self._nonce, role)
                else:
                    self._claimed_id = self._certified(role)
                self._send("hello3", 0, hello3)
                self._become_ready(role)
            elif self.state is State.AWAIT_HELLO3 and mtype == "hello3":
                role = self.credentials.role
                if self.credentials.tls is None:
                    expected = self._proof(b"s", self._nonce, self._peer_nonce, role)
                    if not hmac.compare_digest(expected, _bytes(body.get("mac"))):
                        raise AuthenticationFailed(
                            f"the brick at {self._address()} failed authentication: it "
                            f"does not hold this cluster's {role} secret")
                else:
                    self._claimed_id = self._certified("brick")
                self._become_ready(role)
            else:
                raise ProtocolError(f"unexpected {mtype!r:.20} during handshake "
                                    f"({self.state.value})")
        except DDSError as e:
            self._fail_handshake(e)

    def _certified(self, role: str) -> str:
        """TLS mode: the peer's id from its certificate, which must name this cluster
        and ``role`` (a server checks the role claimed; a client expects a brick)."""
        from dds.tls import peer_identity
        ident = peer_identity(self.transport)
        if ident.cluster != self.cluster:
            raise AuthenticationFailed(f"certificate of {self._address()} names cluster "
                                       f"{ident.cluster!r:.64}, not {self.cluster!r}")
        if ident.role != role:
            raise AuthenticationFailed(f"certificate of {self._address()} is for role "
                                       f"{ident.role!r}, not {role!r}")
        return ident.id

    def _proof(self, tag: bytes, nonce_s: bytes, nonce_c: bytes, role: str) -> bytes:
        client, server = ((self.node_id, self._claimed_id) if self.is_client
                          else (self._claimed_id, self.node_id))
        secret = self.credentials.secret(role) or b""
        return _mac(secret, tag, nonce_s, nonce_c, self.cluster.encode(), role.encode(),
                    client.encode(), server.encode())

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
        self._claimed_id = node
        # A peer that announces nothing (an older version) gets one frame per message.
        features = body.get("features")
        if isinstance(features, list):
            self.peer_features = frozenset(f for f in features if isinstance(f, str))
        self._peer_batches = "batch" in self.peer_features

    def _become_ready(self, role: str) -> None:
        self.state = State.READY
        self.peer_id = self._claimed_id
        self.peer_role = role
        if self._hs_timer is not None and self._hs_timer.active():
            self._hs_timer.cancel()
        self._hs_timer = None
        self.ready.callback(self)

    def _address(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        host = str(getattr(peer, "host", "?"))
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{getattr(peer, 'port', '?')}"

    def _count_failure(self, error: DDSError) -> None:
        self.metrics.inc("handshake_failures_total")
        if isinstance(error, AuthenticationFailed):
            self.metrics.inc("auth_failures_total")
        self._log_limited.warn("handshake with {peer} failed: {error}",
                               peer=self._address(), error=error.message)

    def _fail_handshake(self, error: DDSError) -> None:
        self._count_failure(error)
        if self.transport is not None and self.state is not State.CLOSED:
            if not (self.is_client and isinstance(error, AuthenticationFailed)
                    and self.state is State.AWAIT_HELLO3):
                self._send("err", 0, error.to_wire())
        self._abort(error)

    # -- requests ------------------------------------------------------------------------

    def call(self, mtype: str, body: Any, timeout: float | None = None) -> Deferred[Any]:
        """Send a request; the Deferred fires with the reply body or fails with the
        ``DDSError`` the peer answered (or ``ConnectionLost`` / ``Timeout``)."""
        d: Deferred[Any] = Deferred()
        self.request(mtype, body, timeout, _fire, d)
        return d

    def send(self, msg: Message, timeout: float | None = None) -> Deferred[Any]:
        """Send the request ``msg``, typed at the sender as at the receiver: its frame is
        ``msg.TYPE`` and ``msg.to_wire()``, which the peer's ``decode_request`` reads back
        into an equal ``msg``.  Fires as ``call`` does (a reply type in ``dds.replies``
        checks the reply's shape)."""
        return self.call(msg.TYPE, msg.to_wire(), timeout)

    def notify(self, mtype: str, body: Any) -> bool:
        """Send a one-way request: the peer runs its handler and answers nothing (request
        id 0).  For messages whose outcome the sender learns otherwise or not at all: a
        parallel commit's COMMIT (DESIGN §4).  False when the connection is not ready
        (nothing was sent)."""
        if self.state is not State.READY:
            return False
        self._send(mtype, 0, body)
        return True

    def request(self, mtype: str, body: Any, timeout: float | None,
                callback: ReplyCallback, arg: Any) -> None:
        """``call`` without a Deferred, for the library's hot paths: ``callback(arg,
        reply)`` runs once, with the reply body or with the ``DDSError`` the request
        failed with (also at once, if the connection is not ready).  An exception the
        callback raises is logged, never propagated into the connection."""
        if self.state is not State.READY:
            self._run_callback(callback, arg, ConnectionLost(
                f"connection to {self.peer_id or 'peer'} is {self.state.value}"))
            return
        rid = self._next_id
        self._next_id = rid + 1
        self.outstanding += 1
        self._send(mtype, rid, body)
        if timeout is None:
            self._pending[rid] = (callback, arg, _NEVER, mtype, 0.0)
            return
        at = self.clock.seconds() + timeout
        self._pending[rid] = (callback, arg, at, mtype, timeout)
        if at < self._sweep_at:
            self._schedule_sweep(at)

    def _run_callback(self, callback: ReplyCallback, arg: Any, result: Any) -> None:
        try:
            callback(arg, result)
        except Exception:
            self.log.failure("reply callback for {peer} failed", peer=self._peer_name())

    def _schedule_sweep(self, at: float) -> None:
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweep_at = at
        self._sweeper = self.clock.callLater(max(0.0, at - self.clock.seconds()), self._sweep)

    def _sweep(self) -> None:
        """Fail every request past its deadline; sleep until the next deadline.  A reply
        does not touch the timer: it finds the request gone when it fires."""
        self._sweeper = None
        self._sweep_at = _NEVER
        now = self.clock.seconds()
        expired = [rid for rid, entry in self._pending.items() if entry[2] <= now]
        for rid in expired:
            callback, arg, _at, mtype, timeout = self._pending.pop(rid)
            self.outstanding -= 1
            self._run_callback(callback, arg, Timeout(
                f"{title(mtype)} to {self.peer_id} timed out after {timeout:g}s"))
        if self._pending and self.state is not State.CLOSED:
            at = min(entry[2] for entry in self._pending.values())
            if at < _NEVER:
                self._schedule_sweep(at)

    def _resolve(self, rid: int, body: Any, error: Any) -> None:
        entry = self._pending.pop(rid, None)
        if entry is None:
            if rid == 0 and error is not None:
                self.log.warn("{peer} reported a protocol error: {error}",
                              peer=self._peer_name(), error=from_wire(error).message)
            return  # a late reply to a request that timed out
        self.outstanding -= 1
        try:
            entry[0](entry[1], body if error is None else from_wire(error))
        except Exception:
            self.log.failure("reply callback for {peer} failed", peer=self._peer_name())

    def _request(self, mtype: str, rid: int, body: Any) -> None:
        if self.handler is None:
            self._send("err", rid, ProtocolError(
                f"this node does not accept requests ({mtype!r:.40})").to_wire())
            return
        self.request_id = rid
        try:
            result = self.handler(mtype, body, self)
        except Exception:
            result = fail()
        if type(result) is dict or type(result) is list:   # answered synchronously
            if rid:
                self._send("ok", rid, result)
            return
        if result is LATER:          # the handler calls ``answer`` itself
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

    def answer(self, rid: int, mtype: str, result: Any) -> None:
        """The reply to request ``rid`` whose handler returned ``LATER``: a body, or the
        exception it failed with."""
        if isinstance(result, BaseException):
            self._reply_err(Failure(result), rid, mtype)
        elif self.state is State.READY and rid:
            self._send("ok", rid, result)

    def _reply_ok(self, result: Any, rid: int) -> None:
        if self.state is State.READY and rid:
            self._send("ok", rid, result)

    def _reply_err(self, failure: Failure, rid: int, mtype: str) -> None:
        error = failure.value
        if not isinstance(error, DDSError):
            self.log.failure("internal error handling {mtype}", failure=failure,
                             mtype=mtype)
            self.metrics.inc("internal_errors_total")
            error = InternalError(f"{title(mtype)}: {error.__class__.__name__}: {error}")
        if not rid:
            # A one-way request (``notify``): nobody waits for the answer.
            self.metrics.inc("oneway_failures_total")
            self._log_limited.warn("one-way {mtype} from {peer} failed: {error}",
                                   mtype=title(mtype), peer=self._peer_name(),
                                   error=error.message)
            return
        if self.state is State.READY:
            self._send("err", rid, error.to_wire())


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else b""


def _tls_problem(reason: Failure) -> AuthenticationFailed | None:
    """A TLS failure as an error that says what went wrong, or None for anything else."""
    import ssl
    if not reason.check(ssl.SSLError):
        return None
    raw = str(reason.value)
    text = raw.lower()
    hint = ""
    if "wrong version number" in text or "packet length too long" in text \
            or "record layer failure" in text or "http request" in text:
        hint = " (the other side does not speak TLS: is auth.mode \"tls\" on both sides?)"
    elif "certificate verify failed" in text or "unknown ca" in text \
            or "bad certificate" in text or "certificate required" in text \
            or "expired" in text:
        hint = " (the certificate is not from this cluster's CA, expired, or missing)"
    return AuthenticationFailed(f"TLS handshake failed: {raw:.200}{hint}")


def _nonce(body: dict[str, Any]) -> bytes:
    n = body.get("nonce")
    if not isinstance(n, bytes) or len(n) != 16:
        raise ProtocolError("handshake: missing or bad nonce")
    return n


__all__ = ["RPCProtocol", "State", "PROTOCOL_VERSION", "Handler", "ReplyCallback", "LATER",
           "flush_sends"]
