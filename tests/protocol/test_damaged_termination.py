"""A replica that needs a copy never answers a termination query with a guess.

Its file or its transaction log was damaged, so it may have lost a YES vote.  "Never
prepared here, so aborted" could then undo a write its client was told succeeded
(parallel commit reports success at the last YES).  It answers ``ReplicaDamaged``, which
the asking member treats as unreachable: excluded, then decided among the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dds.errors import ReplicaDamaged

from tests.sim.network import SimCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    c = SimCluster(tmp_path, n=3)
    yield c
    c.close()


def query(cluster: SimCluster, key: bytes, txid: list[int], peek: bool = False
          ) -> dict[str, Any]:
    body = cluster.prepare_body(key, tuple(txid))
    return {"txid": txid, "pid": body["pid"], "key": key, "new_version": 1, "peek": peek}


def test_a_damaged_replica_refuses_to_answer_for_a_transaction_it_does_not_know(
        cluster: SimCluster) -> None:
    member = cluster.replicas(b"k")[0]
    q = query(cluster, b"k", [9, 1])
    member.damage.damaged[q["pid"]] = "the transaction log was damaged (test)"
    failure = cluster.fail_of(cluster.raw(member).call("txn_state", q))
    assert isinstance(failure, ReplicaDamaged)
    assert "transaction log was damaged" in failure.message
    assert member.participant.state_of((9, 1)) is None     # nothing recorded either


def test_a_sound_replica_records_an_unknown_transaction_as_aborted(
        cluster: SimCluster) -> None:
    member = cluster.replicas(b"k")[0]
    conn = cluster.raw(member)
    assert cluster.run(conn.call("txn_state", query(cluster, b"k", [9, 2]))) == \
        {"state": "aborted"}


def test_a_damaged_replica_still_answers_a_peek(cluster: SimCluster) -> None:
    member = cluster.replicas(b"k")[0]
    q = query(cluster, b"k", [9, 3], peek=True)
    member.damage.damaged[q["pid"]] = "its file was unreadable (test)"
    assert cluster.run(cluster.raw(member).call("txn_state", q)) == {"state": "unknown"}


def test_a_transaction_a_damaged_member_cannot_vouch_for_commits_at_the_deadline(
        tmp_path: Path) -> None:
    """Votes in, no decision sent; then one member's replica is found damaged (its vote
    lost with it).  At the deadline the others count it as prepared and commit: none of
    them saw an abort, so no client was told the write failed, and it may have been told
    it succeeded.  Before this rule the RG waited for the damaged member for good."""
    from dds import failpoints
    from dds.errors import Indeterminate

    c = SimCluster(tmp_path, n=3, config={"timeouts": {"txn_deadline_ms": 2000},
                                          "brick": {"allow_failpoints": True}})
    try:
        writer = c.client(timeout=10.0)
        failpoints.arm("coordinator.after_prepare", "error")   # votes in, then it dies
        assert isinstance(c.fail_of(writer.put(b"k", b"maybe")), Indeterminate)
        failpoints.clear()
        c.run(writer.close())
        damaged, *sound = c.replicas(b"k")
        pid = str(c.pid(b"k"))
        damaged.damage.damaged[pid] = "the transaction log was damaged (test)"
        for txid, txn in list(damaged.participant.active.items()):     # its vote is gone
            del damaged.participant.active[txid]
            damaged.locks.release(txn.lock_key, txid)
        c.net.advance(25.0)             # past the members' deadline (20 s here)
        for b in sound:
            assert b.participant.active == {}
        assert {c.read(b"k")[b.id].version for b in sound} == {1}
    finally:
        failpoints.clear()
        c.close()
