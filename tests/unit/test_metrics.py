"""Metrics (dds.metrics, dds.metricdefs): declared names only, labels instead of names
folded together, ``# HELP`` on everything, histograms in seconds, a registry per brick
and one shared per registry for the library (issue 14, item 7)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from twisted.internet.task import Clock

from dds.errors import Unavailable
from dds.lib import DDSClient
from dds.metricdefs import BRICK, CLIENT
from dds.metrics import Metrics
from dds.version import VERSION

ROOT = Path(__file__).resolve().parents[2]


def _samples(metrics: Metrics) -> Iterator[Sample]:
    for family in text_string_to_metric_families(metrics.render().decode()):
        yield from family.samples


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    for s in _samples(metrics):
        if s.name == name and s.labels == labels:
            return float(s.value)
    return None


def test_an_undeclared_name_raises_key_error_at_the_call() -> None:
    with pytest.raises(KeyError, match="'no_such_thing_total' is not declared"):
        Metrics().inc("no_such_thing_total")


def test_a_counter_may_be_named_with_or_without_its_total_suffix() -> None:
    m = Metrics()
    m.inc("commits_total")
    m.inc("commits", 2)
    assert _sample(m, "dds_commits_total") == 3.0


def test_wrong_labels_raise_key_error_naming_the_expected_ones() -> None:
    m = Metrics()
    with pytest.raises(KeyError, match=r"takes the labels \['type'\]"):
        m.inc("requests", kind="get")
    with pytest.raises(KeyError, match=r"takes the labels \['type'\]"):
        m.inc("requests")


def test_a_counter_cannot_decrease() -> None:
    with pytest.raises(ValueError, match="cannot decrease"):
        Metrics().inc("commits", -1)


def test_a_gauge_is_not_counted_and_a_counter_is_not_set_from_a_function() -> None:
    m = Metrics()
    with pytest.raises(KeyError, match="callback gauge"):
        m.inc("locks_held")
    with pytest.raises(KeyError, match="counted here"):
        m.gauge("commits", lambda: 1.0)


def test_every_declared_metric_is_exported_from_the_start_with_help_and_type() -> None:
    text = Metrics().render().decode()
    for d in BRICK.defs.values():
        name = f"dds_{d.name}" + ("_total" if d.kind == "counter" else "")
        assert f"# HELP {name} {d.help}\n" in text, name
        assert f"# TYPE {name} {d.kind}" in text, name


def test_counters_are_exported_at_zero_before_anything_happened() -> None:
    m = Metrics()
    assert _sample(m, "dds_commits_total") == 0.0
    assert _sample(m, "dds_errors_total", code="stale_map") == 0.0
    assert _sample(m, "dds_requests_total", type="get") == 0.0


def test_a_label_value_is_a_label_not_part_of_the_name() -> None:
    m = Metrics()
    m.inc("requests", type="get")
    m.inc("errors", code="locked")
    assert _sample(m, "dds_requests_total", type="get") == 1.0
    assert _sample(m, "dds_errors_total", code="locked") == 1.0
    assert not any("requests_get" in s.name or "errors_locked" in s.name
                   for s in _samples(m))


def test_a_latency_histogram_has_cumulative_buckets_in_seconds() -> None:
    m = Metrics()
    m.observe("request_seconds", 0.0002, type="get")
    m.histogram("request_seconds", type="get").observe(0.003)
    assert _sample(m, "dds_request_seconds_bucket", type="get", le="0.0001") == 0.0
    assert _sample(m, "dds_request_seconds_bucket", type="get", le="0.00025") == 1.0
    assert _sample(m, "dds_request_seconds_bucket", type="get", le="0.005") == 2.0
    assert _sample(m, "dds_request_seconds_bucket", type="get", le="+Inf") == 2.0
    assert _sample(m, "dds_request_seconds_count", type="get") == 2.0
    assert _sample(m, "dds_request_seconds_sum", type="get") == pytest.approx(0.0032)


def test_a_gauge_is_read_from_its_function_at_each_scrape() -> None:
    m = Metrics()
    held = [2]
    m.gauge("locks_held", lambda: held[0])
    assert _sample(m, "dds_locks_held") == 2.0
    held[0] = 5
    assert _sample(m, "dds_locks_held") == 5.0


def test_build_info_names_the_version() -> None:
    assert _sample(Metrics(), "dds_build_info", version=VERSION) == 1.0


def test_a_brick_registry_carries_the_process_metrics() -> None:
    names = {s.name for s in _samples(Metrics(process=True))}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
            "python_info"} <= names


def test_each_brick_counts_in_a_registry_of_its_own() -> None:
    a, b = Metrics(), Metrics()
    a.inc("commits")
    assert a.registry is not b.registry
    assert (a.value("commits"), b.value("commits")) == (1.0, 0.0)


def test_two_metrics_on_one_registry_share_their_series() -> None:
    registry = CollectorRegistry()
    a, b = Metrics(CLIENT, registry), Metrics(CLIENT, registry)
    a.inc("write_retries")
    b.inc("write_retries")
    assert _sample(a, "dds_client_write_retries_total") == 2.0


def test_the_counters_view_is_read_only_and_sums_over_labels() -> None:
    m = Metrics()
    m.inc("requests", type="get")
    m.inc("requests", type="prepare")
    assert m.counters["requests_total"] == 2.0
    with pytest.raises(TypeError):
        m.counters["requests_total"] += 1       # type: ignore[index]


def test_the_status_snapshot_names_each_series() -> None:
    m = Metrics()
    m.inc("requests", type="get")
    m.gauge("locks_held", lambda: 4)
    snap = m.snapshot()
    assert snap['requests_total{type="get"}'] == 1.0
    assert snap["locks_held"] == 4.0 and snap["commits_total"] == 0.0


# -- the library -------------------------------------------------------------------------

async def _refused(reactor: Any, host: str, port: int, **options: Any) -> Any:
    raise Unavailable(f"cannot connect to {host}:{port}: ECONNREFUSED")


def _client(**options: Any) -> DDSClient:
    return DDSClient(Clock(), ["127.0.0.1:7401"], cluster="dds", secret=b"s",
                     opener=_refused, **options)


def _get_count(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value("dds_client_request_seconds_count", {"op": "get"})
    return 0.0 if value is None else value


def test_two_library_clients_share_the_global_registry() -> None:
    before = _get_count(REGISTRY)
    a, b = _client(), _client()
    a.get("not bytes").addErrback(lambda _: None)   # type: ignore[arg-type]
    b.get("not bytes").addErrback(lambda _: None)   # type: ignore[arg-type]
    assert a.metrics.registry is REGISTRY is b.metrics.registry
    assert _get_count(REGISTRY) == before + 2


def test_a_library_call_is_timed_in_the_registry_the_service_chose() -> None:
    registry = CollectorRegistry()
    before = _get_count(REGISTRY)
    client = _client(metrics_registry=registry)
    client.put(b"k", "not bytes").addErrback(lambda _: None)  # type: ignore[arg-type]
    client.get(b"k" * 2000).addErrback(lambda _: None)
    assert registry.get_sample_value("dds_client_request_seconds_count",
                                     {"op": "put"}) == 1.0
    assert _get_count(registry) == 1.0 and _get_count(REGISTRY) == before


def test_a_library_client_without_a_registry_exports_nothing() -> None:
    before = _get_count(REGISTRY)
    client = _client(metrics_registry=None)
    client.get(b"k" * 2000).addErrback(lambda _: None)
    assert client.metrics.registry is not REGISTRY
    assert client.metrics.value("request_seconds", op="get") == 1.0
    assert _get_count(REGISTRY) == before


# -- the catalogue is complete -----------------------------------------------------------

_CALLS = {"inc": "counter", "observe": "histogram", "gauge": "gauge", "counter": "counter",
          "histogram": "histogram"}


def _literal_names(node: ast.expr) -> Iterator[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _literal_names(node.body)
        yield from _literal_names(node.orelse)


def _metric_calls(folder: str) -> Iterator[tuple[str, str, ast.expr]]:
    """(file:line, method, first argument) of every ``….metrics.inc(…)`` and the like."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _CALLS and node.args):
                owner = node.func.value
                name = (owner.attr if isinstance(owner, ast.Attribute)
                        else owner.id if isinstance(owner, ast.Name) else "")
                if name == "metrics":
                    yield f"{path.name}:{node.lineno}", node.func.attr, node.args[0]


@pytest.mark.parametrize("folder,catalogue", [("bricks", BRICK), ("dds", BRICK),
                                              ("dds", CLIENT), ("lib", CLIENT)])
def test_every_metric_name_in_the_source_is_declared(folder: str, catalogue: Any) -> None:
    calls = list(_metric_calls(folder))
    assert calls, f"no metric calls found in {folder}/"
    undeclared = []
    for where, _method, arg in calls:
        for name in _literal_names(arg):
            try:
                catalogue.lookup(name)
            except KeyError:
                undeclared.append(f"{where} {name}")
    assert undeclared == []


def test_every_brick_metric_is_listed_in_the_operations_guide() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    missing = [d.name for d in BRICK.defs.values()
               if f"`dds_{d.name}{'_total' if d.kind == 'counter' else ''}`" not in guide]
    assert missing == []
