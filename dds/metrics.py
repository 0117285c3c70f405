"""Counters and gauges, rendered in the Prometheus text format for ``/metrics``."""

from __future__ import annotations

from collections import Counter
from typing import Callable


class Metrics:
    """A flat registry: ``inc("dds_frames_malformed_total")``; gauges are callables."""

    def __init__(self, prefix: str = "dds") -> None:
        self.prefix = prefix
        self.counters: Counter[str] = Counter()
        self._gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def gauge(self, name: str, fn: Callable[[], float]) -> None:
        self._gauges[name] = fn

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = dict(self.counters)
        for name, fn in self._gauges.items():
            out[name] = fn()
        return out

    def render(self) -> str:
        lines = []
        for name, value in sorted(self.snapshot().items()):
            full = f"{self.prefix}_{name}"
            kind = "counter" if name in self.counters else "gauge"
            lines.append(f"# TYPE {full} {kind}")
            lines.append(f"{full} {value}")
        return "\n".join(lines) + "\n"
