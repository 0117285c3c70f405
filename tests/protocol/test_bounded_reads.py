"""Per-call read consistency (DESIGN §3): ``get(key, consistency=Bounded(s))``.

A bounded read is answered by any replica that can prove its copy is at most ``s`` old:
it does not wait on a prepared key, and it is still answered by a member whose lease has
lapsed for less than ``s``.  Every reply says how stale it may be; nothing staler than
asked is ever returned.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from dds.bricks.bounded import staleness
from dds.errors import InvalidRequest, NotServing, Timeout
from dds.lib import Bounded, GetResult

from tests.sim.network import SimCluster

LEASE_S = 1.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    c = SimCluster(tmp_path, n=3, config={"timeouts": {
        "txn_deadline_ms": 20_000, "read_wait_ms": 5_000,
        "lease_ms": int(LEASE_S * 1000)}})
    yield c
    c.close()


def _prepare_everywhere(cluster: SimCluster, key: bytes) -> None:
    """A transaction every replica holds prepared, its coordinator silent."""
    for b in cluster.replicas(key):
        conn = cluster.raw(b)
        assert cluster.run(conn.call("prepare", cluster.prepare_body(
            key, (77, 1), value=b"pending", timeout_ms=10_000))) == {"version": 1}


def test_a_bounded_read_does_not_wait_on_a_prepared_key(cluster: SimCluster) -> None:
    client = cluster.client(timeout=2.0)
    assert cluster.run(client.put(b"k", b"old")) == 1
    _prepare_everywhere(cluster, b"k")
    cluster.net.advance(0.05)
    start = cluster.clock.seconds()
    got = cluster.run(client.get(b"k", consistency=Bounded(0.5)))
    assert (got.value, got.version) == (b"old", 1)
    assert 0.0 < got.stale_s <= 0.5
    assert cluster.clock.seconds() - start < 0.1
    # The linearizable read of the same key waits for the outcome, and gives up.
    assert isinstance(cluster.fail_of(client.get(b"k", timeout=0.5)), Timeout)


def test_a_bounded_read_refuses_a_copy_staler_than_its_bound(cluster: SimCluster) -> None:
    client = cluster.client(timeout=1.0)
    assert cluster.run(client.put(b"k", b"old")) == 1
    _prepare_everywhere(cluster, b"k")
    cluster.net.advance(0.6)            # the prepared key is now older than the bound
    error = cluster.fail_of(client.get(b"k", consistency=Bounded(0.5)))
    assert isinstance(error, Timeout) and "staleness" in error.message
    got = cluster.run(client.get(b"k", consistency=Bounded(5.0)))
    assert (got.value, got.version) == (b"old", 1) and 0.6 <= got.stale_s <= 5.0


def test_a_member_whose_lease_lapsed_answers_within_the_bound_only(
        cluster: SimCluster) -> None:
    client = cluster.client()
    assert cluster.run(client.put(b"k", b"v")) == 1
    cluster.net.deliver_in_flight()
    cut = cluster.replicas(b"k")[0]
    conn = cluster.raw(cut)             # opened before the cut: it stays up
    others = [b.id for b in cluster.bricks if b is not cut]
    cluster.net.partition(cut.id, others)
    cluster.net.advance(3 * LEASE_S)    # its lease lapsed about two leases ago
    body = {**cluster.ref(b"k"), "key": b"k"}
    assert isinstance(cluster.fail_of(conn.call("get", body)), NotServing)
    reply = cluster.run(conn.call("bget", {**body, "max_stale_ms": 10_000}))
    assert reply["value"] == b"v" and 1_000 <= reply["stale_ms"] <= 3_000
    refused = cluster.fail_of(conn.call("bget", {**body, "max_stale_ms": 500}))
    assert isinstance(refused, NotServing) and "more than the 500 ms" in refused.message


def test_a_linearizable_read_says_it_is_not_stale(cluster: SimCluster) -> None:
    client = cluster.client()
    assert cluster.run(client.put(b"k", b"v")) == 1
    assert cluster.run(client.get(b"k", consistency="linearizable")) == GetResult(b"v", 1)


@pytest.mark.parametrize("bad", ["bounded", 0.5, Bounded(1.0).max_staleness, object()])
def test_an_unknown_consistency_is_refused_by_name(cluster: SimCluster, bad: object) -> None:
    client = cluster.client()
    error = cluster.fail_of(client.get(b"k", consistency=bad))  # type: ignore[arg-type]
    assert isinstance(error, InvalidRequest) and "Bounded(seconds)" in error.message


@pytest.mark.parametrize("bad", [0, -1, 3601, float("nan"), "1"])
def test_a_bound_outside_its_range_is_refused(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="max_staleness"):
        Bounded(bad)  # type: ignore[arg-type]


def test_staleness_is_the_larger_of_the_lapsed_lease_and_the_prepared_key() -> None:
    assert staleness(10.0, 12.0, None) == 0.0          # lease valid, nothing prepared
    assert staleness(10.0, 9.0, None) == 1.0           # lease ended a second ago
    assert staleness(10.0, 12.0, 9.5) == 0.5           # prepared half a second ago
    assert staleness(10.0, 8.0, 9.5) == 2.0
    assert math.isinf(staleness(10.0, None, None))     # never held a lease
