"""Bare protocols for testing the in-memory network itself: they record what reaches them."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol

from tests.sim.network import MemoryNetwork


class Peer(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.made = False
        self.lost: Any = None

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


def serve(net: MemoryNetwork, name: str = "srv", port: int = 1) -> list[Peer]:
    """Listen on ``h:port``; the list fills with the server side of each connection."""
    servers: list[Peer] = []

    class F(Factory):
        def buildProtocol(self, addr: Any) -> Peer:
            servers.append(Peer())
            return servers[-1]
    net.listen("h", port, F(), name=name)
    return servers


def connect(net: MemoryNetwork, name: str = "c", port: int = 1) -> Peer:
    client = Peer()
    net.connect("h", port, client, name=name)
    return client
