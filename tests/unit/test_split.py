"""Unit tests of split and merge in place on one member (``dds.bricks.split``, DESIGN §8):
building the targets from a real SQLite replica (rows routed by key hash, versions and
tombstones kept), catching up with later writes, installing, and the lifecycle of the
job's fences.  Time from a Clock; the worker-thread steps run inline."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from dds.errors import InvalidRequest, Recovering, Refused, Timeout
from dds.messages import (Prepare, RGUpdate, SplitAbort, SplitCutover, SplitFence,
                          SplitFinish, SplitPrepare, SplitRelease, SplitStatus)
from dds.metrics import Metrics
from dds.partition import PartitionId
from dds.records import Member, PartitionEntry, RGRecord

from dds.bricks.locks import LockTable
from dds.bricks.mapstate import MapState
from dds.bricks.participant import Participant
from dds.bricks.split import (EXPIRE_S, FENCE_S, Splits, build_targets, reshape)
from dds.bricks.storage import Storage

from tests.unit.brickctx import brick_context

P = PartitionId(1, 0)
C0, C1 = P.children()
OTHER = PartitionId(1, 1)
JOB = "split-test-0001"


def inline(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


def keys_of(pid: PartitionId, n: int) -> list[bytes]:
    out = []
    i = 0
    while len(out) < n:
        k = b"key-%d" % i
        if pid.owns(k):
            out.append(k)
        i += 1
    return out


def outcome(aw: Coroutine[Any, Any, Any] | Deferred[Any] | Any) -> list[Any]:
    if isinstance(aw, Deferred):
        d = aw
    elif hasattr(aw, "__await__"):
        d = Deferred.fromCoroutine(aw)
    else:
        return [aw]
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def value_of(out: list[Any]) -> Any:
    assert out, "not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def rg(version: int, *entries: tuple[PartitionId, str]) -> RGRecord:
    return RGRecord("rg0", version, [Member("b1"), Member("b2"), Member("b3")],
                    [PartitionEntry(p, s) for p, s in entries])


@attrs.define
class Brick:
    clock: Clock
    storage: Storage
    participant: Participant
    maps: MapState
    splits: Splits
    updates: list[RGUpdate]
    answer: list[Deferred[dict[str, Any]] | None]
    txids: int = 0

    def put(self, pid: PartitionId, key: bytes, value: bytes | None) -> None:
        version = self.storage.read(str(pid), key).version + 1
        self.storage.write(str(pid), key, value, version)

    def commit(self) -> None:
        self.clock.advance(0)           # group commit

    def adopt(self, rec: RGRecord) -> None:
        """What the brick does when it adopts a record: create listed replicas, drop
        unlisted ones (``bricks/replicas.py``, ``LocalReplicas.reconcile``)."""
        self.maps.merge([rec], source="test")
        mine = self.maps.my_partitions()
        for pid in mine:
            if not self.storage.has_partition(str(pid)):
                self.storage.open_partition(str(pid))
        for text in self.storage.partitions():
            if PartitionId.parse(text) not in mine:
                self.storage.drop_partition(text)

    def prepare_txn(self, pid: PartitionId, key: bytes) -> Any:
        self.txids += 1
        msg = Prepare(txid=(9, self.txids), ts=(9, self.txids), pid=str(pid), key=key,
                      op="put", value=b"x", expected_version=None, rg="rg0",
                      rg_version=1, rg_fp=0, timeout_ms=1000)
        return self.participant.prepare(msg, pid, lambda: None)

    def call(self, aw: Any) -> Any:
        out = outcome(aw)
        self.clock.advance(0)
        return value_of(out)


@pytest.fixture
def brick(tmp_path: Path) -> Iterator[Brick]:
    clock = Clock()
    metrics = Metrics()
    storage = Storage(tmp_path / "data", clock)
    maps = MapState("b1", tmp_path / "data", metrics)
    participant = Participant(storage, LockTable(clock), clock, metrics, lock_wait_s=1.0,
                              txn_deadline_s=5.0, on_deadline=lambda txn: None)
    updates: list[RGUpdate] = []
    answer: list[Deferred[dict[str, Any]] | None] = [None]

    async def update(msg: RGUpdate) -> dict[str, Any]:
        updates.append(msg)
        if answer[0] is not None:
            return await answer[0]
        return {"record": "new"}

    ctx = brick_context(tmp_path / "data", clock, storage, participant, metrics, maps=maps,
                        run_in_thread=inline)
    splits = Splits(ctx, tmp_path / "data" / "split-staging", update)
    b = Brick(clock, storage, participant, maps, splits, updates, answer)
    b.adopt(rg(1, (P, "active"), (OTHER, "active")))
    yield b
    splits.close()
    storage.close()


def rows(path: Path) -> dict[bytes, tuple[bytes | None, int]]:
    conn = sqlite3.connect(str(path))
    try:
        return {k: (v, ver) for k, v, ver in conn.execute("SELECT key, value, version FROM kv")}
    finally:
        conn.close()


def contents(b: Brick, pid: PartitionId) -> dict[bytes, tuple[bytes | None, int]]:
    return rows(b.storage.partition_path(str(pid)))


def fill(b: Brick) -> list[bytes]:
    """30 keys in P: versions 1..3, every fifth a tombstone."""
    ks = keys_of(P, 30)
    for i, k in enumerate(ks):
        for _ in range(i % 3 + 1):
            b.put(P, k, b"v%d-%d" % (i, b.storage.read(str(P), k).version))
        if i % 5 == 0:
            b.put(P, k, None)
    b.commit()
    return ks


def prepare(b: Brick, job: str = JOB, sources: tuple[PartitionId, ...] = (P,),
            targets: tuple[PartitionId, ...] = (C0, C1)) -> dict[str, Any]:
    reply: dict[str, Any] = b.call(b.splits.prepare(SplitPrepare(
        job=job, sources=[str(s) for s in sources], targets=[str(t) for t in targets])))
    return reply


def incoming(b: Brick) -> None:
    b.adopt(rg(2, (P, "active"), (OTHER, "active"), (C0, "incoming"), (C1, "incoming")))


# -- shapes -----------------------------------------------------------------------------------

def test_a_job_is_a_split_into_the_two_children_or_a_merge_of_two_siblings() -> None:
    assert reshape(["p1.0"], ["p2.0", "p2.2"]) == ((P,), (C0, C1))
    assert reshape(["p2.0", "p2.2"], ["p1.0"]) == ((C0, C1), (P,))
    for bad in ((["p1.0"], ["p2.0", "p2.1"]), (["p2.0", "p2.1"], ["p1.0"]),
                (["p0.0", "p0.0"], ["p0.0"]), (["x"], ["p1.0"]), (["p1.0"], ["p1.0"])):
        with pytest.raises(InvalidRequest):
            reshape(*bad)


# -- building -------------------------------------------------------------------------------------

def test_build_routes_every_row_to_the_child_that_owns_it_with_versions_and_tombstones(
        brick: Brick, tmp_path: Path) -> None:
    ks = fill(brick)
    brick.put(P, ks[1], b"staged")            # staged, not committed: not in the file
    source = contents(brick, P)
    out0, out1 = tmp_path / "c0.sqlite", tmp_path / "c1.sqlite"
    lsns, copied, foreign = build_targets(
        [(str(P), brick.storage.partition_path(str(P)))],
        [(str(C0), out0), (str(C1), out1)])
    assert foreign == 0 and copied == len(source) == 30
    assert lsns == {str(P): brick.storage.open_partition(str(P)).committed_lsn()}
    got0, got1 = rows(out0), rows(out1)
    assert got0 and got1 and not set(got0) & set(got1)
    assert all(C0.owns(k) for k in got0) and all(C1.owns(k) for k in got1)
    assert {**got0, **got1} == source
    assert any(v is None and ver > 1 for v, ver in source.values())    # tombstones kept
    assert not Path(str(out0) + "-wal").exists()
    # Each is a partition file of its child: the brick can install it.
    conn = sqlite3.connect(str(out0))
    assert dict(conn.execute("SELECT name, value FROM meta"))["partition"] == str(C0)
    conn.close()


def test_split_catches_up_with_later_writes_and_installs_the_children(brick: Brick) -> None:
    ks = fill(brick)
    reply = prepare(brick)
    assert reply["rows"] == 30
    status = brick.splits.status(SplitStatus(job=JOB))["jobs"][JOB]
    assert status["state"] == "prepared" and status["rows_done"] == 30
    # Writes go on after the snapshot: overwrites, removes, new keys.
    more = keys_of(P, 40)[30:]
    brick.put(P, ks[2], b"later")
    brick.put(P, ks[3], None)
    for k in more:
        brick.put(P, k, b"new")
    brick.commit()
    brick.put(P, ks[4], b"staged before the finish")       # flushed by the finish
    incoming(brick)
    assert brick.storage.has_partition(str(C0))            # empty replicas, as listed
    token = brick.call(brick.splits.fence(SplitFence(job=JOB)))["token"]
    result = brick.call(brick.splits.finish(SplitFinish(job=JOB)))
    source = contents(brick, P)
    c0, c1 = contents(brick, C0), contents(brick, C1)
    assert {**c0, **c1} == source and len(source) == 40
    both = {**c0, **c1}
    assert both[ks[2]] == (b"later", 4) and both[ks[3]] == (None, 2)
    assert both[ks[4]] == (b"staged before the finish", 3)
    live = sum(1 for v, _ in source.values() if v is not None)
    assert result["counts"][str(C0)] + result["counts"][str(C1)] == live
    assert brick.storage.read(str(C0), next(k for k in more if C0.owns(k))).value == b"new"
    # Installed children take writes with log positions after the copied ones.
    child_store = brick.storage.open_partition(str(C1))
    top = child_store.last_lsn()
    k = next(k for k in ks if C1.owns(k))
    brick.put(C1, k, b"after")
    brick.commit()
    assert child_store.last_lsn() == top + 1 and brick.storage.read(str(C1), k).value == b"after"
    # The cut-over by the leader (this brick), then the release.
    brick.call(brick.splits.cutover(SplitCutover(
        job=JOB, token=token, rg="rg0", version=2, fp=0, reason="test",
        partitions=[[str(OTHER), "active"], [str(C0), "active"], [str(C1), "active"]])))
    assert brick.updates[-1].partitions[1] == [str(C0), "active"]
    brick.call(brick.splits.release(SplitRelease(job=JOB)))
    assert brick.participant.fenced == {}
    assert list(brick.splits.work_dir.iterdir()) == []
    brick.adopt(rg(3, (OTHER, "active"), (C0, "active"), (C1, "active")))
    assert not brick.storage.has_partition(str(P))
    assert brick.storage.read(str(C1), k).value == b"after"


def test_merge_builds_the_parent_from_both_siblings(brick: Brick) -> None:
    brick.adopt(rg(2, (C0, "active"), (C1, "active"), (OTHER, "active")))
    k0, k1 = keys_of(C0, 10), keys_of(C1, 10)
    for k in k0:
        brick.put(C0, k, b"zero")
    for k in k1:
        brick.put(C1, k, b"one")
    brick.put(C1, k1[0], None)
    brick.commit()
    job = "merge-test-0001"
    prepare(brick, job, (C0, C1), (P,))
    brick.put(C0, k0[0], b"later")
    brick.commit()
    brick.adopt(rg(3, (C0, "active"), (C1, "active"), (OTHER, "active"), (P, "incoming")))
    brick.call(brick.splits.fence(SplitFence(job=job)))
    result = brick.call(brick.splits.finish(SplitFinish(job=job)))
    parent = contents(brick, P)
    assert parent == {**contents(brick, C0), **contents(brick, C1)}
    assert parent[k0[0]] == (b"later", 2) and parent[k1[0]] == (None, 2)
    assert result["counts"] == {str(P): 19}


def test_finish_is_refused_until_the_targets_are_incoming(brick: Brick) -> None:
    fill(brick)
    prepare(brick)
    with pytest.raises(Refused, match="not incoming"):
        brick.call(brick.splits.finish(SplitFinish(job=JOB)))
    assert brick.participant.fenced == {}
    incoming(brick)
    brick.call(brick.splits.finish(SplitFinish(job=JOB)))
    assert brick.call(brick.splits.finish(SplitFinish(job=JOB)))["rows"] == 0   # repeated


def test_a_repeated_prepare_starts_over_and_drops_the_old_files(brick: Brick) -> None:
    fill(brick)
    prepare(brick)
    first = sorted(brick.splits.work_dir.iterdir())
    prepare(brick)
    second = sorted(brick.splits.work_dir.iterdir())
    assert len(first) == len(second) == 2 and not set(first) & set(second)
    # Another job on the same partition supersedes a dead one (its fences go too).
    brick.call(brick.splits.fence(SplitFence(job=JOB)))
    prepare(brick, "split-test-0002")
    assert JOB not in brick.splits.jobs and brick.participant.fenced == {}


# -- fences ---------------------------------------------------------------------------------------

def test_the_leader_fence_stops_writes_and_lapses_so_the_cutover_is_refused(
        brick: Brick) -> None:
    ks = fill(brick)
    prepare(brick)
    incoming(brick)
    token = brick.call(brick.splits.fence(SplitFence(job=JOB)))["token"]
    assert brick.call(brick.splits.fence(SplitFence(job=JOB)))["token"] == token  # again
    with pytest.raises(Recovering):
        brick.prepare_txn(P, ks[0])
    brick.prepare_txn(OTHER, keys_of(OTHER, 1)[0])          # only the sources are fenced
    brick.call(brick.splits.finish(SplitFinish(job=JOB)))
    brick.clock.advance(FENCE_S + 0.1)
    assert brick.participant.fenced == {}                   # both fences lapsed
    brick.prepare_txn(P, ks[1])
    with pytest.raises(Refused, match="lifted"):
        brick.call(brick.splits.cutover(SplitCutover(
            job=JOB, token=token, rg="rg0", version=2, fp=0,
            partitions=[[str(C0), "active"], [str(C1), "active"]])))
    assert brick.updates == []


def test_a_fence_drains_prepared_transactions_first(brick: Brick) -> None:
    ks = fill(brick)
    prepare(brick)
    brick.prepare_txn(P, ks[0])
    brick.clock.advance(0)
    fenced = outcome(brick.splits.fence(SplitFence(job=JOB)))
    brick.clock.advance(0.5)
    assert not fenced                                       # waits for the transaction
    brick.participant.commit((9, 1))
    brick.clock.advance(0)
    brick.clock.advance(0)
    assert "token" in value_of(fenced)


def test_a_fence_whose_drain_does_not_finish_within_its_bound_is_lifted_at_once(
        brick: Brick) -> None:
    """The drain waits ``Participant.DRAIN_S``, not the fence's whole lapse: writes to
    the sources are refused meanwhile, so a transaction that does not resolve (a dead
    coordinator, an unreachable member) rolls the split back promptly."""
    ks = fill(brick)
    prepare(brick)
    brick.prepare_txn(P, ks[0])
    brick.clock.advance(0)
    fenced = outcome(brick.splits.fence(SplitFence(job=JOB)))
    brick.clock.advance(Participant.DRAIN_S - 0.01)
    assert not fenced and brick.participant.fenced != {}
    brick.clock.advance(0.01)
    with pytest.raises(Timeout, match="did not resolve within 1s; fence lifted"):
        value_of(fenced)
    assert brick.participant.fenced == {} and Participant.DRAIN_S < FENCE_S


def test_the_cutover_pins_the_fence_until_the_record_change_is_decided(
        brick: Brick) -> None:
    fill(brick)
    prepare(brick)
    incoming(brick)
    token = brick.call(brick.splits.fence(SplitFence(job=JOB)))["token"]
    brick.call(brick.splits.finish(SplitFinish(job=JOB)))
    with pytest.raises(Refused, match="token|taken again"):
        brick.call(brick.splits.cutover(SplitCutover(
            job=JOB, token=token + 1, rg="rg0", version=2, fp=0,
            partitions=[[str(C0), "active"], [str(C1), "active"]])))
    with pytest.raises(InvalidRequest):                    # the sources must go
        brick.call(brick.splits.cutover(SplitCutover(
            job=JOB, token=token, rg="rg0", version=2, fp=0,
            partitions=[[str(P), "active"], [str(C0), "active"], [str(C1), "active"]])))
    decided: Deferred[dict[str, Any]] = Deferred()
    brick.answer[0] = decided
    cut = outcome(brick.splits.cutover(SplitCutover(
        job=JOB, token=token, rg="rg0", version=2, fp=0,
        partitions=[[str(C0), "active"], [str(C1), "active"]])))
    aborted = outcome(brick.splits.abort(SplitAbort(job=JOB)))
    brick.clock.advance(3 * FENCE_S)
    assert P in brick.participant.fenced and not cut and not aborted
    decided.callback({"record": "new"})
    assert value_of(cut) == {"record": "new"}
    assert value_of(aborted) == {"cutover_in_flight": True}
    assert brick.participant.fenced == {}


def test_abort_lifts_the_fences_deletes_the_staged_files_and_bars_the_job(
        brick: Brick) -> None:
    fill(brick)
    prepare(brick)
    token = brick.call(brick.splits.fence(SplitFence(job=JOB)))["token"]
    assert brick.participant.fenced and len(list(brick.splits.work_dir.iterdir())) == 2
    assert brick.call(brick.splits.abort(SplitAbort(job=JOB, reason="test"))) == {
        "cutover_in_flight": False}
    assert brick.participant.fenced == {} and list(brick.splits.work_dir.iterdir()) == []
    with pytest.raises(Refused, match="aborted"):
        brick.call(brick.splits.cutover(SplitCutover(
            job=JOB, token=token, rg="rg0", version=2, fp=0,
            partitions=[[str(C0), "active"], [str(C1), "active"]])))
    with pytest.raises(Refused, match="aborted"):
        prepare(brick)
    assert brick.call(brick.splits.abort(SplitAbort(job="unknown-job"))) == {
        "cutover_in_flight": False}


def test_a_job_nobody_asks_about_expires(brick: Brick) -> None:
    fill(brick)
    prepare(brick)
    brick.clock.advance(EXPIRE_S * 1.5)
    assert brick.splits.jobs == {} and list(brick.splits.work_dir.iterdir()) == []
    assert brick.splits.status(SplitStatus(job=JOB))["ended"] == "expired"


def test_a_restarted_brick_deletes_staged_files_and_knows_no_job(brick: Brick,
                                                                 tmp_path: Path) -> None:
    fill(brick)
    prepare(brick)
    ctx = brick_context(tmp_path / "data", brick.clock, brick.storage, brick.participant,
                        Metrics(), maps=brick.maps, run_in_thread=inline)
    again = Splits(ctx, brick.splits.work_dir, lambda m: None)  # type: ignore[arg-type,return-value]
    assert list(again.work_dir.iterdir()) == []
    with pytest.raises(Refused, match="restarted"):
        brick.call(again.finish(SplitFinish(job=JOB)))


def test_a_dropped_source_is_freed_gradually_after_the_release(brick: Brick) -> None:
    fill(brick)
    prepare(brick)
    incoming(brick)
    brick.call(brick.splits.fence(SplitFence(job=JOB)))
    brick.call(brick.splits.finish(SplitFinish(job=JOB)))
    path = brick.storage.partition_path(str(P))
    brick.adopt(rg(3, (OTHER, "active"), (C0, "active"), (C1, "active")))
    # Storage.drop_partition renames the file and frees it a few MB at a time
    # (bricks/discard.py, tested with files larger than a step in test_snapshot.py).
    assert not path.exists()
    brick.call(brick.splits.release(SplitRelease(job=JOB)))
    brick.clock.advance(60)
    assert list(path.parent.glob(path.name + "*")) == []
