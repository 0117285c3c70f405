"""A real brick's ``/metrics`` (issue 14, item 7): every metric the operations guide lists
is there from the start with its help text, and requests are counted and timed by type,
errors by code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor

from dds.errors import Exists

from tests.harness.cluster import Cluster

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _documented_brick_metrics() -> list[str]:
    """The names in the first column of the guide's metric tables, but the library's."""
    text = GUIDE.read_text()
    section = text[text.index("## Logs and metrics"):]
    end = section.find("\n## ", 1)
    section = section if end < 0 else section[:end]
    names = re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE)
    return [n for n in names if not n.startswith("dds_client_")]


@pytest.fixture
def brick(cluster_factory: Any) -> Cluster:
    """One brick, in TLS mode (so the certificate's expiry gauge exists), no map yet."""
    made: Cluster = cluster_factory(bricks=1, replication=1, partitions=1, tls=True)
    return made


def test_every_metric_in_the_operations_guide_is_on_a_fresh_bricks_metrics(brick: Cluster
                                                                            ) -> None:
    documented = _documented_brick_metrics()
    assert len(documented) > 50 and "dds_requests_total" in documented
    helped, sampled = set(), set()
    for family in text_string_to_metric_families(brick.metrics_text("b1")):
        for sample in family.samples:
            if family.documentation:
                helped.add(sample.name)
            sampled.add(sample.name)
            if family.type == "histogram":
                sampled.add(family.name)
                helped.add(family.name)
    assert [n for n in documented if n not in sampled] == []
    assert [n for n in documented if n not in helped] == []


@pytest_twisted.ensureDeferred
async def test_requests_are_counted_and_timed_by_type_and_errors_by_code(brick: Cluster
                                                                         ) -> None:
    await brick.init(reactor)
    client = await brick.client(reactor)
    try:
        await client.create(b"k", b"v")
        with pytest.raises(Exists):
            await client.create(b"k", b"again")
        assert (await client.get(b"k")).value == b"v"
    finally:
        await client.close()
    gets = brick.metric("b1", "requests_total", type="get")
    assert gets >= 1
    assert brick.metric("b1", "request_seconds_count", type="get") == gets
    assert brick.metric("b1", "request_seconds_sum", type="get") > 0
    assert brick.metric("b1", "requests_total", type="prepare") >= 2
    assert brick.metric("b1", "errors_total", code="exists") >= 1


@pytest_twisted.ensureDeferred
async def test_the_library_times_each_call_once_by_operation(brick: Cluster) -> None:
    await brick.init(reactor)
    registry = CollectorRegistry()
    client = await brick.client(reactor, metrics_registry=registry)
    try:
        await client.put(b"k", b"v")
        for _ in range(3):              # the first may take the general path, then fast
            assert (await client.get(b"k")).value == b"v"
    finally:
        await client.close()

    def count(op: str) -> float | None:
        return registry.get_sample_value("dds_client_request_seconds_count", {"op": op})
    assert (count("put"), count("get"), count("remove")) == (1.0, 3.0, 0.0)
    assert registry.get_sample_value("dds_client_request_seconds_sum", {"op": "get"}) > 0
