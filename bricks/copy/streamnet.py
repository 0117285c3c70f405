"""The stream server's sockets (``dds.bricks.copy.stream``): binding the configured address,
the deadline of each connection's hello, and small socket helpers.

A per-call socket timeout cannot bound a hello: a peer that sends one byte every few
seconds restarts it at every byte, and a TLS handshake makes many reads.  So one
watchdog thread per server holds every hello's deadline and shuts the connection down
when it passes, which wakes the worker blocked on it whatever it was doing.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Deadlines", "Hello", "listen", "peer_name", "send_quietly", "shutdown"]

S = TypeVar("S", bound=socket.socket)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``(host, port)``: an IPv4 or IPv6 address or a name;
    ``"::"`` takes IPv4 too where the system can (dual stack).  OSError naming the
    address and the setting if it cannot be bound (a port already taken)."""
    try:
        if host == "::":
            return socket.create_server(("::", port), family=socket.AF_INET6,
                                        dualstack_ipv6=socket.has_dualstack_ipv6())
        if not host:
            return socket.create_server(("", port))
        family, _, _, _, address = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
        return socket.create_server(address, family=family)
    except OSError as e:
        shown = f"[{host}]" if ":" in host else host
        raise OSError(e.errno, f"cannot listen for snapshot streams on {shown}:{port} "
                      f"(brick.stream_port): {e.strerror or e}") from None


class Hello:
    """One connection's hello: its socket (the TLS one once wrapped), its deadline
    (``time.monotonic()``), and how it ended."""

    __slots__ = ("sock", "deadline", "expired", "finished")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        #: The watchdog shut the connection down.
        self.expired = False
        #: The hello was done in time (``Deadlines.done``).
        self.finished = False


class Deadlines:
    """The watchdog: shuts down each connection whose hello is not done by its
    deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Hello]] = []
        self._seq = itertools.count()
        self._closed = False
        threading.Thread(target=self._run, name="dds-stream-hello", daemon=True).start()

    def add(self, hello: Hello) -> None:
        with self._cond:
            heapq.heappush(self._heap, (hello.deadline, next(self._seq), hello))
            self._cond.notify()

    def swap(self, hello: Hello, make: Callable[[], S]) -> S:
        """Replace the hello's socket by ``make()`` (a TLS wrapping, which takes the
        file descriptor over) with the watchdog held off: it must never shut down a
        socket object that no longer owns the descriptor."""
        with self._cond:
            sock = make()
            hello.sock = sock
            return sock

    def done(self, hello: Hello) -> bool:
        """The hello is over (idempotent): True if in time."""
        with self._cond:
            if not hello.expired:
                hello.finished = True
            return hello.finished

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].finished
                                      or self._heap[0][0] <= now):
                    _, _, hello = heapq.heappop(self._heap)
                    if not hello.finished:
                        hello.expired = True
                        shutdown(hello.sock)
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


def shutdown(sock: socket.socket) -> None:
    """Shut the descriptor down (for a TLS socket too: the plain socket's method), which
    wakes a thread blocked on it; closing it would not."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """A last word before closing: the peer may be gone already."""
    try:
        sock.sendall(data)
    except OSError:
        pass


def peer_name(addr: object) -> str:
    """``host:port`` of an accepted connection, ``[host]:port`` for IPv6."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)
