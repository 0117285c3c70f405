"""A PREPARE names its participants, and termination asks exactly them (DESIGN §4).

The participants are the RG's active members the coordinator sent the PREPARE to.  A
member checks the list against its record before it holds anything, records it with the
vote, and asks those members (still active) when it must terminate the transaction: not a
member that joined since, which never saw the PREPARE and would answer "aborted".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dds.bricks.participant import TxnState
from dds.bricks.partstore import ReadResult
from dds.bricks.termination import TXN_STATE_TIMEOUT_S
from dds.errors import InvalidRequest

from tests.sim.network import SimCluster

KEY = b"participants"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    c = SimCluster(tmp_path, n=3, config={"timeouts": {"txn_deadline_ms": 10_000}})
    yield c
    c.close()


def _prepare(cluster: SimCluster, brick: object, txid: tuple[int, int]) -> object:
    conn = cluster.raw(brick)
    try:
        return cluster.run(conn.call("prepare", cluster.prepare_body(KEY, txid, value=b"new")))
    finally:
        conn.close()


def _resolve(cluster: SimCluster, brick: object, txid: tuple[int, int]) -> dict[str, object]:
    conn = cluster.raw(brick)
    try:
        reply = cluster.run(conn.call("resolve", {"txid": list(txid), "force": True}))
    finally:
        conn.close()
    [one] = reply["resolved"]
    return dict(one)


def test_a_prepare_records_its_participants_with_the_vote(cluster: SimCluster) -> None:
    members = cluster.replicas(KEY)
    assert _prepare(cluster, members[0], (5, 1)) == {"version": 0}
    txn = members[0].participant.active[(5, 1)]
    assert txn.participants == tuple(b.id for b in members)
    (rec,) = members[0].storage.prepared()
    assert rec.participants == txn.participants


def test_a_prepare_naming_other_participants_is_refused_and_holds_nothing(
        cluster: SimCluster) -> None:
    member = cluster.replicas(KEY)[0]
    body = cluster.prepare_body(KEY, (5, 2))
    body["participants"] = [member.id, "b-stranger"]
    conn = cluster.raw(member)
    error = cluster.fail_of(conn.call("prepare", body))
    assert isinstance(error, InvalidRequest)
    assert "participants" in error.message and "b-stranger" in error.message
    assert member.participant.state_of((5, 2)) is None
    assert member.locks.holder((cluster.pid(KEY), KEY)) is None
    assert member.storage.prepared() == []


@pytest.mark.parametrize("bad", [["b1", "b1"], "b1", [1, 2], ["b%d" % i for i in range(17)]])
def test_a_malformed_participant_list_is_refused_by_name(cluster: SimCluster,
                                                         bad: object) -> None:
    member = cluster.replicas(KEY)[0]
    body = {**cluster.prepare_body(KEY, (5, 3)), "participants": bad}
    error = cluster.fail_of(cluster.raw(member).call("prepare", body))
    assert isinstance(error, InvalidRequest) and "participants" in error.message
    assert member.participant.state_of((5, 3)) is None


def test_a_prepare_from_a_library_without_the_list_records_the_rg_members(
        cluster: SimCluster) -> None:
    members = cluster.replicas(KEY)
    body = cluster.prepare_body(KEY, (5, 4))
    del body["participants"]
    assert cluster.run(cluster.raw(members[0]).call("prepare", body)) == {"version": 0}
    assert members[0].participant.active[(5, 4)].participants == \
        tuple(b.id for b in members)


def test_termination_counts_a_member_readmitted_since_the_prepare(
        cluster: SimCluster) -> None:
    """The ci fault profile's divergence (seed 299961328, session 10).  b0 prepared the
    transaction; its other participant b1 never did (the coordinator aborted, its ABORT
    to b0 was lost) and is now cut off; b2 stands for a member readmitted since, whose
    copy came from b1 and so lacks the write.  Asking only the participants, b0 found
    nobody to ask and committed by "every member prepared": b2 never got the write.
    b2 is asked, answers from its data, and the transaction is aborted."""
    b0, b1, b2 = cluster.replicas(KEY)
    assert _prepare(cluster, b0, (5, 5)) == {"version": 0}
    b0.participant.active[(5, 5)].participants = (b0.id, b1.id)
    cluster.net.pause(b1.id, stop_process=True)
    result = _resolve(cluster, b0, (5, 5))
    assert result["decision"] == "abort", result
    assert b2.participant.state_of((5, 5)) is TxnState.ABORTED   # asked, and answered
    assert b0.storage.read(cluster.pid(KEY), KEY) == ReadResult(None, 0)


def test_a_readmitted_member_whose_copy_holds_the_write_makes_termination_commit(
        cluster: SimCluster) -> None:
    """b1 committed and b2 was readmitted from it (its copy holds the write, at the
    transaction's version); b1 is now cut off.  b2 answers "committed" from its data."""
    b0, b1, b2 = cluster.replicas(KEY)
    assert _prepare(cluster, b0, (5, 7)) == {"version": 0}
    b0.participant.active[(5, 7)].participants = (b0.id, b1.id)
    b2.storage.write(cluster.pid(KEY), KEY, b"new", 1)
    cluster.clock.advance(0)
    cluster.net.pause(b1.id, stop_process=True)
    result = _resolve(cluster, b0, (5, 7))
    assert result["decision"] == "commit", result
    assert b0.storage.read(cluster.pid(KEY), KEY) == ReadResult(b"new", 1)


def test_termination_asks_the_participants_at_once(cluster: SimCluster) -> None:
    """Two members that do not answer (stopped processes) cost one query timeout, not
    one each."""
    b0, b1, b2 = cluster.replicas(KEY)
    assert _prepare(cluster, b0, (5, 6)) == {"version": 0}
    for b in (b1, b2):
        cluster.net.pause(b.id, stop_process=True)
    start = cluster.clock.seconds()
    result = _resolve(cluster, b0, (5, 6))
    elapsed = cluster.clock.seconds() - start       # simulated time: deterministic
    assert result["decision"] == "in-doubt"
    assert result["states"] == ["unreachable", "unreachable"]
    assert TXN_STATE_TIMEOUT_S - 1e-6 <= elapsed < 2 * TXN_STATE_TIMEOUT_S, elapsed
    assert b0.participant.state_of((5, 6)) is TxnState.PREPARED
