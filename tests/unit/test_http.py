"""The brick's HTTP port (dds.bricks.http): ``/metrics`` and ``/healthz`` answer GET;
any request that announces a body is answered at once and the connection closed, before
a byte of the body is read.  A real reactor in a thread of its own and plain blocking
sockets on loopback."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from dds.metrics import Metrics

from dds.bricks.http import make_site
from dds.bricks.reactor import make

PATIENCE_S = 10.0
BIG = 300 << 20


@pytest.fixture
def port() -> Iterator[int]:
    reactor = make()
    metrics = Metrics()
    metrics.inc("copy_sessions_total", 3)
    site = make_site(metrics, lambda: {"ok": True, "brick": "b1"}, reactor=reactor)
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False})
    thread.start()
    try:
        yield listening.getHost().port
    finally:
        reactor.callFromThread(reactor.stop)
        thread.join(PATIENCE_S)
        assert not thread.is_alive()


def exchange(port: int, request: bytes) -> tuple[bytes, bool]:
    """Send ``request`` (headers only: no body follows), then read until the server
    closes or goes quiet: (what it answered, whether it closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as sock:
        sock.sendall(request)
        sock.settimeout(1.0)
        got = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return got, True
                got += data
        except socket.timeout:
            return got, False


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_large_content_length_gets_413_without_the_body_being_read(port: int) -> None:
    answer, closed = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: b1\r\n"
                                    b"Content-Length: %d\r\n\r\n" % BIG)
    assert status(answer) == 413 and closed


def test_a_post_with_a_body_gets_405_without_the_body_being_read(port: int) -> None:
    answer, closed = exchange(port, b"POST /healthz HTTP/1.1\r\nHost: b1\r\n"
                                    b"Content-Length: %d\r\n\r\n" % BIG)
    assert status(answer) == 405 and b"Allow: GET, HEAD" in answer and closed


def test_a_chunked_body_is_refused_before_its_first_chunk(port: int) -> None:
    answer, closed = exchange(port, b"PUT /metrics HTTP/1.1\r\nHost: b1\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n")
    assert status(answer) == 405 and closed


def test_a_body_is_refused_on_a_path_that_does_not_exist_too(port: int) -> None:
    answer, closed = exchange(port, b"GET /nowhere HTTP/1.1\r\nHost: b1\r\n"
                                    b"Content-Length: 10\r\n\r\n")
    assert status(answer) == 413 and closed


def test_get_healthz_answers_its_state(port: int) -> None:
    answer, _ = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: b1\r\n"
                               b"Connection: close\r\n\r\n")
    assert status(answer) == 200
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"ok": True, "brick": "b1"}


def test_get_metrics_answers_the_counters(port: int) -> None:
    answer, _ = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: b1\r\n"
                               b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    assert status(answer) == 200
    assert b"\ndds_copy_sessions_total 3.0\n" in answer


def test_two_gets_on_one_connection_are_both_answered(port: int) -> None:
    answer, closed = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: b1\r\n\r\n"
                                    b"GET /metrics HTTP/1.1\r\nHost: b1\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 2 and not closed
