"""In-doubt transactions on bricks (the ``txns`` and ``resolve`` admin requests), on the
memory network with a simulated clock: a coordinator that vanished after PREPARE is
stood in for by raw connections that send PREPAREs and then nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dds.bricks.participant import TxnState
from dds.bricks.partstore import ReadResult
from dds.errors import InvalidRequest, UnknownTransaction
from dds.messages import Resolve, decode_request
from dds.tools.repair import STEPS
from dds.tools.txns import key_text, txid_text
from tests.sim.network import SimCluster

TXN_DEADLINE_S = 10.0
KEY = b"in-doubt"
TXID = (42, 7)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    c = SimCluster(tmp_path, n=3, config={"timeouts": {
        "txn_deadline_ms": int(TXN_DEADLINE_S * 1000)}})
    yield c
    c.close()


def prepare_on(cluster: SimCluster, bricks: list[Any], txid: tuple[int, int] = TXID,
               value: bytes = b"new") -> None:
    """PREPARE on ``bricks`` (each votes YES), then the coordinator is gone."""
    for b in bricks:
        conn = cluster.raw(b)
        vote = cluster.run(conn.call("prepare", cluster.prepare_body(
            KEY, txid, value=value, timeout_ms=1000)))
        assert vote == {"version": 0}
        conn.close()


def admin(cluster: SimCluster, brick: Any, mtype: str, body: dict[str, Any]) -> Any:
    conn = cluster.raw(brick)
    try:
        return cluster.run(conn.call(mtype, body))
    finally:
        conn.close()


def only(reply: dict[str, Any]) -> dict[str, Any]:
    assert len(reply["resolved"]) == 1, reply
    return dict(reply["resolved"][0])


def test_txns_lists_every_active_transaction_with_its_deadline(cluster: SimCluster) -> None:
    b0 = cluster.replicas(KEY)[0]
    prepare_on(cluster, [b0])
    cluster.net.advance(3.0)
    reply = admin(cluster, b0, "txns", {})
    assert reply["brick"] == b0.id
    [t] = reply["txns"]
    assert t["txid"] == list(TXID) and t["key"] == KEY and t["op"] == "put"
    assert t["pid"] == cluster.pid(KEY) and t["state"] == "prepared"
    assert t["new_version"] == 1 and t["deadline_passed"] is False
    assert t["age_s"] == pytest.approx(3.0) and t["deadline_s"] == pytest.approx(10.0)
    assert t["due_in_s"] == pytest.approx(7.0)
    assert admin(cluster, b0, "status", {})["in_doubt"] == []
    # Nothing is due yet: a resolve without a transaction id does nothing.
    assert admin(cluster, b0, "resolve", {}) == {"brick": b0.id, "resolved": []}
    assert b0.participant.state_of(TXID) is TxnState.PREPARED


def test_a_transaction_in_doubt_for_an_unreachable_member_is_resolved_on_request(
        cluster: SimCluster) -> None:
    members = cluster.replicas(KEY)
    b0, b1, b2 = members
    prepare_on(cluster, members)
    # b0 cannot talk to the other members: its terminations stay in doubt (it can
    # neither ask them nor gather the votes to exclude them), while b1 and b2 exclude b0
    # and decide among themselves (DESIGN §4).
    cluster.net.partition(b0.id, [b1.id, b2.id])
    # The deadline, a query that times out (2 s), the wait for b0's lease grants to lapse.
    cluster.net.advance(TXN_DEADLINE_S + 8.0)
    [t] = admin(cluster, b0, "txns", {})["txns"]
    assert t["state"] == "prepared" and t["deadline_passed"] is True
    assert admin(cluster, b0, "status", {})["in_doubt"] == [list(TXID)]
    txn = b0.participant.active[TXID]
    assert txn.timer is not None and txn.timer.active()   # the timer asks again
    # b1 (the first of the others by id) excluded b0 and committed; b2 follows when it
    # asks again.
    assert b1.participant.state_of(TXID) is TxnState.COMMITTED
    assert b0.id not in b1.maps.map.rgs[cluster.map.route(KEY)[1].name].active_members

    stuck = only(admin(cluster, b0, "resolve", {}))
    assert stuck["decision"] == "in-doubt" and stuck["members"] == [b1.id, b2.id]
    assert stuck["states"] == ["unreachable", "unreachable"]
    assert b0.participant.active[TXID].timer is not None      # still retried

    cluster.net.heal()
    done = only(admin(cluster, b0, "resolve", {}))
    assert done["decision"] == "commit" and done["reason"] == "a member committed"
    assert b0.storage.read(cluster.pid(KEY), KEY) == ReadResult(b"new", 1)
    cluster.net.advance(TXN_DEADLINE_S)     # b2 asks again and finds b1's decision
    assert {b.id: b.storage.read(cluster.pid(KEY), KEY) for b in members} == \
        {b.id: ReadResult(b"new", 1) for b in members}
    assert all(n == 0 for n in cluster.locks_held().values())
    assert all(not b.participant.active for b in members)
    # Asked again: the decision made here, from memory.
    again = only(admin(cluster, b2, "resolve", {"txid": list(TXID)}))
    assert again["decision"] == "commit" and again["reason"] == "already committed here"
    assert b0.metrics.counters["txn_resolutions_total"] == 2


def test_before_its_deadline_a_member_only_follows_a_decision_made_elsewhere(
        cluster: SimCluster) -> None:
    members = cluster.replicas(KEY)
    b0, b1, b2 = members
    prepare_on(cluster, members)
    # All prepared, but the coordinator may be alive and about to abort: not decided.
    early = only(admin(cluster, b0, "resolve", {"txid": list(TXID)}))
    assert early["decision"] == "in-doubt"
    assert early["states"] == ["prepared", "prepared"]
    assert "deadline has not passed" in early["reason"]
    assert b0.participant.state_of(TXID) is TxnState.PREPARED
    # The operator knows the coordinator is dead: forced.
    forced = only(admin(cluster, b1, "resolve", {"txid": list(TXID), "force": True}))
    assert forced["decision"] == "commit"
    for b in (b0, b2):
        assert only(admin(cluster, b, "resolve", {"txid": list(TXID)}))["decision"] == \
            "commit"
    assert cluster.read(KEY) == {b.id: ReadResult(b"new", 1) for b in members}
    assert all(n == 0 for n in cluster.locks_held().values())


def test_a_member_that_never_prepared_makes_the_resolution_an_abort(
        cluster: SimCluster) -> None:
    b0, b1, b2 = cluster.replicas(KEY)
    prepare_on(cluster, [b0, b1])          # the coordinator died before b2's PREPARE
    aborted = only(admin(cluster, b0, "resolve", {"txid": list(TXID)}))
    assert aborted["decision"] == "abort" and aborted["states"] == ["prepared", "aborted"]
    assert only(admin(cluster, b1, "resolve", {"txid": list(TXID)}))["decision"] == "abort"
    assert cluster.read(KEY) == {b.id: ReadResult(None, 0) for b in (b0, b1, b2)}
    assert all(n == 0 for n in cluster.locks_held().values())
    # b2 recorded the abort: the late PREPARE is refused.
    late = cluster.fail_of(cluster.raw(b2).call("prepare", cluster.prepare_body(KEY, TXID)))
    assert "aborted" in str(late)


def test_the_deadline_timer_still_resolves_by_itself(cluster: SimCluster) -> None:
    members = cluster.replicas(KEY)
    prepare_on(cluster, members)
    cluster.net.advance(TXN_DEADLINE_S + 1.0)
    assert cluster.read(KEY) == {b.id: ReadResult(b"new", 1) for b in members}
    assert all(not b.participant.active for b in members)


def test_resolve_of_an_unknown_transaction_is_an_error(cluster: SimCluster) -> None:
    b0 = cluster.bricks[0]
    error = cluster.fail_of(cluster.raw(b0).call("resolve", {"txid": [1, 2]}))
    assert isinstance(error, UnknownTransaction)
    assert b0.participant.state_of((1, 2)) is None      # asking recorded nothing


def test_resolve_requests_are_validated() -> None:
    assert decode_request("resolve", {}) == Resolve(None, False)
    assert decode_request("resolve", {"txid": [1, 2], "force": True}) == Resolve((1, 2), True)
    for bad in ({"txid": [1]}, {"txid": "x"}, {"force": 1}, {"other": 1}):
        with pytest.raises(InvalidRequest):
            decode_request("resolve", bad)


def test_keys_and_ids_for_people() -> None:
    assert key_text(b"user:17") == "user:17"
    assert key_text(b"\x00\xff") == "0x00ff"
    assert key_text(b"0x12") == "0x" + b"0x12".hex()     # never mistaken for hex
    assert key_text(b"") == "0x"
    assert txid_text([123, 4]) == "123:4"


def test_repair_lists_its_steps_in_order_all_implemented() -> None:
    assert [s.name for s in STEPS] == ["txns", "map", "reorg", "coverage"]
    assert all(s.run is not None for s in STEPS)
