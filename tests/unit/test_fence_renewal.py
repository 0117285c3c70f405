"""Fences renewed by their holder (``dds.fencerenew``): a split's or a move's write fence
lives only while the tool that took it keeps renewing it, so a tool killed under the fence
pauses writes for the short lapse, not the fence's long bound (issue 15)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dds.errors import InvalidRequest, Refused
from dds.fencerenew import CopyFenceRenew, SplitFenceRenew
from dds.messages import SplitCutover, SplitFence, SplitFinish
from dds.metrics import Metrics

from dds.bricks.copy.source import CopySessions
from dds.bricks.locks import LockTable
from dds.bricks.mapstate import MapState
from dds.bricks.participant import Participant
from dds.bricks.split import FENCE_S
from dds.bricks.storage import Storage

from tests.unit.brickctx import brick_context
from tests.unit.test_copysource import P0, P1, fence, inline, outcome, state, value_of
from tests.unit.test_split import (C0, C1, JOB, P, Brick, brick, fill, incoming, prepare,
                                   rg)

__all__ = ["brick"]     # the fixture, imported for the split tests

LAPSE_MS = 2000
LAPSE_S = LAPSE_MS / 1000


def renew(b: Brick, job: str = JOB) -> dict[str, Any]:
    return b.splits.renew(SplitFenceRenew(job=job, lapse_ms=LAPSE_MS))


def fenced_for_cutover(b: Brick) -> int:
    fill(b)
    prepare(b)
    incoming(b)
    renew(b)
    token: int = b.call(b.splits.fence(SplitFence(job=JOB)))["token"]
    b.call(b.splits.finish(SplitFinish(job=JOB)))
    return token


# -- split and merge ------------------------------------------------------------------------

def test_a_renewed_split_fence_holds_and_lapses_once_its_tool_stops_renewing(
        brick: Brick) -> None:
    fenced_for_cutover(brick)
    for _ in range(10):                         # 5 s of renewals, every half second
        brick.clock.advance(LAPSE_S / 4)
        assert renew(brick) == {"held": ["leader", "local"], "known": True}
    assert P in brick.participant.fenced
    brick.clock.advance(LAPSE_S - 0.01)
    assert P in brick.participant.fenced
    brick.clock.advance(0.01)
    assert brick.participant.fenced == {}       # both fences: well before FENCE_S
    status = brick.splits.jobs[JOB].to_wire(brick.clock.seconds())
    assert "no renewal from its tool for 2s" in status["leader_fence"]["why"]
    assert brick.splits.metrics.counters["split_fences_lapsed_total"] == 2


def test_a_renewal_before_the_fence_makes_the_fence_start_with_the_short_lapse(
        brick: Brick) -> None:
    fenced_for_cutover(brick)                   # renewed once, before the fence
    brick.clock.advance(LAPSE_S)
    assert brick.participant.fenced == {}


def test_a_split_fence_never_renewed_keeps_its_long_bound(brick: Brick) -> None:
    """An older tool that does not renew: the fence lapses after ``FENCE_S`` as before."""
    fill(brick)
    prepare(brick)
    brick.call(brick.splits.fence(SplitFence(job=JOB)))
    brick.clock.advance(FENCE_S - 0.1)
    assert P in brick.participant.fenced
    brick.clock.advance(0.1)
    assert brick.participant.fenced == {}


def test_renewals_do_not_hold_a_split_fence_past_its_long_bound(brick: Brick) -> None:
    fenced_for_cutover(brick)
    while brick.clock.seconds() < FENCE_S - 0.5:
        brick.clock.advance(0.5)
        renew(brick)
    brick.clock.advance(0.5)
    assert brick.participant.fenced == {}


def test_a_pinned_fence_outlives_the_lapse_and_lapses_soon_after_a_failed_cutover(
        brick: Brick) -> None:
    token = fenced_for_cutover(brick)
    decided: Deferred[dict[str, Any]] = Deferred()
    brick.answer[0] = decided
    cut = outcome(brick.splits.cutover(SplitCutover(
        job=JOB, token=token, rg="rg0", version=2, fp=0,
        partitions=[[str(C0), "active"], [str(C1), "active"]])))
    brick.clock.advance(10 * LAPSE_S)           # the tool is gone; the change undecided
    assert P in brick.participant.fenced and not cut
    decided.errback(Refused("the record change failed"))
    with pytest.raises(Refused):
        value_of(cut)
    assert P in brick.participant.fenced
    brick.clock.advance(LAPSE_S)                # not FENCE_S: the tool is silent
    assert brick.participant.fenced == {}


def test_a_renewal_of_a_job_this_brick_does_not_know_says_so(brick: Brick) -> None:
    assert renew(brick, "split-unknown-0001") == {"held": [], "known": False}


def test_a_renewal_asking_for_a_lapse_out_of_bounds_is_refused_naming_it() -> None:
    from dds.messages import decode_request
    with pytest.raises(InvalidRequest, match="split_fence_renew"):
        decode_request("split_fence_renew", {"job": JOB, "lapse_ms": 5})
    with pytest.raises(InvalidRequest, match="copy_fence_renew"):
        decode_request("copy_fence_renew", {"session": 1, "lapse_ms": 10**9})


# -- a move's copy session ------------------------------------------------------------------

@attrs.define
class Source:
    clock: Clock
    participant: Participant
    sessions: CopySessions
    metrics: Metrics
    maps: MapState

    def record(self, version: int, state: str) -> None:
        """This brick's record of rg0, which lists P0 in ``state``."""
        self.maps.merge([rg(version, (P0, state), (P1, "active"))], source="test")


@pytest.fixture
def src(tmp_path: Path) -> Iterator[Source]:
    clock = Clock()
    storage = Storage(tmp_path / "source", clock)
    for pid in (P0, P1):
        storage.open_partition(str(pid))
        storage.write(str(pid), b"k", b"v", 1)
    clock.advance(0)
    metrics = Metrics()
    participant = Participant(storage, LockTable(clock), clock, metrics, lock_wait_s=1.0,
                              txn_deadline_s=5.0, on_deadline=lambda txn: None)
    (tmp_path / "ctx").mkdir()
    maps = MapState("b1", tmp_path / "ctx", metrics)
    ctx = brick_context(tmp_path / "ctx", clock, storage, participant, metrics, maps=maps,
                        run_in_thread=inline, rng=random.Random(1))
    sessions = CopySessions(ctx, tmp_path / "snapshots", 10.0)
    source = Source(clock, participant, sessions, metrics, maps)
    source.record(1, "active")
    yield source
    sessions.close()
    storage.close()


def begin_move(s: Source) -> int:
    reply = value_of(outcome(s.sessions.begin("rg0", "b4", [P0], False, move=True)))
    sid: int = reply["session"]
    return sid


def renew_copy(s: Source, sid: int) -> dict[str, Any]:
    return s.sessions.renew(sid, LAPSE_S)


def test_a_moves_fence_lapses_when_its_tool_stops_renewing(src: Source) -> None:
    """Without renewals a move's fence is held until dds-admin lifts it (repair); with
    them, it is lifted (the session cancelled, so the move rolls back) after the lapse."""
    sid = begin_move(src)
    assert renew_copy(src, sid) == {"held": False, "known": True}
    fence(src, sid)
    assert state(src, sid) == "readmitting" and P0 in src.participant.fenced
    for _ in range(6):
        src.clock.advance(LAPSE_S / 4)
        assert renew_copy(src, sid) == {"held": True, "known": True}
    src.clock.advance(LAPSE_S)
    assert src.participant.fenced == {} and state(src, sid) == "cancelled"
    assert src.metrics.counters["copy_fences_lapsed_total"] == 1
    assert renew_copy(src, sid) == {"held": False, "known": False}


def test_a_moves_fence_is_kept_once_the_record_lists_the_partition_outgoing(
        src: Source) -> None:
    """From the ``outgoing`` record on, writes are refused by the record itself, and
    repair finishes the move only if the fence still holds: a silent tool does not
    lift it then."""
    sid = begin_move(src)
    renew_copy(src, sid)
    fence(src, sid)
    src.record(2, "outgoing")
    src.clock.advance(10 * LAPSE_S)
    assert P0 in src.participant.fenced and state(src, sid) == "readmitting"


def test_a_moves_fence_never_renewed_is_held_until_lifted(src: Source) -> None:
    sid = begin_move(src)
    fence(src, sid)
    src.clock.advance(100.0)
    assert P0 in src.participant.fenced and state(src, sid) == "readmitting"


def test_a_recoverys_readmission_keeps_its_fence_whatever_the_renewals(src: Source) -> None:
    """A recovery's readmission is a record change this brick runs: its fence is not its
    holder's to drop."""
    reply = value_of(outcome(src.sessions.begin("rg0", "b2", [P0, P1], False)))
    sid = reply["session"]
    renew_copy(src, sid)
    fence(src, sid)
    src.sessions.readmitting(sid)
    src.clock.advance(30.0)
    assert state(src, sid) == "readmitting" and P0 in src.participant.fenced


# -- the holder's side ----------------------------------------------------------------------

def test_a_keeper_renews_at_once_then_every_interval_until_stopped() -> None:
    from dds.fencerenew import RENEW_S, FenceKeeper
    clock = Clock()
    sent: list[tuple[float, str]] = []

    async def send(brick: str, msg: Any, timeout: float) -> dict[str, Any]:
        sent.append((clock.seconds(), brick))
        return {}
    msg = SplitFenceRenew(job=JOB, lapse_ms=LAPSE_MS)
    keeper = FenceKeeper(clock, send, [("b1", msg), ("b2", msg)])
    started = outcome(keeper.start())
    assert started and sent == [(0.0, "b1"), (0.0, "b2")]   # before the fence is taken
    clock.advance(RENEW_S)
    clock.advance(RENEW_S)
    assert [t for t, _ in sent] == [0.0, 0.0, RENEW_S, RENEW_S, 2 * RENEW_S, 2 * RENEW_S]
    keeper.stop()
    clock.advance(10 * RENEW_S)
    assert len(sent) == 6


def test_a_keeper_does_not_pile_renewals_on_a_brick_that_has_not_answered() -> None:
    from dds.fencerenew import RENEW_S, FenceKeeper
    clock = Clock()
    pending: list[Deferred[dict[str, Any]]] = []

    def send(brick: str, msg: Any, timeout: float) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        pending.append(d)
        return d
    keeper = FenceKeeper(clock, send, [("b1", SplitFenceRenew(job=JOB, lapse_ms=LAPSE_MS))])
    start = outcome(keeper.start())
    assert len(pending) == 1 and not start          # the first round is waited for
    pending[0].errback(Refused("slow brick"))       # a failed renewal is no error
    assert start and keeper.failed == 1
    clock.advance(RENEW_S)
    assert len(pending) == 2
    clock.advance(RENEW_S)
    assert len(pending) == 2                        # still in flight: skipped
    pending[1].callback({})
    clock.advance(RENEW_S)
    assert len(pending) == 3
    keeper.stop()


# -- a brick that did not run ---------------------------------------------------------------

def test_a_split_fence_whose_brick_stalled_gives_its_tool_another_lapse(brick: Brick) -> None:
    """A paused brick's timer fires late, before it reads the renewals that queued up
    meanwhile: the fence is not lifted for the holder's silence then."""
    from dds.fencerenew import STALL_S
    fenced_for_cutover(brick)
    brick.clock.advance(LAPSE_S + STALL_S + 0.5)    # one late firing: this brick stalled
    assert P in brick.participant.fenced
    renew(brick)                                    # the queued renewals, read now
    brick.clock.advance(LAPSE_S - 0.01)
    assert P in brick.participant.fenced
    brick.clock.advance(0.01)
    assert brick.participant.fenced == {}


def test_a_moves_fence_whose_brick_stalled_gives_its_tool_another_lapse(src: Source) -> None:
    from dds.fencerenew import STALL_S
    sid = begin_move(src)
    renew_copy(src, sid)
    fence(src, sid)
    src.clock.advance(LAPSE_S + STALL_S + 0.5)
    assert state(src, sid) == "readmitting"
    src.clock.advance(LAPSE_S)                      # and no renewal after all
    assert state(src, sid) == "cancelled"
