"""Snapshot streams: the bytes of a copy on a connection of their own, off the reactor
thread and at low CPU priority (DESIGN §7, §8, §10: large transfers).

A copy session (``copysource``) streams its snapshot files to the target instead of
answering one ``copy_chunk`` request per MiB over the brick's RPC connection.  Each
MiB that way costs several copies in user space on both sides (msgpack framing, the
decoder's buffer) on the reactor thread of the source, which every write to the
partition waits on, and of the target.  A stream costs a ``sendfile`` at the source and
a ``recv_into`` and a ``pwrite`` at the target, each in a thread of its own whose CPU
priority is lowered (``lower_priority``): on a busy machine the copy takes what the
bricks' reactor threads leave.

**Server** (:class:`StreamServer`, one per source brick): a listening socket on the
brick's host, on a port the kernel chooses (the ``copy_begin`` reply names it), and a
thread per connection.  **Client** (:func:`receive`, in a thread of the target's pull).
The protocol, all integers big-endian::

    server → MAGIC, nonce (16 bytes)
    client → session (8), offset (8), length of pid (1), pid,
             HMAC-SHA256(secret, "stream" ‖ nonce ‖ session ‖ offset ‖ pid) (32)
    server → 0, size (8), block count (4), xxh64 of each BLOCK of the file (8 each),
             then the file's bytes from offset to its end
           | 1, length (2), error message (UTF-8)

The client checks every block's xxh64 as it arrives (and the receiver the whole file's
at the end, as for chunks).  The server serves only a file registered for that session
and partition (``register``), honours the session's rate limit, and stops when the
session is unregistered.  Nothing of a stream touches the reactor's state: results and
errors come back through ``callFromThread``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger()

MAGIC = b"DDSS1"
BLOCK = 1 << 20
#: The stream threads' ``nice`` where ``SCHED_IDLE`` is refused.
STREAM_NICE = 19
#: A stream whose peer sends or takes nothing for this long fails.
IO_TIMEOUT_S = 30.0
#: A source whose stream port does not answer this soon is asked for chunks instead.
CONNECT_TIMEOUT_S = 5.0
_TAG = b"stream"

#: ``call_from_thread(f, *args)``: run ``f(*args)`` on the reactor thread.
CallFromThread = Callable[..., None]


class StreamError(Exception):
    """A stream failed; the message says why."""


def lower_priority() -> None:
    """Make the calling thread yield the CPU to every other thread of the process and to
    any thread that wakes up (Linux: ``SCHED_IDLE``, else ``nice``; per thread, which
    only Linux offers: elsewhere nothing is changed).  A plain ``nice`` would not do:
    with autogroups (one per session, hence per brick) it only ranks the threads of one
    brick among themselves."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, STREAM_NICE)
        except OSError:
            pass


def _mac(secret: bytes, nonce: bytes, session: int, offset: int, pid: bytes) -> bytes:
    return hmac.new(secret, _TAG + nonce + struct.pack(">QQ", session, offset) + pid,
                    hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise StreamError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


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


class StreamServer:
    """The source side: serves registered snapshot files to authenticated clients."""

    def __init__(self, host: str, secret: bytes, call_from_thread: CallFromThread,
                 on_sent: Callable[[int, int], None] | None = None) -> None:
        self.secret = secret
        self.call_from_thread = call_from_thread
        #: ``on_sent(session, bytes sent since the last call)``, on the reactor thread,
        #: about once a second.
        self.on_sent = on_sent
        self._files: dict[tuple[int, str], _Served] = {}
        self._lock = threading.Lock()
        self._sock = socket.create_server((host, 0))
        self.port: int = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name="dds-stream-accept", daemon=True).start()

    # -- reactor thread -------------------------------------------------------------------

    def register(self, session: int, pid: str, path: Path, size: int,
                 blocks: tuple[int, ...], rate: float) -> None:
        with self._lock:
            self._files[(session, pid)] = _Served(path, size, blocks, rate,
                                                  time.monotonic())

    def unregister(self, session: int) -> None:
        """The session ended: its streams stop (at the next block)."""
        with self._lock:
            for key in [k for k in self._files if k[0] == session]:
                self._files.pop(key).live = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for served in self._files.values():
                served.live = False
            self._files.clear()
        try:
            self._sock.close()
        except OSError:
            pass

    # -- threads --------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return      # closed
            threading.Thread(target=self._serve, args=(conn,), name="dds-stream-send",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        lower_priority()
        with conn:
            try:
                conn.settimeout(IO_TIMEOUT_S)
                self._serve_one(conn)
            except (OSError, StreamError) as e:
                log.info("snapshot stream ended early: {error}", error=str(e))

    def _serve_one(self, conn: socket.socket) -> None:
        nonce = os.urandom(16)
        conn.sendall(MAGIC + nonce)
        session, offset, n = struct.unpack(">QQB", _recv_exact(conn, 17))
        pid = _recv_exact(conn, n)
        mac = _recv_exact(conn, 32)
        if not hmac.compare_digest(mac, _mac(self.secret, nonce, session, offset, pid)):
            self._refuse(conn, "authentication failed")
            return
        with self._lock:
            served = self._files.get((session, pid.decode("utf-8", "replace")))
        if served is None or not served.live:
            self._refuse(conn, f"no snapshot of {pid.decode('utf-8', 'replace')} in copy "
                         f"session {session}")
            return
        if offset % BLOCK or offset > served.size:
            self._refuse(conn, f"bad offset {offset}")
            return
        conn.sendall(struct.pack(">BQI", 0, served.size, len(served.blocks))
                     + b"".join(struct.pack(">Q", h) for h in served.blocks))
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
                k = conn.sendfile(f, pos, min(BLOCK, served.size - pos))
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
    def _refuse(conn: socket.socket, why: str) -> None:
        data = why.encode()[:1000]
        conn.sendall(struct.pack(">BH", 1, len(data)) + data)


#: ``write(offset, data, checksum)``: where the client puts each block (the receiver's).
Write = Callable[[int, memoryview, int], None]


def receive(host: str, port: int, secret: bytes, session: int, pid: str, size: int,
            write: Write, progress: Callable[[int], None] | None = None,
            stop: threading.Event | None = None) -> int:
    """The client side, blocking (run it in a thread: :func:`in_thread`): stream the
    snapshot of ``pid`` of ``session`` and ``write`` it block by block, each checked
    against its xxh64.  Returns the bytes received; raises StreamError."""
    lower_priority()
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError as e:
        raise StreamError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
    with sock:
        try:
            sock.settimeout(IO_TIMEOUT_S)
            hello = _recv_exact(sock, len(MAGIC) + 16)
            if not hello.startswith(MAGIC):
                raise StreamError(f"{host}:{port} is not a snapshot stream")
            raw_pid = pid.encode()
            sock.sendall(struct.pack(">QQB", session, 0, len(raw_pid)) + raw_pid
                         + _mac(secret, hello[len(MAGIC):], session, 0, raw_pid))
            status = _recv_exact(sock, 1)[0]
            if status != 0:
                (n,) = struct.unpack(">H", _recv_exact(sock, 2))
                raise StreamError(_recv_exact(sock, n).decode("utf-8", "replace"))
            total, count = struct.unpack(">QI", _recv_exact(sock, 12))
            if total != size:
                raise StreamError(f"the stream has {total} bytes, the snapshot {size}")
            hashes = struct.unpack(f">{count}Q", _recv_exact(sock, 8 * count))
            if count != (size + BLOCK - 1) // BLOCK:
                raise StreamError(f"{count} block checksums for {size} bytes")
            buf = bytearray(BLOCK)
            view = memoryview(buf)
            pos = 0
            for i, expected in enumerate(hashes):
                if stop is not None and stop.is_set():
                    raise StreamError("cancelled")
                n = min(BLOCK, size - pos)
                got = 0
                while got < n:
                    k = sock.recv_into(view[got:n])
                    if k == 0:
                        raise StreamError(f"connection closed at byte {pos + got} of "
                                          f"{size}")
                    got += k
                write(pos, view[:n], expected)
                pos += n
                if progress is not None:
                    progress(pos)
            return pos
        except OSError as e:
            raise StreamError(f"stream from {host}:{port}: {e.strerror or e}") from None


def in_thread(call_from_thread: CallFromThread, f: Callable[..., Any],
              *args: Any, **kwargs: Any) -> Deferred[Any]:
    """Run ``f`` in a thread of its own (not the reactor's pool: its priority is
    lowered); the Deferred fires on the reactor thread."""
    d: Deferred[Any] = Deferred()

    def run() -> None:
        try:
            result = f(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 -- handed to the reactor thread
            call_from_thread(d.errback, e)
        else:
            call_from_thread(d.callback, result)
    threading.Thread(target=run, name="dds-stream-work", daemon=True).start()
    return d


def background(call_from_thread: CallFromThread) -> Callable[..., Deferred[Any]]:
    """A ``run_in_thread`` whose work runs at the streams' low priority, each call in a
    thread of its own (the snapshot of a copy: its backup and hash of the file)."""
    def run(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return in_thread(call_from_thread, _lowered, f, *args)
    return run


def _lowered(f: Callable[..., Any], *args: Any) -> Any:
    lower_priority()
    return f(*args)


__all__ = ["BLOCK", "StreamError", "StreamServer", "background", "in_thread", "receive"]
