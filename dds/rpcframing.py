"""The frames of an RPC connection (``dds.rpc``): reading them off the stream, sending
them batched per reactor turn, and flow control.

Before the handshake is done a peer is a stranger, and gets little: frames of at most
``PREAUTH_MAX_FRAME`` bytes, decoded with small element limits, and only handshake
messages (``dds.handshake``).

Once ready, the messages sent to one peer during a reactor iteration go out together at
its end (``callLater(0)``, one for all the connections of a reactor): one frame
``["*", n, [type, request_id, body, ...]]`` carrying the ``n`` messages, if the peer said
in its handshake message that it reads those (``"features": ["batch", ...]``).  So the
cost of a frame (a msgpack call, a length prefix, a transport write, a ``send``) is paid
once per peer and iteration rather than per message.  A lone message still goes as a plain
frame.

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

Malformed frames are answered with an error (or, when the stream can no longer be
trusted, a disconnect), logged and counted; they never reach a handler.
"""

from __future__ import annotations

import enum
import struct
import weakref
from typing import Any

import msgpack
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from dds.codec import decode_payload, encode_frame, pack
from dds.errors import DDSError, FrameTooLarge, ProtocolError
from dds.metrics import Metrics
from dds.ratelimit import LogLimiter

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

#: The most bytes the accepting side lets wait in a transport for a peer before it stops
#: reading from that peer (see "Flow control" above): the brick's default
#: (``limits.max_unsent_bytes``).
DEFAULT_MAX_UNSENT = 16 << 20

#: Messages held back for the end of the iteration are sent, and the transport's buffer
#: looked at, once this many pile up (three entries each): a read of many small requests
#: with large answers must not first make all its answers in memory.
_FLUSH_AT = 3 * 64

_length = struct.Struct(">I").unpack_from

#: ``msgpack.unpackb`` with its defaults, which are the codec's (``raw=False``,
#: ``strict_map_key=True``): ``decode_payload``'s decoding without the keywords.
_unpackb = msgpack.unpackb


def _unpack_preauth(payload: bytes | bytearray) -> Any:
    """Decode a stranger's frame with small element limits: its cost stays bounded by
    the handshake's few fields, whatever the frame is made of."""
    return msgpack.unpackb(payload, max_str_len=1024, max_bin_len=1024, max_array_len=16,
                           max_map_len=16, max_ext_len=0)


class _Flusher:
    """The connections of one reactor holding messages back until the end of the current
    iteration: one ``callLater(0)`` sends them all."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.held: list[FramedConnection] = []

    def hold(self, proto: FramedConnection) -> None:
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


class State(enum.Enum):
    AWAIT_HELLO = "await-hello"      # client: waiting for the server's challenge
    AWAIT_HELLO2 = "await-hello2"    # server: waiting for the client's proof
    AWAIT_HELLO3 = "await-hello3"    # client: waiting for the server's proof
    READY = "ready"
    CLOSED = "closed"


@implementer(IPushProducer)
class FramedConnection(Protocol):
    """Framing and flow control of ``RPCProtocol`` (which sets these attributes up); a
    frame goes to ``_frame``, a stranger's bad frame to ``_fail_handshake``."""

    is_client: bool
    state: State
    metrics: Metrics
    max_frame: int
    peer_id: str | None
    ready: Deferred[Any]
    _log_limited: LogLimiter
    _buf: bytearray
    _peer_batches: bool
    _out: list[Any]
    _flusher: _Flusher
    _reading: bool
    max_unsent: int
    _tcp: Any
    paused: bool
    _rest: list[Any] | None

    def _frame(self, mtype: str, rid: int, body: Any) -> None:
        raise NotImplementedError

    def _fail_handshake(self, error: DDSError) -> None:
        raise NotImplementedError

    # -- flow control (IPushProducer, registered on the transport) ---------------------

    def _unregister(self) -> None:
        """Stop being the transport's producer before closing it: Twisted would otherwise
        resume a paused producer when the buffer drains, instead of closing."""
        if self._tcp is not None:
            self._tcp = None
            if self.transport is not None:
                self.transport.unregisterProducer()  # type: ignore[attr-defined]

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

    # -- framing -----------------------------------------------------------------------

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

    def _address(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        host = str(getattr(peer, "host", "?"))
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{getattr(peer, 'port', '?')}"

    def _abort(self, error: DDSError) -> None:
        if not self.ready.called:
            self.ready.errback(error)
        if self.transport is not None:
            self._flush_out()
            self._unregister()
            self.transport.loseConnection()


__all__ = ["BATCH", "BATCH_MAX_BYTES", "DEFAULT_MAX_UNSENT", "FramedConnection",
           "PREAUTH_MAX_FRAME", "State", "flush_sends"]
