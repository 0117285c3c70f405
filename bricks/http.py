"""``/metrics`` (Prometheus text) and ``/healthz`` for operators and supervisors."""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from dds.metrics import Metrics


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4")
        return self.metrics.render().encode()


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


def make_site(metrics: Metrics, health: Callable[[], dict[str, object]]) -> Site:
    root = Resource()
    root.putChild(b"metrics", _Metrics(metrics))
    root.putChild(b"healthz", _Health(health))
    return _QuietSite(root)


class _QuietSite(Site):
    """No access-log line per scrape: the metrics are the record."""

    noisy = False

    def log(self, request: Any) -> None:
        pass
