"""Counters, gauges and latency histograms, exported through ``prometheus_client``.

Every metric is declared in ``dds.metricdefs`` (type, help, labels).  Call sites stay
short: ``metrics.inc("commits")`` (or today's ``"commits_total"``),
``metrics.inc("requests", type="get")``, ``metrics.observe("request_seconds", dt,
type="get")``, ``metrics.gauge("locks_held", fn)``.  A name that is not declared, or the
wrong labels, raises ``KeyError`` at the call.

Values are plain Python numbers held here and turned into metric families at scrape
time by a ``prometheus_client`` collector: a brick counts on its reactor thread only,
and a ``prometheus_client.Counter`` (a lock per value) would cost several microseconds
on the hottest path, the cached read.  Each registry holds each catalogue once: a brick
gets a registry of its own (several bricks run in one test process), the library
shares the one its service chooses.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from typing import Any, Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from dds.metricdefs import BRICK, Catalogue, MetricDef
from dds.version import VERSION

__all__ = ["Count", "Histogram", "Metrics"]

class Count:
    """One counter series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, n: float = 1) -> None:
        self.value += n


class Histogram:
    """One histogram series: a count per bucket (the last one is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


Series = Count | Histogram
Labels = tuple[str, ...]


class _Store:
    """The values of one catalogue in one registry, and the collector that exports them
    (every declared metric, with its zero series from the start)."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.series: dict[str, dict[Labels, Series]] = {}
        self.callbacks: dict[str, dict[Labels, Callable[[], float]]] = {}
        for d in catalogue.defs.values():
            if d.callback:
                self.callbacks[d.name] = {}
                continue
            self.series[d.name] = {}
            for values in (d.initial if d.labels else ((),)):
                self.get(d, values)

    def get(self, d: MetricDef, values: Labels) -> Series:
        series = self.series[d.name]
        s = series.get(values)
        if s is None:
            s = series[values] = Histogram(d.buckets) if d.kind == "histogram" else Count()
        return s

    def describe(self) -> Iterator[Metric]:
        return self._families(samples=False)

    def collect(self) -> Iterator[Metric]:
        return self._families(samples=True)

    def _families(self, samples: bool) -> Iterator[Metric]:
        prefix = self.catalogue.prefix
        for d in self.catalogue.defs.values():
            name, labels = f"{prefix}_{d.name}", list(d.labels)
            if d.kind == "histogram":
                h = HistogramMetricFamily(name, d.help, labels=labels)
                for values, s in sorted(self.series[d.name].items()) if samples else ():
                    assert isinstance(s, Histogram)
                    h.add_metric(list(values), _buckets(s), s.sum)
                yield h
                continue
            family = (CounterMetricFamily(name, d.help, labels=labels) if d.kind == "counter"
                      else GaugeMetricFamily(name, d.help, labels=labels))
            if samples:
                for values, v in sorted(_values(self, d).items()):
                    family.add_metric(list(values), v)
            yield family


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, n in zip(h.bounds + (float("inf"),), h.counts):
        total += n
        out.append((floatToGoString(bound), float(total)))
    return out


def _values(store: _Store, d: MetricDef) -> dict[Labels, float]:
    """A counter's or a gauge's series and their values now."""
    if d.callback:
        return {values: float(fn()) for values, fn in store.callbacks[d.name].items()}
    out: dict[Labels, float] = {}
    for values, s in store.series[d.name].items():
        out[values] = float(s.count if isinstance(s, Histogram) else s.value)
    return out


#: Each registry holds each catalogue once (the library's clients share their service's).
_STORES: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Store]] = (
    weakref.WeakKeyDictionary())


def _store(catalogue: Catalogue, registry: CollectorRegistry) -> _Store:
    stores = _STORES.setdefault(registry, {})
    store = stores.get(catalogue.prefix)
    if store is None:
        store = stores[catalogue.prefix] = _Store(catalogue)
        registry.register(store)
    return store


class Metrics:
    """The metrics of a brick (``BRICK``, a registry of its own, process metrics) or of
    the library (``CLIENT``, in the registry its service chooses)."""

    def __init__(self, catalogue: Catalogue = BRICK,
                 registry: CollectorRegistry | None = None, *, process: bool = False) -> None:
        """``registry``: where to count (None: a registry of its own, made when first
        asked for, as most connections' own metrics never are); ``process``: with the
        process collectors (a brick's)."""
        self.catalogue = catalogue
        self._process = process
        self._registry = registry
        self._store = _store(catalogue, registry) if registry is not None else _Store(catalogue)
        if registry is not None:
            self._add_collectors(registry)
        self._handles: dict[Any, Series] = {}
        if "build_info" in catalogue.defs:
            self.gauge("build_info", lambda: 1.0, version=VERSION)

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            self._registry = CollectorRegistry()
            _STORES[self._registry] = {self.catalogue.prefix: self._store}
            self._registry.register(self._store)
            self._add_collectors(self._registry)
        return self._registry

    def _add_collectors(self, registry: CollectorRegistry) -> None:
        if self._process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)

    # -- counting ------------------------------------------------------------------------

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        """Add ``n`` (default 1) to a counter."""
        key = (name, tuple(labels.items())) if labels else name
        s = self._handles.get(key)
        if s is None:
            s = self._handles[key] = self._resolve(name, labels, "counter")
        if n < 0:
            raise ValueError(f"counter {name!r} cannot decrease (by {n})")
        s.value += n                                           # type: ignore[union-attr]

    def observe(self, name: str, value: float, **labels: str) -> None:
        """One observation (seconds, for ``*_seconds``) of a histogram."""
        key = (name, tuple(labels.items())) if labels else name
        s = self._handles.get(key)
        if s is None:
            s = self._handles[key] = self._resolve(name, labels, "histogram")
        s.observe(value)                                       # type: ignore[union-attr]

    def counter(self, name: str, **labels: str) -> Count:
        """One counter series, to hold on a hot path: ``c.inc()``."""
        s = self._resolve(name, labels, "counter")
        assert isinstance(s, Count)
        return s

    def histogram(self, name: str, **labels: str) -> Histogram:
        """One histogram series, to hold on a hot path: ``h.observe(seconds)``."""
        s = self._resolve(name, labels, "histogram")
        assert isinstance(s, Histogram)
        return s

    def gauge(self, name: str, fn: Callable[[], float], **labels: str) -> None:
        """A value read from ``fn`` at each scrape: every gauge, and the counters the
        catalogue marks ``callback`` (kept by another part, like storage's counts)."""
        d = self.catalogue.lookup(name)
        if not d.callback:
            raise KeyError(f"metric {name!r} is a {d.kind} counted here, not read from a "
                           "function")
        self._store.callbacks[d.name][self._label_values(d, labels)] = fn

    def _resolve(self, name: str, labels: Mapping[str, str], kind: str) -> Series:
        d = self.catalogue.lookup(name)
        if d.kind != kind or d.callback:
            raise KeyError(f"metric {name!r} is a {'callback ' if d.callback else ''}"
                           f"{d.kind}, not a {kind} to count")
        return self._store.get(d, self._label_values(d, labels))

    @staticmethod
    def _label_values(d: MetricDef, labels: Mapping[str, str]) -> Labels:
        if set(labels) != set(d.labels):
            raise KeyError(f"metric {d.name!r} takes the labels {list(d.labels)}, "
                           f"not {sorted(labels)}")
        return tuple(str(labels[k]) for k in d.labels)

    # -- reading -------------------------------------------------------------------------

    def value(self, name: str, **labels: str) -> float:
        """A counter's or gauge's value (a histogram's count of observations); without
        labels, the sum over all of its series."""
        d = self.catalogue.lookup(name)
        values = _values(self._store, d) if d.kind != "histogram" else {
            k: float(s.count) for k, s in self._store.series[d.name].items()
            if isinstance(s, Histogram)}
        if labels or not d.labels:
            return values.get(self._label_values(d, labels), 0.0)
        return sum(values.values())

    @property
    def counters(self) -> Mapping[str, float]:
        """Every counter by its ``_total`` name, summed over its labels (read-only)."""
        return _CounterView(self)

    def snapshot(self) -> dict[str, float]:
        """Counters and gauges as one flat dict (the ``status`` request's ``metrics``):
        ``commits_total``, ``locks_held``, ``requests_total{type="get"}``."""
        out: dict[str, float] = {}
        for d in self.catalogue.defs.values():
            if d.kind == "histogram":
                continue
            name = f"{d.name}_total" if d.kind == "counter" else d.name
            for values, v in sorted(_values(self._store, d).items()):
                if values:
                    pairs = ",".join(f'{k}="{x}"' for k, x in zip(d.labels, values))
                    out[f"{name}{{{pairs}}}"] = v
                else:
                    out[name] = v
        return out

    def render(self) -> bytes:
        """The registry in the Prometheus text format (``/metrics``)."""
        return generate_latest(self.registry)


class _CounterView(Mapping[str, float]):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def __getitem__(self, name: str) -> float:
        if self._metrics.catalogue.lookup(name).kind != "counter":
            raise KeyError(f"{name!r} is not a counter")
        return self._metrics.value(name)

    def __iter__(self) -> Iterator[str]:
        return (f"{d.name}_total" for d in self._metrics.catalogue.defs.values()
                if d.kind == "counter")

    def __len__(self) -> int:
        return sum(1 for _ in self)
