"""Snapshot streams, the server side: a copy session's files to the target on a
connection of their own, off the reactor thread and at low CPU priority (DESIGN §7, §8,
§10).  The protocol, the client (:func:`receive`) and why streams exist at all are in
``dds.bricks.copy.streamclient``; this module re-exports them.

**Server** (:class:`StreamServer`, one per source brick): a listening socket bound when
the brick starts, on the configured ``brick.stream_port`` (a port a firewall rule can
name; 0 only for ``dds-admin local up`` and tests), so a port already taken fails the
start.  What a stranger can get out of it is bounded:

- one thread accepts, and hands each connection to a pool of ``MAX_STREAM_WORKERS``
  threads; a connection beyond that is told "busy" and closed at once, so a flood of
  connections costs neither a thread nor a file descriptor each;
- the hello (and, in TLS mode, the TLS handshake) must be done within
  ``HELLO_TIMEOUT_S`` in all, however slowly its bytes trickle in, or the connection is
  closed (a watchdog thread shuts it down at its deadline);
- only a client that proves knowledge of a live copy session's token is served, and
  only that session's files; everything else is refused, counted (``on_refused``) and
  logged at a bounded rate.

The server serves only a file registered for that session and partition (``register``),
honours the session's rate limit, and stops when the session is unregistered.  Nothing
of a stream touches the reactor's state: results come back through ``callFromThread``.
"""

from __future__ import annotations

import hmac
import os
import queue
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.logger import Logger

from dds.bricks.copy.streamclient import (BLOCK, CONNECT_TIMEOUT_S, IO_TIMEOUT_S, MAGIC,
                                     NONCE_BYTES, TOKEN_BYTES, CallFromThread, StreamError,
                                     Write, background, cert_role, error_frame, in_thread,
                                     lower_priority, receive, recv_exact, stream_mac)
from dds.bricks.copy.streamnet import (Deadlines, Hello, listen, peer_name, send_quietly,
                                  shutdown)

if TYPE_CHECKING:
    from dds.config import BrickConfig

log = Logger()

#: Connections served at once; one more is refused at once.
MAX_STREAM_WORKERS = 8
#: The hello, TLS handshake included, must be done within this.
HELLO_TIMEOUT_S = 5.0

#: Why a connection was refused (``on_refused``): more than the pool takes; no hello in
#: time; no proof of a live session's token (or of TLS, or of the brick role); a valid
#: session asking for what it has not (a file, an offset); bytes that are no hello.
BUSY, TIMEOUT, AUTH, REQUEST, PROTOCOL = "busy", "timeout", "auth", "request", "protocol"
_TLS_RECORD_HANDSHAKE = 0x16


class _Refused(StreamError):
    """The connection is refused: ``reason`` is what ``on_refused`` hears."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason
        self.why = why


class _Served:
    """A file a session may stream (``register``)."""

    __slots__ = ("path", "size", "blocks", "rate", "started", "sent", "live")

    def __init__(self, path: Path, size: int, blocks: tuple[int, ...], rate: float,
                 started: float) -> None:
        self.path = path
        self.size = size
        self.blocks = blocks
        self.rate = rate            # bytes per second, 0: unlimited
        self.started = started      # time.monotonic()
        self.sent = 0
        self.live = True


class _RateLog:
    """At most ``per_window`` warnings every ``window_s`` seconds, from any thread; the
    next one logged says how many were left out.  A stranger can make a brick refuse a
    thousand connections a second: each is counted, a few are logged."""

    def __init__(self, per_window: int = 10, window_s: float = 10.0) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._lock = threading.Lock()
        self._start = float("-inf")
        self._logged = 0
        self.suppressed = 0

    def warn(self, line: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.window_s:
                self._start, self._logged = now, 0
            if self._logged >= self.per_window:
                self.suppressed += 1
                return
            self._logged += 1
            suppressed, self.suppressed = self.suppressed, 0
        log.warn("{line}" + (" ({suppressed} similar lines suppressed)" if suppressed
                             else ""), line=line, suppressed=suppressed)


class StreamServer:
    """The source side: serves registered snapshot files to clients that prove a
    session's token (and, with ``ssl_context``, a brick's certificate)."""

    def __init__(self, host: str, port: int, call_from_thread: CallFromThread, *,
                 ssl_context: ssl.SSLContext | None = None,
                 on_sent: Callable[[int, int], None] | None = None,
                 on_refused: Callable[[str], None] | None = None,
                 max_workers: int = MAX_STREAM_WORKERS,
                 hello_timeout: float = HELLO_TIMEOUT_S) -> None:
        """Bind ``(host, port)`` now (OSError naming the port if that fails) and serve.
        ``ssl_context``: a server context requiring a client certificate of the
        cluster CA (TLS mode)."""
        self.call_from_thread = call_from_thread
        self.ssl_context = ssl_context
        #: ``on_sent(session, bytes sent since the last call)``, on the reactor thread,
        #: about once a second.
        self.on_sent = on_sent
        #: ``on_refused(reason)``, on the reactor thread: a connection was refused.
        self.on_refused = on_refused
        self.max_workers = max_workers
        self.hello_timeout = hello_timeout
        self._files: dict[tuple[int, str], _Served] = {}
        self._tokens: dict[int, bytes] = {}
        self._lock = threading.Lock()
        #: The connections being served (their hellos: the current socket of each).
        self._conns: set[Hello] = set()
        #: Connections handed to the pool and not done yet.
        self.in_flight = 0
        self._closed = False
        self._rate_log = _RateLog()
        self._sock = listen(host, port)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._deadlines = Deadlines()
        self._work: queue.SimpleQueue[tuple[Hello, str] | None] = queue.SimpleQueue()
        for i in range(max_workers):
            threading.Thread(target=self._worker, name=f"dds-stream-send-{i}",
                             daemon=True).start()
        threading.Thread(target=self._accept, name="dds-stream-accept", daemon=True).start()

    @classmethod
    def for_brick(cls, config: BrickConfig, call_from_thread: CallFromThread
                  ) -> StreamServer:
        """A brick's server: on ``listen_host`` and ``brick.stream_port``; in TLS mode
        (``credentials.tls``) inside TLS with the brick's certificate, a client's from
        the cluster CA required."""
        tls = config.credentials.tls
        context = None
        if tls is not None:
            from dds.tls import ssl_context
            context = ssl_context(tls, server=True)
        return cls(config.listen_host, config.brick.stream_port, call_from_thread,
                   ssl_context=context)

    # -- reactor thread -------------------------------------------------------------------

    def register(self, session: int, token: bytes, pid: str, path: Path, size: int,
                 blocks: tuple[int, ...], rate: float) -> None:
        """``session`` (whose clients prove ``token``) may stream ``path`` as ``pid``."""
        if len(token) != TOKEN_BYTES:
            raise ValueError(f"a stream token has {TOKEN_BYTES} bytes, not {len(token)}")
        with self._lock:
            if self._tokens.setdefault(session, token) != token:
                raise ValueError(f"copy session {session} has another stream token")
            self._files[(session, pid)] = _Served(path, size, blocks, rate,
                                                  time.monotonic())

    def unregister(self, session: int) -> None:
        """The session ended: its token opens nothing any more, its streams stop (at the
        next block)."""
        with self._lock:
            self._tokens.pop(session, None)
            for key in [k for k in self._files if k[0] == session]:
                self._files.pop(key).live = False

    def close(self) -> None:
        """Stop listening and end every connection (the brick stops)."""
        with self._lock:
            self._closed = True
            for served in self._files.values():
                served.live = False
            self._files.clear()
            self._tokens.clear()
            hellos = list(self._conns)
        for hello in hellos:
            shutdown(hello.sock)
        for _ in range(self.max_workers):
            self._work.put(None)
        self._deadlines.close()
        shutdown(self._sock)       # wakes the accept thread (close alone does not)
        self._sock.close()

    # -- threads --------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                conn, addr = self._sock.accept()
            except OSError as e:
                if self._closed:
                    return
                # Out of file descriptors (a flood), or a connection reset while queued:
                # keep accepting once it passes.
                self._log(f"cannot accept a snapshot stream: {e.strerror or e}")
                time.sleep(0.05)
                continue
            peer = peer_name(addr)
            hello = Hello(conn, time.monotonic() + self.hello_timeout)
            with self._lock:
                admitted = not self._closed and self.in_flight < self.max_workers
                if admitted:
                    self.in_flight += 1
                    self._conns.add(hello)
            if admitted:
                self._deadlines.add(hello)
                self._work.put((hello, peer))
                continue
            # Counted before the peer hears it: whoever sees the refusal sees it counted.
            self._refused(BUSY, peer, f"busy: {self.max_workers} streams already")
            self._refuse_busy(conn)

    def _refuse_busy(self, conn: socket.socket) -> None:
        """Say so and close, without waiting on the peer: this is the accept thread.  In
        TLS mode nothing can be said before a handshake, which would cost as much as
        what is refused: just close."""
        try:
            if self.ssl_context is None:
                conn.setblocking(False)
                conn.send(MAGIC + error_frame(f"busy: {self.max_workers} snapshot streams "
                                              "already; try again later"))
        except OSError:
            pass
        finally:
            conn.close()

    def _worker(self) -> None:
        lower_priority()
        while True:
            item = self._work.get()
            if item is None:
                return
            hello, peer = item
            try:
                self._serve(hello, peer)
            finally:
                with self._lock:
                    self.in_flight -= 1
                    self._conns.discard(hello)

    def _serve(self, hello: Hello, peer: str) -> None:
        conn = sock = hello.sock
        try:
            conn.settimeout(self.hello_timeout + 1.0)   # a backstop to the watchdog
            sock = self._secure(hello)
            session, served, offset = self._hello(sock)
            if not self._deadlines.done(hello):
                raise StreamError("the hello was done after its deadline")
            sock.settimeout(IO_TIMEOUT_S)
            self._send(sock, session, served, offset)
        except (OSError, StreamError) as e:      # _Refused too
            if hello.expired:        # whatever failed, the watchdog's shutdown caused it
                self._refused(TIMEOUT, peer, f"no hello within {self.hello_timeout}s")
            elif isinstance(e, _Refused):
                self._refused(e.reason, peer, e.why)
            elif not hello.finished:
                self._refused(PROTOCOL, peer, f"broken hello: {e}")
            else:
                log.info("snapshot stream to {peer} ended early: {error}", peer=peer,
                         error=str(e))
        finally:
            self._deadlines.done(hello)
            sock.close()
            conn.close()

    def _secure(self, hello: Hello) -> socket.socket:
        """In TLS mode: the TLS handshake, and the client's certificate must be a
        brick's.  A plain client is told, in plain text, that TLS is required."""
        conn, ctx = hello.sock, self.ssl_context
        if ctx is None:
            return conn
        first = conn.recv(1, socket.MSG_PEEK)
        if not first:
            raise _Refused(PROTOCOL, "closed before any byte")
        if first[0] != _TLS_RECORD_HANDSHAKE:
            if first == MAGIC[:1]:
                send_quietly(conn, MAGIC + error_frame(
                    "this snapshot stream server requires TLS"))
            raise _Refused(AUTH, "a client without TLS")
        sock = self._deadlines.swap(hello, lambda: ctx.wrap_socket(
            conn, server_side=True, do_handshake_on_connect=False))
        try:
            sock.do_handshake()
        except ssl.SSLError as e:
            if hello.expired:
                raise
            raise _Refused(AUTH, f"TLS handshake failed: {e.reason or e}") from None
        role = cert_role(sock)
        if role is not None and role != "brick":
            send_quietly(sock, MAGIC + error_frame(
                "authentication failed: a stream is for bricks only"))
            raise _Refused(AUTH, f"a certificate for role {role!r:.40}, not brick")
        return sock

    def _hello(self, sock: socket.socket) -> tuple[int, _Served, int]:
        """The client's request, checked: (session, the file, offset)."""
        if recv_exact(sock, len(MAGIC)) != MAGIC:
            send_quietly(sock, MAGIC + error_frame("not a snapshot stream client"))
            raise _Refused(PROTOCOL, "not a snapshot stream client")
        nonce = os.urandom(NONCE_BYTES)
        sock.sendall(MAGIC + b"\0" + nonce)
        session, offset, n = struct.unpack(">QQB", recv_exact(sock, 17))
        raw_pid = recv_exact(sock, n)
        mac = recv_exact(sock, 32)
        pid = raw_pid.decode("utf-8", "replace")
        with self._lock:
            token = self._tokens.get(session)
            served = self._files.get((session, pid))
        if token is None:
            # Unknown or ended: nothing to check the proof against.  (That a session id
            # exists is no secret worth keeping: 63 random bits, useless without the
            # token; a target that comes late learns why it was refused.)
            self._say(sock, f"no snapshot of {pid:.80} in copy session {session}")
            raise _Refused(AUTH, f"unknown copy session {session}")
        if not hmac.compare_digest(mac, stream_mac(token, nonce, session, offset, raw_pid)):
            self._say(sock, "authentication failed")
            raise _Refused(AUTH, f"a wrong token for copy session {session}")
        if served is None or not served.live:
            self._say(sock, f"no snapshot of {pid:.80} in copy session {session}")
            raise _Refused(REQUEST, f"no snapshot of {pid:.80} in copy session {session}")
        if offset % BLOCK or offset > served.size:
            self._say(sock, f"bad offset {offset}")
            raise _Refused(REQUEST, f"bad offset {offset}")
        return session, served, offset

    def _send(self, sock: socket.socket, session: int, served: _Served,
              offset: int) -> None:
        sock.sendall(struct.pack(">BQI", 0, served.size, len(served.blocks))
                     + b"".join(struct.pack(">Q", h) for h in served.blocks))
        # A TLS socket cannot sendfile (the bytes go through the TLS library): blocks.
        buf = bytearray(BLOCK) if isinstance(sock, ssl.SSLSocket) else None
        reported, told = time.monotonic(), served.sent
        with open(served.path, "rb") as f:
            pos = offset
            while pos < served.size:
                if not served.live:
                    raise StreamError(f"copy session {session} ended")
                if served.rate:
                    due = served.started + served.sent / served.rate - time.monotonic()
                    if due > 0:
                        time.sleep(due)
                n = min(BLOCK, served.size - pos)
                if buf is None:
                    k = sock.sendfile(f, pos, n)
                else:
                    f.seek(pos)
                    k = f.readinto(memoryview(buf)[:n])
                    sock.sendall(memoryview(buf)[:k])
                if k == 0:
                    raise StreamError("the snapshot file is shorter than its size")
                pos += k
                served.sent += k
                now = time.monotonic()
                if self.on_sent is not None and now - reported >= 1.0:
                    reported = now
                    self.call_from_thread(self.on_sent, session, served.sent - told)
                    told = served.sent
        if self.on_sent is not None:
            self.call_from_thread(self.on_sent, session, served.sent - told)

    @staticmethod
    def _say(sock: socket.socket, why: str) -> None:
        send_quietly(sock, error_frame(why))

    def _refused(self, reason: str, peer: str, why: str) -> None:
        if self.on_refused is not None:
            self.call_from_thread(self.on_refused, reason)
        self._log(f"refused a snapshot stream from {peer}: {why}")

    def _log(self, line: str) -> None:
        self._rate_log.warn(line)


__all__ = ["AUTH", "BLOCK", "BUSY", "TOKEN_BYTES", "CONNECT_TIMEOUT_S", "HELLO_TIMEOUT_S",
           "MAX_STREAM_WORKERS", "PROTOCOL", "REQUEST", "TIMEOUT", "CallFromThread",
           "StreamError", "StreamServer", "Write", "background", "in_thread", "receive"]
