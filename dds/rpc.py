"""Multiplexed request/response over framed msgpack, with a mutual authentication.

One ``RPCProtocol`` serves both ends of a connection.  Requests carry a request id and
are answered out of order; either side may send requests once the handshake is done
(bricks call each other for gossip).  It is built in layers, each a module:

* ``dds.rpcframing``: frames read off the stream (the size limit enforced from the length
  prefix, a stranger's frames small), sent batched per reactor turn, and flow control
  (the accepting side stops reading from a peer that reads no replies);
* ``dds.handshake``: the handshake proving the connecting side's role, by a shared secret
  per role or a TLS certificate (DESIGN §10);
* here: the connection's lifecycle and its request table (ids, deadlines swept by one
  timer, replies, one-way requests, handlers that answer later: ``LATER``).

The features a side announces in its handshake message are the caller's business
(``FEATURES``, ``RPCProtocol.peer_features``): a side uses one only if the peer announced
it, so nodes of different versions still talk.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Callable, Coroutine

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds.auth import Credentials
from dds.codec import DEFAULT_MAX_FRAME
from dds.errors import (ConnectionLost, DDSError, InternalError, ProtocolError, Timeout,
                        from_wire)
from dds.handshake import (FEATURES, HANDSHAKE_TIMEOUT_S, PROTOCOL_VERSION, Handshaking,
                           _tls_problem)
from dds.messages import Message, title
from dds.metrics import Metrics
from dds.ratelimit import LogLimiter
from dds.rpcframing import (BATCH, BATCH_MAX_BYTES, DEFAULT_MAX_UNSENT, PREAUTH_MAX_FRAME,
                            State, _flusher, _no_delay, _tcp_of, flush_sends)

_NEVER = float("inf")

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


class _Later:
    def __repr__(self) -> str:
        return "LATER"


#: What a handler returns when it will answer later through ``RPCProtocol.answer`` (the
#: request's id is ``RPCProtocol.request_id`` while the handler runs): a hot path that
#: does without a Deferred per request.
LATER: Any = _Later()


#: Handshake failures and malformed frames logged, per process: a flood of strangers
#: costs a bounded amount of log (each is still counted in metrics).
_log_limiters: weakref.WeakKeyDictionary[IReactorTime, LogLimiter] = \
    weakref.WeakKeyDictionary()


def _limited(clock: IReactorTime) -> LogLimiter:
    limiter = _log_limiters.get(clock)
    if limiter is None:
        limiter = _log_limiters[clock] = LogLimiter(clock, RPCProtocol.log)
    return limiter


class RPCProtocol(Handshaking):
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
        #: The silence probe (``probe_silence``): off unless a caller turns it on.
        self._probe_after = 0.0
        self._probe_timeout = 0.0
        self._probe_timer: Any = None
        self._probing = False
        #: Replies received: the probe's evidence that the peer is alive.
        self.replies = 0

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
        if self._probe_timer is not None and self._probe_timer.active():
            self._probe_timer.cancel()
        self._probe_timer = None
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

    # -- requests ----------------------------------------------------------------------

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
        if self._probe_after and self._probe_timer is None:
            self._probe_timer = self.clock.callLater(self._probe_after, self._probe_check,
                                                     self.replies)
        if timeout is None:
            self._pending[rid] = (callback, arg, _NEVER, mtype, 0.0)
            return
        at = self.clock.seconds() + timeout
        self._pending[rid] = (callback, arg, at, mtype, timeout)
        if at < self._sweep_at:
            self._schedule_sweep(at)

    # -- the silence probe ----------------------------------------------------------------

    def probe_silence(self, after_s: float, timeout_s: float) -> None:
        """Suspect a peer that answers nothing: when requests have waited ``after_s``
        with no reply at all on this connection, send a ping; if that too goes
        unanswered for ``timeout_s``, fail every pending request with ``Timeout`` and
        close the connection.  A paused process keeps its TCP connections open, so
        without this a write would wait its whole vote timeout on it (issue 15); a
        peer merely slow to vote (waiting for a lock) still answers the ping.  The
        library turns it on; bricks, whose peers' silence their leases handle, do not."""
        self._probe_after = after_s
        self._probe_timeout = timeout_s

    def _probe_check(self, replies_then: int) -> None:
        self._probe_timer = None
        if not self._pending or self.state is not State.READY or self._probing:
            return
        if self.replies != replies_then:        # heard from the peer: check again later
            self._probe_timer = self.clock.callLater(self._probe_after, self._probe_check,
                                                     self.replies)
            return
        self._probing = True
        self.metrics.inc("silence_probes_total")
        self.request("ping", {}, self._probe_timeout, self._probe_answered, None)

    def _probe_answered(self, _: Any, result: Any) -> None:
        self._probing = False
        if not isinstance(result, (Timeout, ConnectionLost)):
            if self._pending and self._probe_timer is None \
                    and self.state is State.READY:
                self._probe_timer = self.clock.callLater(
                    self._probe_after, self._probe_check, self.replies)
            return
        if self.state is not State.READY:
            return
        silent = self._probe_after + self._probe_timeout
        self.metrics.inc("silent_peers_total")
        self.log.warn("{peer} answered nothing for {silent:g}s, not even a ping: "
                      "failing {n} pending request(s) and closing the connection",
                      peer=self._peer_name(), silent=silent, n=len(self._pending))
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            self.outstanding -= 1
            self._run_callback(entry[0], entry[1], Timeout(
                f"{title(entry[3])} to {self.peer_id} failed: the brick answered nothing "
                f"for {silent:g}s, not even a ping"))
        if self.transport is not None:
            self._unregister()
            self.transport.abortConnection()  # type: ignore[attr-defined]

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
            entry = self._pending.pop(rid, None)
            if entry is None:           # failed meanwhile (a callback gave up the peer)
                continue
            callback, arg, _at, mtype, timeout = entry
            self.outstanding -= 1
            self._run_callback(callback, arg, Timeout(
                f"{title(mtype)} to {self.peer_id} timed out after {timeout:g}s"))
        if self._pending and self.state is not State.CLOSED:
            at = min(entry[2] for entry in self._pending.values())
            if at < _NEVER:
                self._schedule_sweep(at)

    def _resolve(self, rid: int, body: Any, error: Any) -> None:
        entry = self._pending.pop(rid, None)
        self.replies += 1
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


__all__ = ["RPCProtocol", "State", "PROTOCOL_VERSION", "Handler", "ReplyCallback", "LATER",
           "flush_sends", "BATCH", "BATCH_MAX_BYTES", "DEFAULT_MAX_UNSENT", "FEATURES",
           "HANDSHAKE_TIMEOUT_S", "PREAUTH_MAX_FRAME"]
