"""Failpoints (dds/failpoints.py): parsing, arming, each action, and the hooks in the 2PC
code driven on the in-memory network.

Actions that end or stop the process (crash, pause) and the environment variable (read
at import) are tested in a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dds import failpoints
from dds.bricks.partstore import ReadResult
from dds.errors import Exists, Indeterminate, InternalError, InvalidRequest
from dds.failpoints import CRASH_EXIT_CODE, FailpointError
from dds.messages import Failpoint, decode_request
from tests.harness.processes import wait_until
from tests.sim.network import SimCluster

SUBPROCESS_TIMEOUT_S = 60.0


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    failpoints.clear()
    yield
    failpoints.clear()


def run_python(code: str, env: dict[str, str] | None = None,
               timeout: float = SUBPROCESS_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != failpoints.ENV_VAR}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# -- parsing -------------------------------------------------------------------------------

def test_a_spec_with_every_kind_of_action_parses() -> None:
    spec = (" prepare.before_vote = crash ;commit.before_apply=sleep:0.25;"
            "coordinator.after_prepare=count:3:error; prepare.after_vote=pause;;")
    parsed = failpoints.parse_spec(spec)
    assert {n: str(a) for n, a in parsed.items()} == {
        "prepare.before_vote": "crash",
        "commit.before_apply": "sleep:0.25",
        "coordinator.after_prepare": "count:3:error",
        "prepare.after_vote": "pause",
    }
    assert parsed["commit.before_apply"].seconds == 0.25
    assert parsed["coordinator.after_prepare"].on_hit == 3
    assert failpoints.parse_spec("") == {}


@pytest.mark.parametrize("entry, problem", [
    ("bogus.point=crash", "unknown failpoint 'bogus.point'; known: prepare.before_vote"),
    ("prepare.before_vote=explode", "bad action 'explode'"),
    ("prepare.before_vote", "expected NAME=ACTION"),
    ("prepare.before_vote=count:0:crash", "expected count:N:ACTION with N >= 1"),
    ("prepare.before_vote=count:x:crash", "expected count:N:ACTION with N >= 1"),
    ("prepare.before_vote=count:2:", "expected count:N:ACTION with N >= 1"),
    ("prepare.before_vote=count:2:count:3:crash", "cannot be nested"),
    ("prepare.before_vote=sleep:soon", "expected sleep:SECONDS"),
    ("prepare.before_vote=sleep:-1", "expected sleep:SECONDS"),
    ("prepare.before_vote=pause:5", "bad action 'pause:5'"),
])
def test_a_bad_entry_is_named_in_the_error(entry: str, problem: str) -> None:
    with pytest.raises(FailpointError) as info:
        failpoints.parse_spec(f"commit.before_apply=crash;{entry}")
    assert f"DDS_FAILPOINTS: entry {entry!r}: " in info.value.message
    assert problem in info.value.message


def test_the_same_name_twice_is_refused() -> None:
    with pytest.raises(FailpointError, match="given twice"):
        failpoints.parse_spec("copy.mid=crash;copy.mid=error")


def test_an_unknown_name_lists_every_known_one() -> None:
    with pytest.raises(FailpointError) as info:
        failpoints.arm("commit.after_ack", "crash")
    for name in failpoints.KNOWN:
        assert name in info.value.message
    with pytest.raises(FailpointError):
        failpoints.disarm("commit.after_ack")


# -- arming ----------------------------------------------------------------------------------

def test_nothing_is_armed_by_default() -> None:
    result = run_python("""
        from dds import failpoints
        print(failpoints.ARMED, failpoints.armed())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False {}"


def test_arm_disarm_and_clear_keep_the_armed_flag_exact() -> None:
    assert failpoints.ARMED is False
    failpoints.arm("prepare.before_vote", "error")
    failpoints.arm("copy.mid", "sleep:0")
    assert failpoints.ARMED is True
    assert failpoints.armed() == {"prepare.before_vote": "error", "copy.mid": "sleep:0"}
    failpoints.disarm("prepare.before_vote")
    assert failpoints.ARMED is True and failpoints.is_armed("copy.mid")
    failpoints.disarm("copy.mid")
    failpoints.disarm("copy.mid")               # disarming twice is fine
    assert failpoints.ARMED is False
    failpoints.arm("commit.before_apply", "crash")
    failpoints.clear()
    assert failpoints.ARMED is False and failpoints.armed() == {}


def test_an_unarmed_point_does_nothing() -> None:
    failpoints.arm("prepare.before_vote", "error")
    failpoints.fire("prepare.after_vote")       # armed flag on, but not this point
    assert failpoints.hits("prepare.after_vote") == 0


def test_error_raises_internal_error_naming_the_point_every_time() -> None:
    failpoints.arm("commit.before_apply", "error")
    for _ in range(2):
        with pytest.raises(InternalError, match="failpoint commit.before_apply"):
            failpoints.fire("commit.before_apply")
    assert failpoints.hits("commit.before_apply") == 2
    assert failpoints.is_armed("commit.before_apply")


def test_count_fires_on_the_nth_hit_only_then_disarms() -> None:
    failpoints.arm("coordinator.after_prepare", "count:3:error")
    failpoints.fire("coordinator.after_prepare")
    failpoints.fire("coordinator.after_prepare")
    with pytest.raises(InternalError):
        failpoints.fire("coordinator.after_prepare")
    assert failpoints.ARMED is False
    failpoints.fire("coordinator.after_prepare")   # the 4th hit passes
    assert failpoints.hits("coordinator.after_prepare") == 3


def test_rearming_restarts_the_count() -> None:
    failpoints.arm("copy.mid", "count:2:error")
    failpoints.fire("copy.mid")
    failpoints.arm("copy.mid", "count:2:error")
    failpoints.fire("copy.mid")
    with pytest.raises(InternalError):
        failpoints.fire("copy.mid")


def test_sleep_blocks_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(failpoints.time, "sleep", slept.append)
    failpoints.arm("commit.after_apply_before_ack", "sleep:1.5")
    failpoints.fire("commit.after_apply_before_ack")
    assert slept == [1.5]
    failpoints.arm("commit.after_apply_before_ack", "sleep:0.05")
    monkeypatch.undo()
    start = time.monotonic()
    failpoints.fire("commit.after_apply_before_ack")
    assert time.monotonic() - start >= 0.05


# -- actions that end or stop the process ----------------------------------------------------

_FIRE = """
    import sys
    from dds import failpoints
    {arm}
    print("before", flush=True)
    failpoints.fire("commit.after_apply_before_ack")
    print("after", flush=True)
"""


def test_crash_exits_at_once_with_the_crash_code() -> None:
    result = run_python(_FIRE.format(arm='failpoints.arm("commit.after_apply_before_ack", '
                                         '"crash")\n    import atexit\n'
                                         '    atexit.register(print, "atexit ran")'))
    assert result.returncode == CRASH_EXIT_CODE == 86
    assert result.stdout.split() == ["before"]       # no "after", no atexit handler
    assert "failpoint commit.after_apply_before_ack: crash" in result.stderr


def test_the_environment_variable_arms_at_import() -> None:
    result = run_python(_FIRE.format(arm=""), env={
        "DDS_FAILPOINTS": "prepare.before_vote=error; commit.after_apply_before_ack=crash"})
    assert result.returncode == CRASH_EXIT_CODE, result.stderr
    assert result.stdout.split() == ["before"]


def test_count_in_the_environment_variable_crashes_on_the_nth_hit() -> None:
    result = run_python("""
        from dds import failpoints
        for i in range(1, 6):
            print(i, flush=True)
            failpoints.fire("coordinator.between_commits")
    """, env={"DDS_FAILPOINTS": "coordinator.between_commits=count:3:crash"})
    assert result.returncode == CRASH_EXIT_CODE
    assert result.stdout.split() == ["1", "2", "3"]


def test_a_bad_environment_variable_fails_the_start_naming_the_entry() -> None:
    result = run_python("import dds.lib\nprint('started')",
                        env={"DDS_FAILPOINTS": "commit.before_apply=crash;commit.after=crash"})
    assert result.returncode != 0
    assert "started" not in result.stdout
    assert "FailpointError: DDS_FAILPOINTS: entry 'commit.after=crash': unknown failpoint " \
           "'commit.after'; known: prepare.before_vote" in result.stderr


def _process_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]


def test_pause_stops_the_process_until_sigcont(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    env = {k: v for k, v in os.environ.items() if k != failpoints.ENV_VAR}
    env["DDS_FAILPOINTS"] = "commit.after_apply_before_ack=pause"
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_FIRE.format(arm=""))],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        def stopped() -> bool:
            assert proc.poll() is None, out.read_text()
            return _process_state(proc.pid) == "T"
        wait_until(stopped, SUBPROCESS_TIMEOUT_S, "the process to stop itself")
        assert "after" not in out.read_text().split()
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait(SUBPROCESS_TIMEOUT_S) == 0
        text = out.read_text()
        assert "failpoint commit.after_apply_before_ack: resumed" in text
        assert text.split()[-1] == "after"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the admin message -----------------------------------------------------------------------

def test_the_failpoint_message_validates_name_and_action() -> None:
    assert decode_request("failpoint", {"name": "copy.mid", "action": "count:2:crash"}) == \
        Failpoint("copy.mid", "count:2:crash")
    assert decode_request("failpoint", {"name": "copy.mid"}) == Failpoint("copy.mid", None)
    with pytest.raises(InvalidRequest, match="failpoint: unknown failpoint 'nope'; known: "):
        decode_request("failpoint", {"name": "nope", "action": "crash"})
    with pytest.raises(InvalidRequest, match="failpoint: bad action 'boom'"):
        decode_request("failpoint", {"name": "copy.mid", "action": "boom"})
    with pytest.raises(InvalidRequest):
        decode_request("failpoint", {"name": "copy.mid", "action": 3})


# -- the hooks, on the in-memory network -----------------------------------------------------

TXN_DEADLINE_S = 1.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    c = SimCluster(tmp_path, n=3, config={
        "timeouts": {"txn_deadline_ms": int(TXN_DEADLINE_S * 1000)},
        "brick": {"allow_failpoints": True}})
    yield c
    failpoints.clear()
    c.close()


def no_locks(cluster: SimCluster) -> bool:
    return all(n == 0 for n in cluster.locks_held().values())


def test_a_brick_refuses_failpoints_unless_allowed(tmp_path: Path) -> None:
    closed = SimCluster(tmp_path, n=3)
    try:
        error = closed.fail_of(closed.raw(0).call("failpoint", {"name": "prepare.after_vote",
                                                                "action": "crash"}))
        assert isinstance(error, InvalidRequest) and "failpoints are disabled" in str(error)
        assert failpoints.ARMED is False
    finally:
        closed.close()


def test_a_brick_arms_and_disarms_through_the_admin_message(cluster: SimCluster) -> None:
    conn = cluster.raw(0)
    reply = cluster.run(conn.call("failpoint", {"name": "prepare.after_vote",
                                                "action": "count:2:error"}))
    assert reply == {"armed": {"prepare.after_vote": "count:2:error"}}
    assert cluster.run(conn.call("status", {}))["failpoints"] == reply["armed"]
    assert cluster.run(conn.call("failpoint", {"name": "prepare.after_vote",
                                               "action": None})) == {"armed": {}}
    assert failpoints.ARMED is False
    error = cluster.fail_of(conn.call("failpoint", {"name": "x", "action": "crash"}))
    assert isinstance(error, InvalidRequest) and "known: prepare.before_vote" in str(error)


def test_an_error_after_the_vote_is_undone_by_the_coordinator(cluster: SimCluster) -> None:
    """A YES vote lost after staging: the coordinator aborts, nothing stays locked."""
    client = cluster.client()
    failpoints.arm("prepare.after_vote", "count:2:error")
    error = cluster.fail_of(client.put(b"k", b"v"))
    assert isinstance(error, InternalError) and "prepare.after_vote" in str(error)
    assert no_locks(cluster)
    assert set(cluster.read(b"k").values()) == {ReadResult(None, 0)}
    assert cluster.run(client.put(b"k", b"v")) == 1


def test_an_error_before_the_vote_leaves_nothing_behind(cluster: SimCluster) -> None:
    client = cluster.client()
    failpoints.arm("prepare.before_vote", "count:1:error")
    assert isinstance(cluster.fail_of(client.put(b"k", b"v")), InternalError)
    assert no_locks(cluster)
    assert all(not b.participant.active for b in cluster.bricks)


@pytest.mark.parametrize("point", ["commit.before_apply", "commit.after_apply_before_ack"])
def test_a_lost_commit_or_ack_is_retried_to_success(cluster: SimCluster, point: str) -> None:
    """The acknowledged mode: the coordinator asks again until every member answered."""
    client = cluster.client(commit_mode="ack")
    failpoints.arm(point, "count:1:error")
    assert cluster.run(client.put(b"k", b"v")) == 1
    assert failpoints.hits(point) == 1
    assert set(cluster.read(b"k").values()) == {ReadResult(b"v", 1)}
    assert no_locks(cluster)


@pytest.mark.parametrize("point", ["commit.before_apply", "commit.after_apply_before_ack"])
def test_a_lost_one_way_commit_is_made_good_by_termination(cluster: SimCluster,
                                                           point: str) -> None:
    """Parallel commit: success at the last YES; a member whose COMMIT fails holds the
    write prepared (reads of the key wait) and commits it by termination."""
    client = cluster.client(timeout=0.5)
    failpoints.arm(point, "count:1:error")
    assert cluster.run(client.put(b"k", b"v")) == 1
    failpoints.clear()
    cluster.net.advance(2 * TXN_DEADLINE_S + 0.5)
    assert set(cluster.read(b"k").values()) == {ReadResult(b"v", 1)}
    assert no_locks(cluster)


@pytest.mark.parametrize("point", ["coordinator.after_prepare", "coordinator.after_decision",
                                   "coordinator.between_commits"])
def test_a_coordinator_that_stops_is_replaced_by_termination(cluster: SimCluster,
                                                             point: str) -> None:
    """The coordinator fails at ``point`` (error stands in for a crash in one process):
    the members stay prepared until their deadline, then termination commits."""
    client = cluster.client(timeout=0.5)
    failpoints.arm(point, "error")
    error = cluster.fail_of(client.put(b"k", b"new"))
    # The write commits below, so the only honest report is "may or may not have happened".
    assert isinstance(error, Indeterminate)
    failpoints.clear()
    values = set(cluster.read(b"k").values())
    if point == "coordinator.between_commits":     # exactly one member has it
        assert sorted(cluster.read(b"k").values(), key=lambda r: r.version) == \
            [ReadResult(None, 0), ReadResult(None, 0), ReadResult(b"new", 1)]
    else:
        assert values == {ReadResult(None, 0)}
    assert not no_locks(cluster)
    cluster.net.advance(2 * TXN_DEADLINE_S + 0.5)
    assert set(cluster.read(b"k").values()) == {ReadResult(b"new", 1)}
    assert no_locks(cluster)
    assert sum(b.metrics.counters["txn_terminations_total"] for b in cluster.bricks) >= 1


def test_coordinator_points_are_passed_once_per_write_commit_or_abort(
        cluster: SimCluster) -> None:
    """Armed but not due (``count`` far ahead): writes behave as usual, including the
    one-by-one COMMIT that ``coordinator.between_commits`` switches on while armed."""
    client = cluster.client()
    for point in ("coordinator.after_prepare", "coordinator.after_decision",
                  "coordinator.between_commits"):
        failpoints.arm(point, "count:1000:crash")
    assert cluster.run(client.put(b"k", b"v")) == 1
    assert set(cluster.read(b"k").values()) == {ReadResult(b"v", 1)}
    error = cluster.fail_of(client.create(b"k", b"again"))     # every member votes NO
    assert isinstance(error, Exists)
    assert failpoints.hits("coordinator.after_prepare") == 2
    assert failpoints.hits("coordinator.after_decision") == 2   # the commit and the abort
    assert failpoints.hits("coordinator.between_commits") == 1  # commits only
    assert no_locks(cluster)
