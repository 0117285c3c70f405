"""The bench floor: the round trips per second that Python + Twisted + msgpack reach on
this machine with nothing else in the way.

A tiny echo server and one client process exchange plain length-prefixed msgpack frames
(the DDS framing, but not the DDS RPC: no handshake, no request dispatch, no storage) over
loopback, with ``concurrency`` requests in flight.  DDS throughput is reported as a
fraction of this figure, which makes bench results comparable across machines.

    python -m dds.tools.bench.floor serve
        prints {"event": "ready", "port": P}
    python -m dds.tools.bench.floor client --port P ...
        prints "ready", waits for a line on stdin, runs, prints progress and "done"
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import msgpack
from twisted.internet import task, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from dds.codec import FrameDecoder, encode_frame
from dds.tools.bench.jsonlines import emit, next_command

__all__ = ["EchoServer", "EchoClient", "main"]


class EchoServer(Protocol):
    """Decode each frame and send it back re-encoded (the work a minimal server does)."""

    def connectionMade(self) -> None:
        self.decoder = FrameDecoder()

    def dataReceived(self, data: bytes) -> None:
        out = []
        for payload in self.decoder.feed(data):
            mtype, rid, body = msgpack.unpackb(payload, raw=False)
            out.append(encode_frame("ok", rid, body))
        self.transport.write(b"".join(out))  # type: ignore[union-attr]


class EchoClient(Protocol):
    """Keeps ``concurrency`` requests in flight: each reply sends the next request."""

    def __init__(self, concurrency: int, value_size: int) -> None:
        self.concurrency = concurrency
        self.body = {"key": b"k" * 16, "value": b"v" * value_size}
        self.decoder = FrameDecoder()
        self.done = 0
        self.running = False
        self.next_id = 1

    def start(self) -> None:
        self.running = True
        self.transport.write(b"".join(self._request()  # type: ignore[union-attr]
                                      for _ in range(self.concurrency)))

    def _request(self) -> bytes:
        rid = self.next_id
        self.next_id += 1
        return encode_frame("get", rid, self.body)

    def dataReceived(self, data: bytes) -> None:
        out = []
        for payload in self.decoder.feed(data):
            msgpack.unpackb(payload, raw=False)
            self.done += 1
            if self.running:
                out.append(self._request())
        if out:
            self.transport.write(b"".join(out))  # type: ignore[union-attr]


async def serve(reactor: Any) -> None:
    factory = Factory.forProtocol(EchoServer)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    emit(event="ready", port=port.getHost().port)
    # Serve until stdin closes (the bench ends) or SIGTERM stops the reactor.
    await threads.deferToThread(sys.stdin.read)


async def run_client(reactor: Any, port: int, seconds: float, concurrency: int,
                     value_size: int) -> None:
    proto = EchoClient(concurrency, value_size)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
    emit(event="ready")
    await next_command()
    t0 = time.perf_counter()
    proto.start()
    end = t0 + seconds
    while (now := time.perf_counter()) < end:
        d: Deferred[None] = task.deferLater(reactor, min(0.2, end - now))
        await d
        emit(event="progress", done=proto.done, elapsed=time.perf_counter() - t0)
    proto.running = False
    elapsed = time.perf_counter() - t0
    emit(event="done", ops=proto.done, elapsed=elapsed, rtt_s=proto.done / elapsed)
    proto.transport.loseConnection()  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dds.tools.bench.floor")
    sub = p.add_subparsers(dest="mode", required=True)
    sub.add_parser("serve")
    c = sub.add_parser("client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--seconds", type=float, default=5.0)
    c.add_argument("--concurrency", type=int, default=64)
    c.add_argument("--value-size", type=int, default=100)
    args = p.parse_args(argv)
    if args.mode == "serve":
        task.react(lambda reactor: Deferred.fromCoroutine(serve(reactor)))
    else:
        task.react(lambda reactor: Deferred.fromCoroutine(run_client(
            reactor, args.port, args.seconds, args.concurrency, args.value_size)))


if __name__ == "__main__":
    main()
