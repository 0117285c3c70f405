"""Two-phase commit with locks (DESIGN §4): bricks and a DDSClient on the memory network.

Replica state is read straight from each brick's storage; raw RPC connections stand in
for a coordinator where a test needs to stop between the two phases.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dds.bricks.partstore import ReadResult
from dds.codec import FrameDecoder, decode_payload
from dds.errors import Exists, InvalidRequest, Locked, Timeout, UnknownTransaction, VersionMismatch
from dds.lib.client import DDSClient, GetResult
from dds.rpc import RPCProtocol
from tests.sim.network import CLIENT, Connection, SimCluster

READ_WAIT_S = 1.0
TXN_DEADLINE_S = 2.0
LOCK_WAIT_S = 2.0
#: Wait-die start timestamps: the client uses (time.time_ns(), lib id), which lies between.
OLDEST = (0, 1)
YOUNGEST = (1 << 62, 1)

NEVER = ReadResult(None, 0)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    c = SimCluster(tmp_path, n=3, config={"timeouts": {
        "read_wait_ms": int(READ_WAIT_S * 1000),
        "txn_deadline_ms": int(TXN_DEADLINE_S * 1000),
        "lock_wait_ms": int(LOCK_WAIT_S * 1000)}})
    yield c
    c.close()


@pytest.fixture
def client(cluster: SimCluster) -> DDSClient:
    return cluster.client()


def everywhere(cluster: SimCluster, key: bytes, expected: ReadResult) -> bool:
    return all(r == expected for r in cluster.read_settled(key).values())


def no_locks(cluster: SimCluster) -> bool:
    return all(n == 0 for n in cluster.locks_held().values())


def prepare(cluster: SimCluster, conn: RPCProtocol, key: bytes, txid: tuple[int, int],
            **kw: Any) -> Any:
    return conn.call("prepare", cluster.prepare_body(key, txid, **kw))


# -- commit and abort --------------------------------------------------------------------


def test_put_commits_on_every_replica(cluster: SimCluster, client: DDSClient) -> None:
    assert cluster.run(client.put(b"k", b"v1")) == 1
    assert everywhere(cluster, b"k", ReadResult(b"v1", 1))
    assert cluster.run(client.put(b"k", b"v2")) == 2
    assert everywhere(cluster, b"k", ReadResult(b"v2", 2))
    assert no_locks(cluster)
    assert cluster.run(client.get(b"k")) == GetResult(b"v2", 2)


def test_a_no_vote_on_one_replica_aborts_everywhere(cluster: SimCluster,
                                                    client: DDSClient) -> None:
    key = b"k"
    odd = cluster.replicas(key)[1]
    cluster.run(odd.storage.write(cluster.pid(key), key, b"only-here", 1))
    error = cluster.fail_of(client.create(key, b"new"))
    assert isinstance(error, Exists)
    assert cluster.read(key) == {b.id: (ReadResult(b"only-here", 1) if b is odd else NEVER)
                                 for b in cluster.replicas(key)}
    assert no_locks(cluster)
    assert all(not b.participant.active for b in cluster.bricks)


def test_a_key_locked_on_one_replica_aborts_the_write_everywhere(
        cluster: SimCluster, client: DDSClient) -> None:
    key = b"k"
    holder = cluster.replicas(key)[2]
    conn = cluster.raw(holder)
    txid = (7, 1)
    assert cluster.run(prepare(cluster, conn, key, txid, ts=OLDEST)) == {"version": 0}
    error = cluster.fail_of(client.put(key, b"v", timeout=1.0))
    assert isinstance(error, Timeout) and "locked" in error.message
    assert everywhere(cluster, key, NEVER)
    assert cluster.locks_held() == {b.id: int(b is holder) for b in cluster.bricks}
    assert cluster.run(conn.call("abort", {"txid": list(txid)})) == {}
    assert no_locks(cluster)
    assert everywhere(cluster, key, NEVER)


def test_an_abort_needs_acknowledgement_only_from_members_that_voted_yes(
        cluster: SimCluster, client: DDSClient) -> None:
    key = b"k"
    yes1, yes2, no = cluster.replicas(key)
    cluster.run(no.storage.write(cluster.pid(key), key, b"only-here", 1))
    port = no.config.brick.port

    decoder = FrameDecoder()

    def cut_after_its_vote(conn: Connection, to: int, data: bytes) -> None:
        if conn.names == (client.node_id, no.id) and to == CLIENT:
            for payload in decoder.feed(data):
                if decode_payload(payload)[0] == "err":      # its NO vote
                    cluster.clock.callLater(0, cluster.net.disconnect, "127.0.0.1", port)
    cluster.net.taps.append(cut_after_its_vote)
    error = cluster.fail_of(client.create(key, b"new", timeout=2.0))
    assert isinstance(error, Exists)         # nothing happened, and that is known
    assert cluster.locks_held() == {b.id: 0 for b in cluster.bricks}
    assert yes1.storage.read(cluster.pid(key), key) == NEVER
    assert yes2.storage.read(cluster.pid(key), key) == NEVER


# -- conditions and versions -------------------------------------------------------------


def test_create_fails_exists_exactly_when_the_key_has_a_value(
        cluster: SimCluster, client: DDSClient) -> None:
    key = b"c"
    assert cluster.run(client.create(key, b"a")) == 1
    error = cluster.fail_of(client.create(key, b"b"))
    assert isinstance(error, Exists)
    assert everywhere(cluster, key, ReadResult(b"a", 1))
    assert cluster.run(client.remove(key)) == 2
    assert cluster.run(client.create(key, b"c")) == 3     # a tombstone has no value
    assert everywhere(cluster, key, ReadResult(b"c", 3))
    assert no_locks(cluster)


def test_compare_and_put_succeeds_on_the_right_version_only(
        cluster: SimCluster, client: DDSClient) -> None:
    key = b"cas"
    assert cluster.run(client.compare_and_put(key, b"a", 0)) == 1
    for wrong in (0, 2, 5):
        error = cluster.fail_of(client.compare_and_put(key, b"x", wrong))
        assert isinstance(error, VersionMismatch)
        assert error.data == {"version": 1}
    assert everywhere(cluster, key, ReadResult(b"a", 1))
    assert cluster.run(client.compare_and_put(key, b"b", 1)) == 2
    assert everywhere(cluster, key, ReadResult(b"b", 2))
    assert no_locks(cluster)


def test_versions_never_go_back_across_remove(cluster: SimCluster, client: DDSClient) -> None:
    key = b"r"
    assert cluster.run(client.put(key, b"a")) == 1
    assert cluster.run(client.remove(key)) == 2
    assert everywhere(cluster, key, ReadResult(None, 2))
    assert cluster.run(client.get(key)) == GetResult(None, 2)
    assert cluster.run(client.remove(key)) == 3            # removing a tombstone counts too
    error = cluster.fail_of(client.compare_and_put(key, b"x", 0))
    assert isinstance(error, VersionMismatch)              # 0 means "never written"
    assert cluster.run(client.compare_and_put(key, b"b", 3)) == 4
    assert everywhere(cluster, key, ReadResult(b"b", 4))


# -- reads of prepared keys --------------------------------------------------------------


def test_read_of_a_prepared_key_waits_for_the_outcome(cluster: SimCluster,
                                                      client: DDSClient) -> None:
    key = b"w"
    assert cluster.run(client.put(key, b"old")) == 1
    brick = cluster.replicas(key)[0]
    coordinator = cluster.raw(brick)
    reader = cluster.raw(brick)
    txid = (9, 1)
    assert cluster.run(prepare(cluster, coordinator, key, txid, value=b"new")) == {"version": 1}
    read = reader.call("get", {"key": key, **cluster.ref(key)})
    cluster.net.advance(READ_WAIT_S / 2)
    assert not read.called
    assert cluster.run(coordinator.call("commit", {"txid": list(txid)})) == {"version": 2}
    assert cluster.run(read) == {"value": b"new", "version": 2}
    assert brick.metrics.counters["reads_waited_total"] == 1


def test_read_of_a_prepared_key_that_aborts_returns_the_old_value(
        cluster: SimCluster, client: DDSClient) -> None:
    key = b"w"
    assert cluster.run(client.put(key, b"old")) == 1
    brick = cluster.replicas(key)[0]
    conn = cluster.raw(brick)
    txid = (9, 2)
    cluster.run(prepare(cluster, conn, key, txid, value=b"new"))
    read = conn.call("get", {"key": key, **cluster.ref(key)})
    cluster.net.flush()
    assert not read.called
    cluster.run(conn.call("abort", {"txid": list(txid)}))
    assert cluster.run(read) == {"value": b"old", "version": 1}


def test_read_waiting_on_a_prepared_key_times_out_after_read_wait(
        cluster: SimCluster) -> None:
    key = b"w"
    brick = cluster.replicas(key)[0]
    conn = cluster.raw(brick)
    cluster.run(prepare(cluster, conn, key, (9, 3)))
    start = cluster.clock.seconds()
    read = conn.call("get", {"key": key, **cluster.ref(key)})
    cluster.net.advance(READ_WAIT_S * 0.99)
    assert not read.called
    error = cluster.fail_of(read)
    assert isinstance(error, Timeout)
    assert cluster.clock.seconds() - start == pytest.approx(READ_WAIT_S)
    assert brick.locks.holder((str(cluster.map.route(key)[0]), key)) == (9, 3)   # prepared


# -- wait-die ----------------------------------------------------------------------------


def test_an_older_txn_waits_for_a_younger_holder_and_succeeds(
        cluster: SimCluster, client: DDSClient) -> None:
    key = b"ww"
    holder = cluster.replicas(key)[1]
    conn = cluster.raw(holder)
    young = (5, 1)
    cluster.run(prepare(cluster, conn, key, young, ts=YOUNGEST))
    put = client.put(key, b"older")
    cluster.net.advance(LOCK_WAIT_S / 2)
    assert not put.called                   # waiting on `holder`, not dying
    cluster.run(conn.call("abort", {"txid": list(young)}))
    assert cluster.run(put) == 1
    assert everywhere(cluster, key, ReadResult(b"older", 1))
    assert client.metrics.counters["write_retries_total"] == 0
    assert holder.metrics.counters["prepare_locked_total"] == 0
    assert no_locks(cluster)


def test_a_younger_txn_dies_with_locked_and_the_client_retries_until_success(
        cluster: SimCluster, client: DDSClient) -> None:
    key = b"wd"
    holder = cluster.replicas(key)[1]
    conn = cluster.raw(holder)
    old = (5, 2)
    cluster.run(prepare(cluster, conn, key, old, ts=OLDEST))
    put = client.put(key, b"younger")
    cluster.net.advance(0.5)
    assert not put.called
    assert client.metrics.counters["write_retries_total"] >= 2      # died and retried
    assert holder.metrics.counters["prepare_locked_total"] >= 2
    assert everywhere(cluster, key, NEVER)
    cluster.run(conn.call("abort", {"txid": list(old)}))
    assert cluster.run(put) == 1
    assert everywhere(cluster, key, ReadResult(b"younger", 1))
    assert no_locks(cluster)


# -- repeated and unknown phase-two messages ---------------------------------------------


def test_a_repeated_commit_gets_the_same_version(cluster: SimCluster,
                                                 client: DDSClient) -> None:
    key = b"rc"
    assert cluster.run(client.put(key, b"a")) == 1
    brick = cluster.replicas(key)[0]
    conn = cluster.raw(brick)
    txid = (3, 1)
    cluster.run(prepare(cluster, conn, key, txid, value=b"b"))
    first = conn.call("commit", {"txid": list(txid)})
    again = conn.call("commit", {"txid": list(txid)})       # a retry while the first persists
    assert cluster.run(first) == {"version": 2}
    assert cluster.run(again) == {"version": 2}
    assert cluster.run(conn.call("commit", {"txid": list(txid)})) == {"version": 2}
    assert brick.storage.read(cluster.pid(key), key) == ReadResult(b"b", 2)
    assert brick.metrics.counters["commits_total"] == 2     # the client's put and this one


def test_an_abort_for_an_unknown_txn_makes_a_later_prepare_refused(
        cluster: SimCluster) -> None:
    key = b"ua"
    brick = cluster.replicas(key)[0]
    conn = cluster.raw(brick)
    txid = (4, 1)
    assert cluster.run(conn.call("abort", {"txid": list(txid)})) == {}
    error = cluster.fail_of(prepare(cluster, conn, key, txid))
    assert isinstance(error, Locked) and "aborted" in error.message
    assert len(brick.locks) == 0 and not brick.participant.active
    assert brick.storage.read(cluster.pid(key), key) == NEVER
    error = cluster.fail_of(conn.call("commit", {"txid": list(txid)}))
    assert isinstance(error, UnknownTransaction)


# -- coordinator failure: termination among the members ----------------------------------


def test_termination_commits_when_every_member_prepared(cluster: SimCluster) -> None:
    key = b"t1"
    txid = (11, 1)
    conns = [cluster.raw(b) for b in cluster.replicas(key)]
    for conn in conns:
        assert cluster.run(prepare(cluster, conn, key, txid, value=b"decided",
                                   timeout_ms=500)) == {"version": 0}
    for conn in conns:
        conn.close()                        # the coordinator disappears
    cluster.net.advance(TXN_DEADLINE_S * 0.99)
    assert everywhere(cluster, key, NEVER)  # nobody decides before the deadline
    cluster.net.advance(TXN_DEADLINE_S)
    assert everywhere(cluster, key, ReadResult(b"decided", 1))
    assert no_locks(cluster)
    assert all(b.metrics.counters["txn_terminations_total"] == 1 for b in cluster.bricks)
    late = cluster.raw(cluster.replicas(key)[0])    # a late COMMIT gets the same answer
    assert cluster.run(late.call("commit", {"txid": list(txid)})) == {"version": 1}
    error = cluster.fail_of(late.call("abort", {"txid": list(txid)}))
    assert isinstance(error, InvalidRequest) and "committed" in error.message


def test_termination_aborts_when_a_member_never_saw_the_prepare(cluster: SimCluster) -> None:
    key = b"t2"
    txid = (11, 2)
    *prepared, missed = cluster.replicas(key)
    for b in prepared:
        conn = cluster.raw(b)
        assert cluster.run(prepare(cluster, conn, key, txid, timeout_ms=500)) == {"version": 0}
        conn.close()
    cluster.net.advance(2 * TXN_DEADLINE_S)
    assert everywhere(cluster, key, NEVER)
    assert no_locks(cluster)
    assert all(not b.participant.active for b in cluster.bricks)
    late = cluster.raw(missed)                      # the lost PREPARE arrives at last
    error = cluster.fail_of(prepare(cluster, late, key, txid))
    assert isinstance(error, Locked) and "aborted" in error.message
    assert len(missed.locks) == 0
    late_commit = cluster.raw(prepared[0])
    error = cluster.fail_of(late_commit.call("commit", {"txid": list(txid)}))
    assert isinstance(error, UnknownTransaction) and "aborted" in error.message


def test_a_prepare_asking_a_long_deadline_holds_its_lock_no_longer_than_the_bound(
        tmp_path: Path) -> None:
    """Issue 13: a PREPARE asking ``timeout_ms=600000`` from a coordinator that then
    disappears must not lock its key for 2 × 600 s: the brick caps the deadline at
    ``timeouts.max_txn_deadline_ms``, and termination then settles the transaction (every
    member prepared: committed, DESIGN §4), leaving the key writable."""
    bound_s = 4.0
    c = SimCluster(tmp_path, n=3, config={"timeouts": {
        "txn_deadline_ms": int(TXN_DEADLINE_S * 1000),
        "max_txn_deadline_ms": int(bound_s * 1000)}})
    try:
        key, txid = b"long", (13, 1)
        conns = [c.raw(b) for b in c.replicas(key)]
        for conn in conns:
            assert c.run(prepare(c, conn, key, txid, value=b"orphan",
                                 timeout_ms=600_000)) == {"version": 0}
            conn.close()                            # the coordinator disappears
        c.net.advance(bound_s * 0.9)
        assert not no_locks(c)                      # held until the (capped) deadline
        c.net.advance(bound_s)
        assert everywhere(c, key, ReadResult(b"orphan", 1))
        assert no_locks(c)
        assert all(not b.participant.active for b in c.bricks)
        client = c.client()
        assert c.run(client.put(key, b"again")) == 2     # writable again
    finally:
        c.close()
