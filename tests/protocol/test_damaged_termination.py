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
