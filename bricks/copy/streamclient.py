"""The copy-stream protocol and its client side (DESIGN §7, §8, §10: large transfers).

A copy session (``dds.bricks.copy.source``) streams its snapshot files to the target on a
connection of their own instead of answering one ``copy_chunk`` request per MiB over the
brick's RPC connection: a ``sendfile`` at the source, a ``recv_into`` and a ``pwrite`` at the
target, each in a thread whose CPU priority is lowered (``lower_priority``), so that on
a busy machine the copy takes what the bricks' reactor threads leave.  The server is
``dds.bricks.copy.stream.StreamServer``; :func:`receive` is the client, run in a thread of
the target's pull.

**Who may stream.**  Not whoever knows the cluster's secret (in TLS mode there is none,
and a secret every role holds must not open a brick's files): each copy session has a
random 32-byte *token*, made by ``copy_begin`` and sent to the target in its reply,
over the brick-role RPC connection that already authenticated both ends.  A stream
proves knowledge of the token without sending it.  In TLS mode the whole stream also
runs inside TLS, with a certificate of the cluster CA both ways, the client's for role
``brick``.

The protocol, all integers big-endian (inside TLS in TLS mode)::

    client → MAGIC
    server → MAGIC, 0, nonce (16)
           | MAGIC, 1, length (2), error message (UTF-8)          (busy, or not TLS)
    client → session (8), offset (8), length of pid (1), pid,
             HMAC-SHA256(token, "stream" ‖ nonce ‖ session ‖ offset ‖ pid) (32)
    server → 0, size (8), block count (4), xxh64 of each BLOCK of the file (8 each),
             then the file's bytes from offset to its end
           | 1, length (2), error message (UTF-8)

The client speaks first so that a stream server in TLS mode can tell a plain client at
once (its first byte is not a TLS record) and say so in plain text, instead of both
sides waiting for the other until the hello times out.  The client checks every block's
xxh64 as it arrives (and the receiver the whole file's at the end, as for chunks).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

MAGIC = b"DDSS2"
BLOCK = 1 << 20
#: Bytes of a session's token (``copy_begin`` makes it with ``os.urandom``).
TOKEN_BYTES = 32
NONCE_BYTES = 16
#: The stream threads' ``nice`` where ``SCHED_IDLE`` is refused.
STREAM_NICE = 19
#: A stream whose peer sends or takes nothing for this long fails.
IO_TIMEOUT_S = 30.0
#: A source whose stream port does not answer this soon is asked for chunks instead.
CONNECT_TIMEOUT_S = 5.0
_TAG = b"stream"

#: ``call_from_thread(f, *args)``: run ``f(*args)`` on the reactor thread.
CallFromThread = Callable[..., None]
#: ``write(offset, data, checksum)``: where the client puts each block (the receiver's).
Write = Callable[[int, memoryview, int], None]


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


def stream_mac(token: bytes, nonce: bytes, session: int, offset: int, pid: bytes) -> bytes:
    """What proves knowledge of the session's token: bound to the server's fresh nonce,
    so a recorded hello cannot be replayed, and to what is asked for."""
    return hmac.new(token, _TAG + nonce + struct.pack(">QQ", session, offset) + pid,
                    hashlib.sha256).digest()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise StreamError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def error_frame(why: str) -> bytes:
    """``1, length, message``: how the server says no (cut short: a peer may read it)."""
    data = why.encode()[:1000]
    return struct.pack(">BH", 1, len(data)) + data


def read_error(sock: socket.socket) -> str:
    (n,) = struct.unpack(">H", recv_exact(sock, 2))
    return recv_exact(sock, n).decode("utf-8", "replace")


def receive(host: str, port: int, token: bytes, session: int, pid: str, size: int,
            write: Write, progress: Callable[[int], None] | None = None,
            stop: threading.Event | None = None, *,
            ssl_context: ssl.SSLContext | None = None) -> int:
    """The client side, blocking (run it in a thread: :func:`in_thread`): stream the
    snapshot of ``pid`` of ``session`` (whose token is ``token``) and ``write`` it block
    by block, each checked against its xxh64.  With ``ssl_context`` (TLS mode) the stream
    runs inside TLS.  Returns the bytes received; raises StreamError."""
    lower_priority()
    where = f"{host}:{port}"
    try:
        raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError as e:
        raise StreamError(f"cannot connect to {where}: {e.strerror or e}") from None
    sock: socket.socket = raw
    try:
        sock.settimeout(IO_TIMEOUT_S)
        if ssl_context is not None:
            sock = _tls(ssl_context, raw, where)
        raw_pid = pid.encode()
        sock.sendall(MAGIC)
        hello = _hello(sock, where, tls=ssl_context is not None)
        sock.sendall(struct.pack(">QQB", session, 0, len(raw_pid)) + raw_pid
                     + stream_mac(token, hello, session, 0, raw_pid))
        if recv_exact(sock, 1)[0] != 0:
            raise StreamError(read_error(sock))
        total, count = struct.unpack(">QI", recv_exact(sock, 12))
        if total != size:
            raise StreamError(f"the stream has {total} bytes, the snapshot {size}")
        if count != (size + BLOCK - 1) // BLOCK:
            raise StreamError(f"{count} block checksums for {size} bytes")
        hashes = struct.unpack(f">{count}Q", recv_exact(sock, 8 * count))
        return _blocks(sock, hashes, size, write, progress, stop)
    except OSError as e:
        raise StreamError(f"stream from {where}: {e.strerror or e}") from None
    finally:
        sock.close()


def _tls(context: ssl.SSLContext, raw: socket.socket, where: str) -> ssl.SSLSocket:
    """The TLS handshake, then the server's certificate must be a brick's: any party of
    the cluster has a certificate of its CA, and only a brick serves streams."""
    try:
        sock = context.wrap_socket(raw)
    except ssl.SSLError as e:
        raise StreamError(f"TLS handshake with {where} failed: {e.reason or e} (does the "
                          f"source use TLS?)") from None
    except OSError as e:          # closed or reset: a busy server closes at once
        raise StreamError(f"TLS handshake with {where} failed: {e.strerror or e}"
                          ) from None
    role = cert_role(sock)
    if role is not None and role != "brick":
        sock.close()
        raise StreamError(f"{where} presented a certificate for role {role!r:.40}, not "
                          f"brick")
    return sock


def _hello(sock: socket.socket, where: str, tls: bool) -> bytes:
    """The server's hello: its nonce, or StreamError with what it said."""
    try:
        head = recv_exact(sock, len(MAGIC) + 1)
    except StreamError:
        raise StreamError(f"{where} closed the connection before its stream hello"
                          + ("" if tls else " (a TLS stream server?)")) from None
    if not head.startswith(MAGIC):
        raise StreamError(f"{where} is not a snapshot stream server")
    if head[-1] != 0:
        raise StreamError(f"{where}: {read_error(sock)}")
    return recv_exact(sock, NONCE_BYTES)


def _blocks(sock: socket.socket, hashes: tuple[int, ...], size: int, write: Write,
            progress: Callable[[int], None] | None, stop: threading.Event | None) -> int:
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    pos = 0
    for expected in hashes:
        if stop is not None and stop.is_set():
            raise StreamError("cancelled")
        n = min(BLOCK, size - pos)
        got = 0
        while got < n:
            k = sock.recv_into(view[got:n])
            if k == 0:
                raise StreamError(f"connection closed at byte {pos + got} of {size}")
            got += k
        write(pos, view[:n], expected)
        pos += n
        if progress is not None:
            progress(pos)
    return pos


def cert_role(sock: ssl.SSLSocket) -> str | None:
    """The role (OU) a TLS peer's certificate names; None without a certificate.  (The
    chain was checked against the cluster CA by the handshake.)"""
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509          # TLS mode only
    from cryptography.x509.oid import NameOID
    cert = x509.load_der_x509_certificate(der)
    values = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(values) != 1:
        return ""             # none, or ambiguous: no role
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


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


__all__ = ["BLOCK", "CONNECT_TIMEOUT_S", "IO_TIMEOUT_S", "MAGIC", "TOKEN_BYTES",
           "CallFromThread", "StreamError", "Write", "background", "cert_role",
           "in_thread", "lower_priority", "receive", "stream_mac"]
