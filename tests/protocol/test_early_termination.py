"""A prepared key that someone wants is settled early, not at the transaction's deadline.

Parallel commit (DESIGN §4) reports a write done at the last YES vote; a member that then
misses its COMMIT holds the key prepared, and reads of the key wait.  A member whose key
is wanted (by a read or by another PREPARE) asks the others early: one that committed
settles it.  When the coordinator's connection is gone, the members decide among
themselves at once, "all prepared → commit" included.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dds import failpoints
from dds.bricks.partstore import ReadResult
from dds.errors import Indeterminate
from dds.lib import GetResult

from tests.sim.network import SimCluster

#: Far away, so that anything settled within a second was settled early.
TXN_DEADLINE_S = 8.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    c = SimCluster(tmp_path, n=3, config={
        "timeouts": {"txn_deadline_ms": int(TXN_DEADLINE_S * 1000)},
        "brick": {"allow_failpoints": True}})
    yield c
    failpoints.clear()
    c.close()


def test_a_read_at_a_member_that_missed_its_commit_learns_it_in_well_under_a_second(
        cluster: SimCluster) -> None:
    writer = cluster.client(timeout=10.0)
    failpoints.arm("commit.before_apply", "count:1:error")     # one member's COMMIT lost
    assert cluster.run(writer.put(b"k", b"new")) == 1
    failpoints.clear()
    cluster.net.deliver_in_flight()
    stuck = [b for b in cluster.replicas(b"k") if len(b.locks)]
    assert len(stuck) == 1                  # it holds the key prepared, readers wait
    cluster.net.advance(0.2)
    start = cluster.clock.seconds()
    body = {**cluster.ref(b"k"), "key": b"k"}
    assert cluster.run(cluster.raw(stuck[0]).call("get", body)) == \
        {"value": b"new", "version": 1}
    assert cluster.clock.seconds() - start < 1.0
    assert stuck[0].metrics.counters["txn_early_asks_total"] >= 1
    assert set(cluster.read(b"k").values()) == {ReadResult(b"new", 1)}


def test_an_early_question_changes_nothing_while_nobody_has_decided(
        cluster: SimCluster) -> None:
    """A peek at a transaction every member holds prepared, whose coordinator is still
    connected, decides nothing: that coordinator may still abort it."""
    writer = cluster.client(timeout=10.0)
    failpoints.arm("coordinator.after_prepare", "error")      # votes in, no decision sent
    assert isinstance(cluster.fail_of(writer.put(b"k", b"maybe")), Indeterminate)
    failpoints.clear()
    cluster.net.advance(0.2)
    reader = cluster.client(timeout=0.5)
    cluster.fail_of(reader.get(b"k"))       # waits, asks early, learns nothing
    replicas = cluster.replicas(b"k")
    assert sum(b.metrics.counters["txn_early_asks_total"] for b in replicas) >= 1
    assert all(len(b.locks) == 1 for b in replicas)
    assert set(cluster.read(b"k").values()) == {ReadResult(None, 0)}


def test_a_dead_coordinators_key_is_writable_again_within_a_second(
        cluster: SimCluster) -> None:
    doomed = cluster.client(timeout=10.0)
    failpoints.arm("coordinator.after_prepare", "error")      # votes in, then it dies
    assert isinstance(cluster.fail_of(doomed.put(b"k", b"first")), Indeterminate)
    failpoints.clear()
    cluster.run(doomed.close())
    cluster.net.advance(0.2)
    other = cluster.client(timeout=10.0)
    start = cluster.clock.seconds()
    assert cluster.run(other.put(b"k", b"second")) == 2     # "first" committed as v1
    assert cluster.clock.seconds() - start < 1.0
    assert cluster.run(other.get(b"k")) == GetResult(b"second", 2)


def test_a_peek_at_a_transaction_never_prepared_records_nothing(cluster: SimCluster) -> None:
    """A full termination query records an unknown transaction as aborted (a late
    PREPARE is refused); a peek must not, or an early question would abort writes whose
    PREPARE is still on its way."""
    member = cluster.replicas(b"k")[0]
    conn = cluster.raw(member)
    assert cluster.run(conn.call("txn_state", {"txid": [9, 9], "peek": True})) == \
        {"state": "unknown"}
    assert cluster.run(conn.call("prepare", cluster.prepare_body(b"k", (9, 9)))) == \
        {"version": 0}
    assert cluster.run(conn.call("txn_state", {"txid": [9, 9], "peek": True})) == \
        {"state": "prepared"}
    assert not member.participant.active[(9, 9)].queried     # no fence from a peek
