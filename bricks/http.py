"""``/metrics`` (Prometheus text) and ``/healthz`` for operators and supervisors.

Neither needs a credential, so anyone who reaches the port may send to it: the port
takes no request body at all.  Twisted would read a body (into memory, or a temporary
file past 100 KB) before any resource sees the request, so a 300 MiB POST would be
written to disk only to be answered 405.  Here the channel looks at the headers and,
for any request that announces a body (``Content-Length`` above 0, or chunked), answers
at once (413, or 405 for a method other than GET and HEAD) and closes the connection:
not a byte of the body is read.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.web.http import HTTPChannel, HTTPFactory, _GenericHTTPChannelProtocol
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from dds.metrics import Metrics


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.metrics.registry)


class _Health(Resource):
    isLeaf = True

    def __init__(self, health: Callable[[], dict[str, object]]) -> None:
        super().__init__()
        self.health = health

    def render_GET(self, request: Request) -> bytes:
        state = self.health()
        request.setResponseCode(200 if state.get("ok") else 503)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(state).encode()


def make_site(metrics: Metrics, health: Callable[[], dict[str, object]],
              reactor: Any = None) -> Site:
    """The HTTP port's site (``reactor``: the global one unless given, as in tests)."""
    root = Resource()
    root.putChild(b"metrics", _Metrics(metrics))
    root.putChild(b"healthz", _Health(health))
    return _QuietSite(root, reactor=reactor)


class BodylessChannel(HTTPChannel):
    """An HTTP channel that refuses every request with a body before reading it."""

    _refused = False

    def allHeadersReceived(self) -> None:
        # self.length: the Content-Length, None when chunked, 0 without a body.
        if self.length == 0:
            super().allHeadersReceived()
            return
        method = self._command
        if method in (b"GET", b"HEAD"):
            head, body = b"413 Content Too Large", b"this port takes no request body\n"
        else:
            head, body = (b"405 Method Not Allowed\r\nAllow: GET, HEAD",
                          b"only GET and HEAD are served\n")
        self._refused = True
        transport = self.transport
        if transport is None:
            return
        # Not through a Request: it would wait for the body.  No "100 Continue" either.
        transport.write(b"HTTP/1.1 " + head + b"\r\n"
                        b"Content-Type: text/plain\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
                        b"Connection: close\r\n\r\n" + (b"" if method == b"HEAD" else body))
        # Stops reading too: the rest of the body stays in the kernel until the close.
        self.loseConnection()

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            return            # the body of a refused request: dropped unread
        super().rawDataReceived(data)


def _bodyless_protocol(factory: HTTPFactory) -> _GenericHTTPChannelProtocol:
    """``HTTPFactory.protocol``: Twisted's own wrapper around :class:`BodylessChannel`."""
    return _GenericHTTPChannelProtocol(BodylessChannel())


class _QuietSite(Site):
    """No access-log line per scrape: the metrics are the record.  Request bodies are
    refused unread (:class:`BodylessChannel`)."""

    noisy = False
    protocol = _bodyless_protocol

    def log(self, request: Any) -> None:
        pass
