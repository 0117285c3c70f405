"""Unit tests of recovery's source side (DESIGN §7): the participant's write fence and
quiesce, and the CopySessions state machine.  Real SQLite files in tmp_path, time from a
Clock, snapshots taken inline instead of in a worker thread (but for the stream tests at
the end: a real stream server, its threads' calls run by the test thread)."""

from __future__ import annotations

import queue
import random
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from dds.errors import InvalidRequest, Recovering, Timeout
from dds.messages import Prepare
from dds.metrics import Metrics
from dds.partition import PartitionId

from dds.bricks.rowcheck import row_checksum
from dds.bricks.copy.session import IDLE_S, CopyState
from dds.bricks.copy.source import CopySessions
from dds.bricks.locks import LockTable
from dds.bricks.participant import Participant
from dds.bricks.copy.snapshot import SnapshotReceiver, apply_delta
from dds.bricks.storage import Storage

from tests.unit.brickctx import brick_context
from dds.bricks.copy.stream import TOKEN_BYTES, StreamError, StreamServer, receive

P0, P1 = PartitionId(1, 0), PartitionId(1, 1)
FENCE_S = 10.0


def inline(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


Held = list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]]


def hold_thread_work(src: "Source") -> Held:
    """Make the sessions' worker-thread calls wait: each is held as (Deferred, f, args)
    until the test runs it and fires the Deferred."""
    held: Held = []

    def later(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        held.append((d, f, args))
        return d

    src.sessions.run_in_thread = later
    return held


def key_in(pid: PartitionId, n: int) -> bytes:
    """The ``n``-th key ``k<i>`` that belongs to ``pid``."""
    keys = (b"k%d" % i for i in range(10_000) if pid.owns(b"k%d" % i))
    for _ in range(n):
        next(keys)
    return next(keys)


def outcome(aw: Coroutine[Any, Any, Any] | Deferred[Any]) -> list[Any]:
    """What the coroutine or Deferred fires with, so far (a Failure is consumed)."""
    d = Deferred.fromCoroutine(aw) if not isinstance(aw, Deferred) else aw
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def value_of(out: list[Any]) -> Any:
    assert out, "not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


@attrs.define
class Source:
    clock: Clock
    storage: Storage
    participant: Participant
    sessions: CopySessions
    metrics: Metrics
    txids: int = 0

    def write(self, pid: PartitionId, n: int, value: bytes | None, version: int) -> None:
        self.storage.write(str(pid), key_in(pid, n), value, version)

    def prepare(self, pid: PartitionId, n: int = 0) -> tuple[tuple[int, int], Any]:
        self.txids += 1
        txid = (7, self.txids)
        msg = Prepare(txid=txid, ts=txid, pid=str(pid), key=key_in(pid, n), op="put",
                      value=b"v", expected_version=None, rg="rg0", rg_version=1, rg_fp=0,
                      timeout_ms=1000)
        return txid, self.participant.prepare(msg, pid, lambda: None)


@pytest.fixture
def src(tmp_path: Path) -> Iterator[Source]:
    clock = Clock()
    storage = Storage(tmp_path / "source", clock)
    for pid in (P0, P1):
        storage.open_partition(str(pid))
        for i in range(50):
            storage.write(str(pid), key_in(pid, i), b"v%d" % i, 1)
    clock.advance(0)
    metrics = Metrics()
    participant = Participant(storage, LockTable(clock), clock, metrics, lock_wait_s=1.0,
                              txn_deadline_s=5.0, on_deadline=lambda txn: None)
    ctx = brick_context(tmp_path / "ctx", clock, storage, participant, metrics,
                        run_in_thread=inline, rng=random.Random(1))
    sessions = CopySessions(ctx, tmp_path / "snapshots", FENCE_S)
    yield Source(clock, storage, participant, sessions, metrics)
    sessions.close()
    storage.close()


def begin(src: Source, target: str = "b2", full_lease: bool = False) -> dict[str, Any]:
    reply: dict[str, Any] = value_of(outcome(
        src.sessions.begin("rg0", target, [P0, P1], full_lease)))
    return reply


def fence(src: Source, sid: int) -> dict[str, Any]:
    reply: dict[str, Any] = value_of(outcome(src.sessions.fence(sid)))
    return reply


def state(src: Source, sid: int) -> str:
    return next(s["state"] for s in src.sessions.status() if s["session"] == sid)


def snapshot_files(src: Source) -> list[Path]:
    return sorted(src.sessions.snapshot_dir.glob("*"))


# -- the participant's write fence ----------------------------------------------------

def test_a_prepare_for_a_fenced_partition_fails_recovering_without_taking_a_lock(
        src: Source) -> None:
    src.participant.fence({P0})
    with pytest.raises(Recovering, match=r"writes to p1\.0 are fenced"):
        src.prepare(P0)
    assert len(src.participant.locks) == 0 and src.participant.active == {}
    _, vote = src.prepare(P1)              # another partition is not fenced
    src.clock.advance(0)
    assert value_of(outcome(vote)) == {"version": 1}


def test_a_partition_fenced_twice_stays_fenced_until_both_lift_it(src: Source) -> None:
    src.participant.fence({P0})
    src.participant.fence({P0})
    src.participant.unfence({P0})
    with pytest.raises(Recovering):
        src.prepare(P0)
    src.participant.unfence({P0})
    src.prepare(P0)
    assert len(src.participant.active) == 1


def test_quiesce_waits_for_an_active_transaction_then_returns_true(src: Source) -> None:
    txid, vote = src.prepare(P0)
    src.clock.advance(0)                   # the YES vote is recorded
    done = outcome(src.participant.quiesce({P0}, 5.0))
    assert done == []
    src.clock.advance(1.0)
    assert done == []
    committed = outcome(src.participant.commit(txid))
    src.clock.advance(0)                   # commit durable, transaction forgotten
    assert committed == [{"version": 2}]
    assert done == [True]


def test_quiesce_ignores_transactions_on_other_partitions(src: Source) -> None:
    src.prepare(P1)
    assert outcome(src.participant.quiesce({P0}, 5.0)) == [True]


def test_quiesce_returns_false_when_a_transaction_never_resolves(src: Source) -> None:
    src.prepare(P0)
    src.clock.advance(0)
    done = outcome(src.participant.quiesce({P0}, 5.0))
    src.clock.advance(4.9)
    assert done == []
    src.clock.advance(0.1)
    assert done == [False]


def test_a_drain_asks_about_the_prepared_transactions_it_waits_for(src: Source) -> None:
    """A lost COMMIT or a dead coordinator must not keep a fence's drain waiting for the
    transaction deadline: the drain asks (``on_blocked``, which termination answers)
    at once and every ``DRAIN_ASK_S`` while it waits."""
    asked: list[Any] = []
    src.participant.on_blocked = asked.append
    txid, _vote = src.prepare(P0)
    src.prepare(P1)                         # another partition: not asked about
    src.clock.advance(0)
    outcome(src.participant.quiesce({P0}, 5.0))
    src.clock.advance(0)
    assert [k[0] for k in asked] == ["p1.0"]
    src.clock.advance(src.participant.DRAIN_ASK_S)
    assert len(asked) == 2
    outcome(src.participant.commit(txid))
    src.clock.advance(0)
    src.clock.advance(1.0)
    assert len(asked) == 2                  # drained: no more questions


# -- copy sessions ----------------------------------------------------------------------

def test_begin_snapshots_every_partition(src: Source) -> None:
    reply = begin(src)
    assert [s["pid"] for s in reply["snapshots"]] == ["p1.0", "p1.1"]
    lsn = src.storage.open_partition("p1.0").committed_lsn()
    assert reply["snapshots"][0]["lsn"] == lsn
    assert len(snapshot_files(src)) == 2
    assert state(src, reply["session"]) == "streaming"
    assert src.metrics.counters["copy_sessions_total"] == 1


def test_a_chunk_of_an_unknown_session_is_an_invalid_request_naming_it(src: Source) -> None:
    with pytest.raises(InvalidRequest, match="unknown copy session 12345"):
        src.sessions.chunk(12345, "p1.0", 0, 100)


def test_chunks_reassemble_the_snapshot_and_count_bytes(src: Source, tmp_path: Path
                                                        ) -> None:
    reply = begin(src)
    snap = reply["snapshots"][1]
    receiver = SnapshotReceiver(tmp_path, "p1.1", snap["size"], snap["checksum"])
    offset = 0
    while offset < snap["size"]:
        chunk = src.sessions.chunk(reply["session"], "p1.1", offset, 3000)
        receiver.write(offset, chunk["data"], chunk["checksum"])
        offset += len(chunk["data"])
    receiver.finish()
    assert src.metrics.counters["copy_bytes_sent_total"] == snap["size"]
    status = src.sessions.status()[0]
    assert status["bytes_sent"] == snap["size"]
    assert status["size"] == sum(s["size"] for s in reply["snapshots"])


def test_fence_waits_for_transactions_in_flight_and_reports_their_lsn(src: Source) -> None:
    reply = begin(src)
    txid, _ = src.prepare(P0)
    src.clock.advance(0)
    fenced = outcome(src.sessions.fence(reply["session"]))
    with pytest.raises(Recovering):
        src.prepare(P1, 1)                 # new writes are refused at once
    assert fenced == []                    # the prepared one is still in flight
    src.participant.commit(txid)
    src.clock.advance(0)
    lsns = value_of(fenced)["lsn"]
    assert lsns["p1.0"] == src.storage.open_partition("p1.0").committed_lsn()
    assert lsns["p1.0"] == reply["snapshots"][0]["lsn"] + 1
    delta = src.sessions.delta(reply["session"], "p1.0", reply["snapshots"][0]["lsn"], 100)
    assert delta == {"rows": [[key_in(P0, 0), b"v", 2, lsns["p1.0"],
                               row_checksum(key_in(P0, 0), 2, b"v")]], "more": False}
    assert src.metrics.counters["copy_fences_total"] == 1


def test_fence_gives_up_after_the_drain_bound_when_a_transaction_never_resolves(
        src: Source) -> None:
    """Not after the whole fence (FENCE_S): every write to the partitions waits while
    the drain does, so it gives up at ``Participant.DRAIN_S`` and lifts the fence."""
    reply = begin(src)
    src.prepare(P0)
    src.clock.advance(0)
    fenced = outcome(src.sessions.fence(reply["session"]))
    src.clock.advance(Participant.DRAIN_S - 0.01)
    assert fenced == [] and src.participant.fenced != {}
    src.clock.advance(0.01)
    assert Participant.DRAIN_S < FENCE_S
    with pytest.raises(Timeout, match="1 transactions .* did not resolve within 1s"):
        value_of(fenced)
    assert src.participant.fenced == {}
    assert state(src, reply["session"]) == "cancelled"


def test_delta_pages_by_limit(src: Source) -> None:
    reply = begin(src)
    for i in range(5):
        src.write(P0, i, b"new", 2)
    src.clock.advance(0)
    after = reply["snapshots"][0]["lsn"]
    first = src.sessions.delta(reply["session"], "p1.0", after, 3)
    assert len(first["rows"]) == 3 and first["more"]
    rest = src.sessions.delta(reply["session"], "p1.0", first["rows"][-1][3], 3)
    assert len(rest["rows"]) == 2 and not rest["more"]


def test_the_fence_timer_lifts_the_fence_when_the_target_never_finishes(
        src: Source) -> None:
    reply = begin(src)
    fence(src, reply["session"])
    assert set(src.participant.fenced) == {P0, P1}
    src.clock.advance(FENCE_S - 0.1)
    assert set(src.participant.fenced) == {P0, P1}
    src.clock.advance(0.1)
    assert src.participant.fenced == {}
    assert state(src, reply["session"]) == "cancelled"
    assert snapshot_files(src) == []
    assert src.metrics.counters["copy_cancelled_total"] == 1
    src.prepare(P0)                       # writes go on
    with pytest.raises(InvalidRequest, match="cancelled: fence lapsed"):
        src.sessions.chunk(reply["session"], "p1.0", 0, 10)


def test_readmitting_keeps_the_fence_past_the_timer_until_finish(src: Source) -> None:
    reply = begin(src)
    sid = reply["session"]
    fence(src, sid)
    src.sessions.readmitting(sid)
    src.clock.advance(3 * FENCE_S)
    assert set(src.participant.fenced) == {P0, P1}
    assert state(src, sid) == "readmitting"
    src.sessions.finish(sid)
    assert src.participant.fenced == {}
    assert state(src, sid) == "done"
    assert snapshot_files(src) == []
    assert src.sessions.status()[0]["fenced_s"] == 3 * FENCE_S


def test_a_second_begin_for_the_same_rg_and_target_cancels_the_first(src: Source) -> None:
    first = begin(src)
    fence(src, first["session"])
    second = begin(src)
    assert second["session"] != first["session"]
    assert src.participant.fenced == {}           # the first one's fence is lifted
    with pytest.raises(InvalidRequest, match="cancelled: superseded"):
        src.sessions.chunk(first["session"], "p1.0", 0, 10)
    assert len(snapshot_files(src)) == 2          # only the second one's
    assert src.sessions.chunk(second["session"], "p1.0", 0, 10)["data"]


def test_a_begin_for_another_target_keeps_the_first_session(src: Source) -> None:
    first = begin(src, target="b2")
    begin(src, target="b3")
    assert state(src, first["session"]) == "streaming"


def test_a_session_idle_for_a_minute_is_cancelled(src: Source) -> None:
    reply = begin(src)
    src.clock.advance(IDLE_S - 1)
    src.sessions.chunk(reply["session"], "p1.0", 0, 10)     # a request: not idle
    src.clock.advance(IDLE_S - 1)
    assert state(src, reply["session"]) == "streaming"
    src.clock.advance(1)
    assert state(src, reply["session"]) == "cancelled"
    assert snapshot_files(src) == []


def test_full_lease_fences_before_the_snapshot_so_the_delta_is_empty(src: Source) -> None:
    reply = begin(src, full_lease=True)
    sid = reply["session"]
    assert set(src.participant.fenced) == {P0, P1}
    with pytest.raises(Recovering):
        src.prepare(P0)
    lsns = fence(src, sid)["lsn"]
    assert lsns == {s["pid"]: s["lsn"] for s in reply["snapshots"]}
    assert src.sessions.delta(sid, "p1.0", lsns["p1.0"], 100) == {"rows": [],
                                                                  "more": False}


def test_cancel_lifts_the_fence_and_deletes_the_snapshots(src: Source) -> None:
    reply = begin(src)
    fence(src, reply["session"])
    assert src.sessions.cancel(reply["session"], "target gave up")
    assert src.participant.fenced == {}
    assert snapshot_files(src) == []
    assert not src.sessions.cancel(reply["session"], "again")


def test_stale_snapshots_of_a_previous_process_are_deleted_at_start(src: Source,
                                                                   tmp_path: Path) -> None:
    begin(src)
    assert snapshot_files(src)
    CopySessions(brick_context(tmp_path / "ctx", src.clock, src.storage, src.participant,
                               Metrics(), run_in_thread=inline),
                 tmp_path / "snapshots", FENCE_S)
    assert snapshot_files(src) == []


def test_a_copy_with_writes_between_snapshot_and_fence_converges(src: Source,
                                                                tmp_path: Path) -> None:
    """The whole data path: snapshot, stream, more writes (removes too), fence, delta."""
    target = Storage(tmp_path / "target", src.clock)
    try:
        reply = begin(src)
        sid = reply["session"]
        for i in range(10):
            src.write(P0, i, None if i % 3 == 0 else b"later", 2)
        src.write(P1, 99, b"brand new", 1)
        src.clock.advance(0)
        for snap in reply["snapshots"]:
            receiver = SnapshotReceiver(target.data_dir, snap["pid"], snap["size"],
                                        snap["checksum"])
            offset = 0
            while offset < snap["size"]:
                c = src.sessions.chunk(sid, snap["pid"], offset, 1 << 20)
                receiver.write(offset, c["data"], c["checksum"])
                offset += len(c["data"])
            receiver.finish()
            receiver.install(target)
        fence(src, sid)
        for snap in reply["snapshots"]:
            after, more = snap["lsn"], True
            while more:
                d = src.sessions.delta(sid, snap["pid"], after, 4)
                apply_delta(target, snap["pid"], d["rows"])
                after = d["rows"][-1][3] if d["rows"] else after
                more = d["more"]
        src.sessions.readmitting(sid)
        src.sessions.finish(sid)
        for pid in ("p1.0", "p1.1"):
            assert (target.open_partition(pid).checksum()
                    == src.storage.open_partition(pid).checksum())
        assert src.sessions.status()[0]["state"] == CopyState.DONE.value
    finally:
        target.close()


def test_delta_serves_committed_rows_only(src: Source) -> None:
    reply = begin(src)
    after = reply["snapshots"][0]["lsn"]
    src.write(P0, 0, b"committed", 2)
    src.clock.advance(0)
    src.write(P0, 1, b"staged", 2)                 # lsn assigned, not committed yet
    rows = src.sessions.delta(reply["session"], "p1.0", after, 100)["rows"]
    assert [r[1] for r in rows] == [b"committed"]


def test_a_begin_superseded_while_snapshotting_fails_and_leaves_no_files(
        src: Source) -> None:
    held = hold_thread_work(src)
    first = outcome(src.sessions.begin("rg0", "b2", [P0, P1], False))
    assert len(held) == 1 and first == []
    src.sessions.run_in_thread = inline
    second = value_of(outcome(src.sessions.begin("rg0", "b2", [P0, P1], False)))
    d, f, args = held.pop()
    d.callback(f(*args))                   # the first snapshot completes after all
    with pytest.raises(Exception, match="cancelled: superseded"):
        value_of(first)
    assert held == []                      # it took no second snapshot
    assert len(snapshot_files(src)) == 2   # the second session's
    assert state(src, second["session"]) == "streaming"


def test_a_rate_limited_session_holds_chunks_until_its_bytes_fit_the_rate(
        src: Source) -> None:
    sid = value_of(outcome(src.sessions.begin("rg0", "b3", [P0], False, rate_mb_s=0.001)))
    sid = sid["session"]                              # 1,000 bytes per second
    first = src.sessions.chunk(sid, str(P0), 0, 500)
    assert isinstance(first, Deferred) and not first.called
    src.clock.advance(0.49)
    assert not first.called
    src.clock.advance(0.02)                           # 500 bytes at 1,000 B/s: 0.5 s
    assert first.called and len(first.result["data"]) == 500


def test_sessions_of_one_partition_share_one_snapshot_freed_by_the_last(
        src: Source) -> None:
    """A move copies to every target member at once: one backup, one file."""
    first = value_of(outcome(src.sessions.begin("rg0", "b4", [P0], False)))
    second = value_of(outcome(src.sessions.begin("rg0", "b5", [P0], False)))
    assert len(snapshot_files(src)) == 1
    assert first["snapshots"] == second["snapshots"]
    assert src.metrics.counters["copy_snapshots_shared_total"] == 1
    assert src.sessions.cancel(first["session"], "done")
    assert len(snapshot_files(src)) == 1           # the second one still reads it
    assert src.sessions.chunk(second["session"], str(P0), 0, 10)["data"]
    assert src.sessions.cancel(second["session"], "done")
    assert snapshot_files(src) == []


def test_a_snapshot_being_taken_is_shared_and_an_old_one_is_not(src: Source) -> None:
    from dds.bricks.copy.shared import SHARE_S

    held = hold_thread_work(src)
    first = outcome(src.sessions.begin("rg0", "b4", [P0], False))
    second = outcome(src.sessions.begin("rg0", "b5", [P0], False))
    assert len(held) == 1 and first == [] and second == []
    d, f, args = held.pop()
    d.callback(f(*args))
    assert value_of(first)["snapshots"] == value_of(second)["snapshots"]
    src.sessions.run_in_thread = inline
    src.clock.advance(SHARE_S + 1)
    value_of(outcome(src.sessions.begin("rg0", "b6", [P0], False)))
    assert len(snapshot_files(src)) == 2


def test_fence_and_readmitting_again_answer_while_the_fence_holds(src: Source) -> None:
    """A move checks that the source's fence still holds after its cut-over record."""
    sid = begin(src)["session"]
    lsns = fence(src, sid)["lsn"]
    src.sessions.readmitting(sid)
    src.sessions.readmitting(sid)
    assert fence(src, sid)["lsn"] == lsns
    src.sessions.cancel(sid, "lost")
    with pytest.raises(InvalidRequest, match="cancelled"):
        fence(src, sid)


def test_a_replica_replaced_since_is_snapshotted_anew(src: Source, tmp_path: Path) -> None:
    """Its log positions are another replica's: the old snapshot's lsn would lie."""
    first = value_of(outcome(src.sessions.begin("rg0", "b4", [P0], False)))
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(snapshot_files(src)[0].read_bytes())     # a whole partition file
    src.storage.replace_partition(str(P0), copy)
    second = value_of(outcome(src.sessions.begin("rg0", "b5", [P0], False)))
    assert len(snapshot_files(src)) == 2
    assert first["session"] != second["session"]


# -- snapshot streams ---------------------------------------------------------------------

class Pump:
    """``call_from_thread`` for a test: the stream threads' calls wait in a queue until
    the test thread runs them, as the reactor thread would."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue())

    def __call__(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.put((f, args))

    def until(self, cond: Callable[[], object], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout}s")
            try:
                f, args = self.calls.get(timeout=0.01)
            except queue.Empty:
                continue
            f(*args)


@attrs.define
class Streaming:
    sessions: CopySessions
    server: StreamServer
    pump: Pump
    metrics: Metrics

    def begin(self, target: str = "b2") -> dict[str, Any]:
        out = outcome(self.sessions.begin("rg0", target, [P0], False))
        self.pump.until(lambda: out)           # the snapshot is taken in a thread
        reply: dict[str, Any] = value_of(out)
        return reply

    def take(self, reply: dict[str, Any], tmp_path: Path,
             token: bytes | None = None) -> SnapshotReceiver:
        snap = reply["snapshots"][0]
        receiver = SnapshotReceiver(tmp_path, snap["pid"], snap["size"], snap["checksum"])
        receive("127.0.0.1", reply["stream"]["port"],
                reply["stream"]["token"] if token is None else token, reply["session"],
                snap["pid"], snap["size"], receiver.write)
        return receiver


@pytest.fixture
def streaming(src: Source, tmp_path: Path) -> Iterator[Streaming]:
    pump = Pump()
    server = StreamServer("127.0.0.1", 0, pump)
    metrics = Metrics()
    ctx = brick_context(tmp_path / "ctx", src.clock, src.storage, src.participant, metrics,
                        run_in_thread=inline, rng=random.Random(2))
    sessions = CopySessions(ctx, tmp_path / "stream-snapshots", FENCE_S, stream=server)
    yield Streaming(sessions, server, pump, metrics)
    sessions.close()


def test_begin_replies_the_stream_port_and_a_token_of_its_own_per_session(
        streaming: Streaming) -> None:
    first, second = streaming.begin("b2"), streaming.begin("b3")
    assert first["stream"]["port"] == second["stream"]["port"] == streaming.server.port
    tokens = {first["stream"]["token"], second["stream"]["token"]}
    assert len(tokens) == 2 and all(len(t) == TOKEN_BYTES for t in tokens)


def test_the_replied_token_streams_the_sessions_snapshot_and_counts_its_bytes(
        streaming: Streaming, tmp_path: Path) -> None:
    reply = streaming.begin()
    streaming.take(reply, tmp_path).finish()         # checks the whole file's checksum
    size = reply["snapshots"][0]["size"]
    counters = streaming.metrics.counters
    streaming.pump.until(lambda: counters["copy_bytes_sent_total"] == size)
    assert streaming.sessions.status()[0]["bytes_sent"] == size


def test_a_token_opens_nothing_once_its_session_is_cancelled(
        streaming: Streaming, tmp_path: Path) -> None:
    reply = streaming.begin()
    assert streaming.sessions.cancel(reply["session"], "target gave up")
    with pytest.raises(StreamError, match="no snapshot of p1.0 in copy session"):
        streaming.take(reply, tmp_path)


def test_a_refused_stream_is_counted_as_an_authentication_failure(
        streaming: Streaming, tmp_path: Path) -> None:
    reply = streaming.begin()
    with pytest.raises(StreamError, match="authentication failed"):
        streaming.take(reply, tmp_path, token=bytes(TOKEN_BYTES))
    counters = streaming.metrics.counters
    streaming.pump.until(lambda: counters["stream_refused_total"] == 1)
    assert counters["stream_auth_failures_total"] == 1
    assert streaming.metrics.value("stream_refused", reason="auth") == 1


def test_close_stops_the_stream_server(streaming: Streaming) -> None:
    port = streaming.server.port
    streaming.sessions.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5.0).close()
