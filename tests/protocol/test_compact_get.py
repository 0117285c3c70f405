"""The compact read (``g``, DESIGN §10 as amended in docs/architecture.md): ``Get``'s
fields by position, answered ``[value, version]``, checked exactly like ``get``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dds.errors import InvalidRequest, StaleMap
from dds.lib.client import DDSClient, GetResult
from dds.messages import GET_COMPACT
from dds.rpc import RPCProtocol
from tests.sim.network import SimCluster

READ_WAIT_S = 1.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    c = SimCluster(tmp_path, n=3, config={"timeouts": {
        "read_wait_ms": int(READ_WAIT_S * 1000)}})
    yield c
    c.close()


@pytest.fixture
def client(cluster: SimCluster) -> DDSClient:
    return cluster.client()


def compact(cluster: SimCluster, key: bytes, **override: Any) -> list[Any]:
    ref = {**cluster.ref(key), **override}
    return [ref["pid"], ref["rg"], ref["rg_version"], ref["rg_fp"], key]


def test_a_compact_read_answers_value_and_version(cluster: SimCluster,
                                                  client: DDSClient) -> None:
    assert cluster.run(client.put(b"k", b"v")) == 1
    conn = cluster.raw(cluster.replicas(b"k")[0])
    assert GET_COMPACT in conn.peer_features
    assert cluster.run(conn.call(GET_COMPACT, compact(cluster, b"k"))) == [b"v", 1]
    assert cluster.run(conn.call(GET_COMPACT, compact(cluster, b"never"))) == [None, 0]


def test_the_library_reads_compactly_from_a_brick_that_offers_it(
        cluster: SimCluster, client: DDSClient) -> None:
    assert cluster.run(client.put(b"k", b"v")) == 1
    before = sum(b.metrics.value("requests", type="get") for b in cluster.bricks)
    assert cluster.run(client.get(b"k")) == GetResult(b"v", 1)
    assert sum(b.metrics.value("requests", type="get") for b in cluster.bricks) == before + 1


@pytest.mark.parametrize("body", [
    {"pid": "p2.0"},                                  # a map, not a list
    ["p2.0", "rg0", 1, 0],                            # four fields
    ["p2.0", "rg0", "one", 0, b"k"],                  # a version that is not an int
    ["p2.0", "rg0", 1, 0, "k"],                       # a key that is not bytes
], ids=["map", "short", "str-version", "str-key"])
def test_a_malformed_compact_read_is_refused_with_a_reason(
        cluster: SimCluster, body: Any) -> None:
    conn = cluster.raw(0)
    error = cluster.fail_of(conn.call(GET_COMPACT, body))
    assert isinstance(error, InvalidRequest) and error.message.startswith("get:")


def test_a_compact_read_by_a_stale_record_gets_stale_map(cluster: SimCluster) -> None:
    conn = cluster.raw(cluster.replicas(b"k")[0])
    stale = compact(cluster, b"k", rg_version=cluster.rg().version + 5)
    assert isinstance(cluster.fail_of(conn.call(GET_COMPACT, stale)), StaleMap)


def test_a_compact_read_of_a_prepared_key_waits_for_the_outcome(
        cluster: SimCluster, client: DDSClient) -> None:
    assert cluster.run(client.put(b"w", b"old")) == 1
    brick = cluster.replicas(b"w")[0]
    coordinator: RPCProtocol = cluster.raw(brick)
    reader = cluster.raw(brick)
    txid = (9, 1)
    assert cluster.run(coordinator.call(
        "prepare", cluster.prepare_body(b"w", txid, value=b"new"))) == {"version": 1}
    read = reader.call(GET_COMPACT, compact(cluster, b"w"))
    cluster.net.advance(READ_WAIT_S / 2)
    assert not read.called
    assert cluster.run(coordinator.call("commit", {"txid": list(txid)})) == {"version": 2}
    assert cluster.run(read) == [b"new", 2]
    assert brick.metrics.counters["reads_waited_total"] == 1
