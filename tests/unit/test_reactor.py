"""The brick's lean epoll reactor (``bricks/reactor.py``), run on its own in this test,
with real sockets on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import globalLogPublisher

from dds.bricks.reactor import make

DEADLINE_S = 10.0


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("a protocol failed handling its data")
        self.transport.write(data)  # type: ignore[union-attr]


class LosesBadly(Protocol):
    def connectionLost(self, reason: Any = None) -> None:
        raise RuntimeError("a protocol failed in connectionLost")


class Sender(Protocol):
    def __init__(self, payload: bytes, got: list[bytes], reactor: Any) -> None:
        self.payload, self.got, self.reactor = payload, got, reactor

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.got.append(data)
        self.reactor.stop()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.got:        # lost before any answer (not the shutdown after one)
            self.got.append(b"<lost>")
            self.reactor.stop()


def _run(reactor: Any) -> None:
    """Run until a test's protocol stops it; fail the test if nothing did in time."""
    timed_out: list[bool] = []
    guard = reactor.callLater(DEADLINE_S, lambda: (timed_out.append(True), reactor.stop()))
    reactor.run(installSignalHandlers=False)
    if guard.active():
        guard.cancel()
    assert not timed_out, "the reactor did not finish in time"


def _failures(events: list[Any]) -> str:
    """The errors logged, new style (``log_failure``) or legacy (``failure``)."""
    found = (e.get("log_failure") or e.get("failure") for e in events)
    return "\n".join(str(f.value) for f in found if f is not None)


@contextmanager
def _logged() -> Iterator[list[Any]]:
    """The log events published while the block runs."""
    events: list[Any] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def _connect(reactor: Any, port: int, payload: bytes, got: list[bytes]) -> None:
    f = ClientFactory()
    f.buildProtocol = lambda addr: Sender(payload, got, reactor)  # type: ignore[method-assign]
    reactor.connectTCP("127.0.0.1", port, f)


def _serve(reactor: Any, protocol: type[Protocol]) -> int:
    return int(reactor.listenTCP(0, Factory.forProtocol(protocol),
                                 interface="127.0.0.1").getHost().port)


def test_the_lean_reactor_serves_a_tcp_connection() -> None:
    reactor = make()
    got: list[bytes] = []
    _connect(reactor, _serve(reactor, Echo), b"ping", got)
    _run(reactor)
    assert got == [b"ping"]


def test_an_error_in_a_protocol_drops_that_connection_and_is_logged() -> None:
    reactor = make()
    port = _serve(reactor, Echo)
    got: list[bytes] = []
    with _logged() as failed:
        _connect(reactor, port, b"boom", got)
        _run(reactor)
    assert got == [b"<lost>"]
    assert "a protocol failed handling its data" in _failures(failed)


def test_an_error_escaping_an_event_is_logged_and_the_loop_goes_on() -> None:
    reactor = make()
    bad_port = _serve(reactor, LosesBadly)
    good_port = _serve(reactor, Echo)
    got: list[bytes] = []

    class Closer(Protocol):
        def connectionMade(self) -> None:
            self.transport.loseConnection()  # type: ignore[union-attr]

        def connectionLost(self, reason: Any = None) -> None:
            # The server side's connectionLost raises when it sees the close; the echo
            # afterwards shows the loop still serves.
            reactor.callLater(0.05, _connect, reactor, good_port, b"after", got)

    with _logged() as failed:
        f = ClientFactory()
        f.buildProtocol = lambda addr: Closer()  # type: ignore[method-assign]
        reactor.connectTCP("127.0.0.1", bad_port, f)
        _run(reactor)
    assert got == [b"after"]
    assert "a protocol failed in connectionLost" in _failures(failed)
