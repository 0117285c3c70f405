"""Unit tests of dds.bricks.journal: a real SQLite file in tmp_path, time from a Clock."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from dds.bricks.journal import JOURNAL_FILE, KEEP_FINISHED_S, Journal
from dds.errors import InvalidRequest
from dds.messages import JournalRead, JournalWrite, Message, decode_request
from dds.metrics import Metrics

PLAN = {"pid": "p3.1", "from": "rg1", "to": "rg4", "bytes": 1 << 40,
        "steps": ["incoming", "snapshot", "fence", "delta", "activate", "drop"],
        "nested": {"list": [1, "two", None, True, 2.5], "empty": {}}}


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1_700_000_000)
    return c


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Iterator[Journal]:
    j = Journal(tmp_path, clock, Metrics())
    yield j
    j.close()


def write(j: Journal, job: str = "move-1", **kw: Any) -> dict[str, Any]:
    # Through decode_request, as the brick sees it: the message's own validation applies.
    msg = decode_request("journal_write", {"job": job, **kw})
    assert isinstance(msg, JournalWrite)
    result: dict[str, Any] = j.write(msg)["job"]
    return result


def read(j: Journal, **kw: Any) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = j.read(JournalRead(**kw))["jobs"]
    return jobs


def steps(job: dict[str, Any]) -> list[str]:
    return [s["name"] for s in job["steps"]]


def test_create_stores_the_plan_as_given(journal: Journal, clock: Clock) -> None:
    job = write(journal, kind="move", plan=PLAN)
    assert job == {"job": "move-1", "kind": "move", "plan": PLAN, "steps": [],
                   "state": "running", "created": clock.seconds(),
                   "updated": clock.seconds()}
    assert read(journal) == [job]
    assert list(read(journal)[0]["plan"]) == list(PLAN)     # in the order given
    assert journal.metrics.counters["journal_writes_total"] == 1


def test_nothing_exists_before_first_use(tmp_path: Path, clock: Clock) -> None:
    """A brick that never journals keeps no file (the simulation builds many bricks)."""
    Journal(tmp_path, clock, Metrics())
    assert not (tmp_path / JOURNAL_FILE).exists()


def test_create_again_with_the_same_plan_is_a_no_op(journal: Journal,
                                                    clock: Clock) -> None:
    first = write(journal, kind="move", plan=PLAN)
    clock.advance(5)
    again = write(journal, kind="move", plan=dict(reversed(list(PLAN.items()))))
    assert again == first


@pytest.mark.parametrize("kind, plan, what", [
    ("move", {**PLAN, "to": "rg5"}, "another plan"),
    ("split", PLAN, "kind 'move', not 'split'"),
])
def test_create_again_with_another_plan_is_refused(journal: Journal, kind: str,
                                                   plan: dict[str, Any], what: str) -> None:
    write(journal, kind="move", plan=PLAN)
    with pytest.raises(InvalidRequest, match=what):
        write(journal, kind=kind, plan=plan)
    assert read(journal)[0]["plan"] == PLAN


@pytest.mark.parametrize("body, match", [
    ({"kind": "move"}, "needs both kind and plan"),
    ({"plan": PLAN}, "needs both kind and plan"),
    ({}, "nothing to write"),
    ({"kind": "move", "plan": {"k": b"bytes"}}, r"plan\.k: a bytes is not a JSON value"),
    ({"kind": "move", "plan": {"x": float("nan")}}, "not a JSON number"),
    ({"kind": "bad kind!", "plan": {}}, "invalid job kind"),
])
def test_bad_creates_are_refused(journal: Journal, body: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        write(journal, **body)
    assert read(journal, unfinished=False) == []


def test_bad_job_ids_are_refused(journal: Journal) -> None:
    for job in ("", "a b", "x" * 200, "../etc"):
        with pytest.raises(InvalidRequest, match="invalid job id"):
            write(journal, job=job, kind="move", plan={})


def test_steps_are_appended_in_order_and_a_repeat_is_a_no_op(journal: Journal,
                                                             clock: Clock) -> None:
    write(journal, kind="move", plan=PLAN)
    clock.advance(1)
    write(journal, step={"name": "incoming"})
    clock.advance(1)
    job = write(journal, step={"name": "snapshot", "bytes": 1234, "files": ["a", "b"]})
    assert job["steps"] == [
        {"name": "incoming", "seq": 1, "at": job["created"] + 1},
        {"name": "snapshot", "bytes": 1234, "files": ["a", "b"], "seq": 2,
         "at": job["created"] + 2}]
    assert job["updated"] == job["created"] + 2
    clock.advance(1)
    again = write(journal, step={"files": ["a", "b"], "bytes": 1234, "name": "snapshot"})
    assert again == job


def test_a_step_again_with_other_data_is_refused(journal: Journal) -> None:
    write(journal, kind="move", plan=PLAN, step={"name": "snapshot", "bytes": 1})
    with pytest.raises(InvalidRequest, match="already has step 'snapshot' with other data"):
        write(journal, step={"name": "snapshot", "bytes": 2})
    assert steps(read(journal)[0]) == ["snapshot"]


@pytest.mark.parametrize("step, match", [
    ({}, "needs a non-empty string 'name'"),
    ({"name": ""}, "needs a non-empty string 'name'"),
    ({"name": 3}, "needs a non-empty string 'name'"),
    ({"name": "x", "at": 1}, "may not carry 'at'"),
    ({"name": "x", "seq": 1}, "may not carry 'seq'"),
    ({"name": "x", "data": {1: 2}}, "is not a string"),
])
def test_bad_steps_are_refused(journal: Journal, step: dict[str, Any], match: str) -> None:
    write(journal, kind="move", plan=PLAN)
    with pytest.raises(InvalidRequest, match=match):
        write(journal, step=step)
    assert read(journal)[0]["steps"] == []


def test_create_step_and_state_in_one_write(journal: Journal) -> None:
    job = write(journal, kind="split", plan={"pid": "p1.0"}, step={"name": "only"},
                state="done")
    assert (steps(job), job["state"]) == (["only"], "done")


def test_unknown_job_is_named(journal: Journal) -> None:
    with pytest.raises(InvalidRequest, match="unknown job 'move-9'"):
        write(journal, job="move-9", step={"name": "x"})
    with pytest.raises(InvalidRequest, match="unknown job 'move-9'"):
        write(journal, job="move-9", state="cancel-requested")
    assert read(journal, job="move-9") == []


def test_states_are_validated(journal: Journal) -> None:
    write(journal, kind="move", plan=PLAN)
    with pytest.raises(InvalidRequest, match="unknown state 'finished'"):
        write(journal, state="finished")
    assert write(journal, state="running")["state"] == "running"
    assert write(journal, state="cancel-requested")["state"] == "cancel-requested"
    with pytest.raises(InvalidRequest, match="cancel request; it cannot become running"):
        write(journal, state="running")
    assert write(journal, step={"name": "rolled back the copy"})["state"] == \
        "cancel-requested"
    assert write(journal, state="rolled-back")["state"] == "rolled-back"
    assert write(journal, state="rolled-back")["state"] == "rolled-back"
    for state in ("done", "running", "cancel-requested"):
        with pytest.raises(InvalidRequest, match="already rolled-back"):
            write(journal, state=state)
    with pytest.raises(InvalidRequest, match="is rolled-back: no more steps"):
        write(journal, step={"name": "late"})
    # A retried last step of a finished job is still a no-op, not an error.
    assert steps(write(journal, step={"name": "rolled back the copy"})) == [
        "rolled back the copy"]


def test_read_unfinished_or_all_newest_first(journal: Journal, clock: Clock) -> None:
    for i, state in enumerate(["done", "running", "cancel-requested", "failed"]):
        clock.advance(10)
        write(journal, job=f"j{i}", kind="move", plan={"i": i}, state=state)
    assert [j["job"] for j in read(journal)] == ["j2", "j1"]
    assert [j["job"] for j in read(journal, unfinished=False)] == ["j3", "j2", "j1", "j0"]
    # One job by id, whatever its state.
    assert [j["state"] for j in read(journal, job="j0")] == ["done"]
    assert journal.read(JournalRead())["now"] == clock.seconds()


def test_everything_survives_reopening(tmp_path: Path, clock: Clock) -> None:
    j = Journal(tmp_path, clock, Metrics())
    write(j, kind="move", plan=PLAN, step={"name": "incoming"})
    write(j, step={"name": "snapshot", "bytes": 5}, state="cancel-requested")
    before = read(j)
    j.close()
    again = Journal(tmp_path, clock, Metrics())
    try:
        assert read(again) == before
        assert steps(write(again, step={"name": "delta"})) == ["incoming", "snapshot",
                                                               "delta"]
    finally:
        again.close()
    conn = sqlite3.connect(str(tmp_path / JOURNAL_FILE))
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM steps").fetchone() == (3,)
    finally:
        conn.close()


def test_finished_jobs_are_dropped_after_a_week(tmp_path: Path, clock: Clock) -> None:
    j = Journal(tmp_path, clock, Metrics())
    write(j, job="old", kind="move", plan={}, step={"name": "a"}, state="done")
    write(j, job="stuck", kind="move", plan={})
    clock.advance(KEEP_FINISHED_S - 1)
    write(j, job="new", kind="move", plan={}, state="done")
    assert {x["job"] for x in read(j, unfinished=False)} == {"old", "stuck", "new"}
    clock.advance(2)
    write(j, job="newer", kind="move", plan={}, state="failed")   # a finish prunes
    assert {x["job"] for x in read(j, unfinished=False)} == {"stuck", "new", "newer"}
    j.close()
    clock.advance(KEEP_FINISHED_S + 1)
    reopened = Journal(tmp_path, clock, Metrics())                   # so does opening
    try:
        # An unfinished job is never dropped: repair needs it however old it is.
        assert [x["job"] for x in read(reopened, unfinished=False)] == ["stuck"]
        assert reopened.metrics.counters["journal_jobs_dropped_total"] == 2
    finally:
        reopened.close()
    conn = sqlite3.connect(str(tmp_path / JOURNAL_FILE))
    try:
        assert conn.execute("SELECT count(*) FROM steps").fetchone() == (0,)
    finally:
        conn.close()


def test_only_the_newest_finished_jobs_are_kept(journal: Journal, clock: Clock,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dds.bricks.journal.KEEP_FINISHED", 3)
    write(journal, job="open", kind="move", plan={})
    for i in range(5):
        clock.advance(1)
        write(journal, job=f"j{i}", kind="move", plan={}, state="done")
    assert [x["job"] for x in read(journal, unfinished=False)] == ["j4", "j3", "j2",
                                                                   "open"]


# -- the admin side (dds.tools.jobs) over in-process journals --------------------------------

class Bricks:
    """Journals of several bricks behind a :data:`BrickCall`, as the wire would carry
    them (requests decoded and validated, errors raised as the brick raises them)."""

    def __init__(self, root: Path, clock: Clock, ids: list[str]) -> None:
        self.journals = {b: Journal(root / b, clock, Metrics()) for b in ids}
        for b in ids:
            (root / b).mkdir()
        self.down: set[str] = set()

    async def call(self, brick: str, request: Message) -> dict[str, Any]:
        if brick in self.down:
            from dds.errors import ConnectionLost
            raise ConnectionLost(f"cannot connect to {brick}: connection refused")
        msg = decode_request(request.TYPE, request.to_wire())
        j = self.journals[brick]
        if isinstance(msg, JournalWrite):
            return j.write(msg)
        assert isinstance(msg, JournalRead)
        return j.read(msg)

    def jobs(self, brick: str, unfinished: bool = False) -> list[dict[str, Any]]:
        return read(self.journals[brick], unfinished=unfinished)

    def close(self) -> None:
        for j in self.journals.values():
            j.close()


def run(coro: Any) -> Any:
    """Run a coroutine that never waits on the reactor (the fake bricks answer at once)."""
    from twisted.internet.defer import Deferred
    out: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(out.append)
    assert out, "the coroutine waited for something"
    if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


@pytest.fixture
def bricks(tmp_path: Path, clock: Clock) -> Iterator[Bricks]:
    b = Bricks(tmp_path, clock, ["b1", "b2", "b3"])
    yield b
    b.close()


def make_job(bricks: Bricks, ids: list[str], warn: Any = None) -> Any:
    from dds.tools.cluster import Target
    from dds.tools.jobs import Job
    target = Target((("127.0.0.1", 1),), b"x")
    return run(Job.create(None, target, "move", PLAN, {b: ("127.0.0.1", 1) for b in ids},
                          call=bricks.call, warn=warn))


def test_job_writes_plan_and_steps_to_every_brick(bricks: Bricks) -> None:
    from dds.tools.jobs import new_job_id
    job = make_job(bricks, ["b1", "b2"])
    assert job.id.startswith("move-") and len(job.id) == len(new_job_id("move"))
    run(job.step("incoming", pid="p3.1"))
    run(job.step("snapshot", bytes=10))
    run(job.step("snapshot", bytes=10))         # a retried step is harmless
    assert job.done("incoming") and not job.done("fence")
    for b in ("b1", "b2"):
        [held] = bricks.jobs(b)
        assert (held["job"], held["plan"], steps(held)) == (job.id, PLAN,
                                                            ["incoming", "snapshot"])
    assert bricks.jobs("b3") == []
    assert not run(job.cancel_requested())
    bricks.journals["b2"].write(JournalWrite(job.id, state="cancel-requested"))
    assert run(job.cancel_requested())
    # The tool records its rollback and the outcome; the cancel request does not stop that.
    run(job.step("rolled back incoming"))
    run(job.finish("rolled-back"))
    assert {bricks.jobs(b)[0]["state"] for b in ("b1", "b2")} == {"rolled-back"}


def test_job_survives_an_unreachable_brick_and_catches_it_up(bricks: Bricks) -> None:
    from dds.tools.jobs import merge
    warnings: list[str] = []
    bricks.down.add("b3")
    job = make_job(bricks, ["b1", "b2", "b3"], warn=warnings.append)
    run(job.step("incoming"))
    assert len(warnings) == 2 and all("journal of b3 not written" in w for w in warnings)
    assert job.warnings == warnings
    bricks.down.clear()
    run(job.step("snapshot"))                   # b3 gets the plan with this step
    [late] = bricks.jobs("b3")
    assert (late["plan"], steps(late)) == (PLAN, ["snapshot"])
    view = merge({b: (bricks.jobs(b)[0], 0.0) for b in ("b1", "b3")})
    assert [s["name"] for s in view.steps] == ["incoming", "snapshot"]


def test_job_fails_when_no_brick_takes_the_plan(bricks: Bricks) -> None:
    from dds.tools.runner import AdminError
    bricks.down.update(["b1", "b2"])
    with pytest.raises(AdminError, match="could not be journaled on any brick"):
        make_job(bricks, ["b1", "b2"])


def test_a_refusing_brick_stops_the_tool(bricks: Bricks) -> None:
    from dds.tools.jobs import JobConflict
    job = make_job(bricks, ["b1", "b2"])
    bricks.journals["b1"].write(JournalWrite(job.id, state="rolled-back"))  # repair did
    with pytest.raises(JobConflict, match="b1 refused step delta"):
        run(job.step("delta"))


def test_merge_prefers_the_most_advanced_state_and_unions_steps(bricks: Bricks,
                                                                clock: Clock) -> None:
    from dds.tools.cluster import Target
    from dds.tools.jobs import Job, merge
    job = make_job(bricks, ["b1", "b2", "b3"])
    run(job.step("a"))
    bricks.down.add("b3")                       # b3 misses the rest
    clock.advance(1)
    run(job.step("b"))
    bricks.down = {"b1"}                        # b1 misses the end
    clock.advance(1)
    run(job.finish("done"))
    held = {b: (bricks.jobs(b)[0], clock.seconds() + 10) for b in ("b1", "b2", "b3")}
    view = merge(held)
    assert (view.state, view.unfinished) == ("done", False)
    assert view.bricks == {"b1": "running", "b2": "done", "b3": "done"}
    assert [s["name"] for s in view.steps] == ["a", "b"] and view.done("b")
    assert view.age_s == 12 and view.problems == ()
    # Without the bricks that saw the end, it is unfinished: repair resumes it.
    partial = merge({"b1": held["b1"]})
    assert (partial.state, [s["name"] for s in partial.steps]) == ("running", ["a", "b"])
    resumed = Job.resume(None, Target((("h", 1),), b"x"), partial,
                         {"b1": ("h", 1)}, call=bricks.call)
    assert resumed.done("a") and resumed.done("b") and not resumed.done("c")
    assert resumed.steps["a"] == {"name": "a"}
