"""The pure measurements the benches share: percentiles, and the write pauses ("gaps")
of sequential writers that ``bench recovery`` and ``bench move`` are judged by.

A writer process keeps one :class:`PutLog` per client; when the bench ends it reports,
per named window, :func:`window_report` over its clients; the bench merges the
processes' reports with :func:`merge`.  No Twisted, no rich: unit-tested as is.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs

__all__ = ["PutLog", "merge", "percentile", "window_report"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``sorted_values`` (the value at index ``q * n``, the last
    one at most); 0.0 for no values."""
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


@attrs.define
class PutLog:
    """One client's sequential puts: when each successful one ended, its latency, and
    when each failed one failed (monotonic seconds)."""
    started: float = 0.0
    stopped: float = 0.0
    ended: list[float] = attrs.Factory(list)
    lat: list[float] = attrs.Factory(list)
    errors: list[tuple[float, str]] = attrs.Factory(list)

    def window(self, a: float, b: float, extend: bool) -> dict[str, Any]:
        """Puts around [a, b]: the longest gap between consecutive successful puts from
        the last one ending before ``a`` to the first one ending after ``b`` (``extend``:
        a pause that began inside the window counts whole) or to ``b`` itself, and the
        latencies of the puts ending in between (with ``extend``, that one included)."""
        i = bisect.bisect_right(self.ended, a)
        j = bisect.bisect_right(self.ended, b)
        points = [self.ended[i - 1] if i else self.started, *self.ended[i:j]]
        if not extend:
            points.append(b)
        else:
            points.append(self.ended[j] if j < len(self.ended) else self.stopped)
        gaps = [(y - x, y) for x, y in zip(points, points[1:])]
        gap, gap_end = max(gaps, default=(0.0, a))
        last = min(j + 1, len(self.ended)) if extend else j
        return {"max_gap_s": gap, "max_gap_end_s": gap_end - a, "lat": self.lat[i:last],
                "ops": j - i,
                "errors": Counter(code for t, code in self.errors if a <= t <= b)}


def window_report(logs: Sequence[PutLog], a: float, b: float,
                  extend: bool) -> dict[str, Any]:
    """One process's figures for the window [a, b] over its clients' logs: the longest
    gap of any client (and when it ended), every latency, the puts and errors."""
    parts = [log.window(a, b, extend) for log in logs]
    errors: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
    worst = max(parts, key=lambda p: p["max_gap_s"])
    return {"max_gap_s": worst["max_gap_s"], "max_gap_end_s": worst["max_gap_end_s"],
            "lat_s": [round(v, 6) for p in parts for v in p["lat"]],
            "ops": sum(p["ops"] for p in parts), "length_s": b - a,
            "errors": dict(errors)}


def merge(stats: Sequence[dict[str, Any]], window: str) -> dict[str, Any]:
    """The processes' reports of ``window`` as one: the longest pause of any writer,
    put latencies, puts per second over the window, errors by code."""
    parts = [s["windows"][window] for s in stats]
    lat = sorted(v for p in parts for v in p["lat_s"])
    errors: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
    length = parts[0]["length_s"] if parts else 0.0
    ops = sum(p["ops"] for p in parts)
    worst = max(parts, key=lambda p: p["max_gap_s"]) if parts else {}
    return {"max_write_pause_ms": worst.get("max_gap_s", 0.0) * 1e3,
            #: When the longest pause ended, in seconds after the window's start.
            "max_write_pause_end_s": worst.get("max_gap_end_s", 0.0),
            "max_put_ms": max(lat, default=0.0) * 1e3,
            "p50_put_ms": percentile(lat, 0.50) * 1e3,
            "p99_put_ms": percentile(lat, 0.99) * 1e3,
            "puts": ops, "put_ops_s": ops / length if length > 0 else 0.0,
            "write_errors": dict(errors)}
