"""The deterministic simulation: a seed sweep, determinism, and hypothesis-driven runs.

``DDS_SIM_SEEDS`` sets the number of seeds of the sweep (default 50, about 40 s here, so
the whole suite stays within its time budget; ``make sim`` sweeps 1,000),
``DDS_SIM_JOBS`` its worker processes (default: 2 if the machine has 2 cores or more) and
``DDS_SIM_EXAMPLES`` the examples of the hypothesis state machine (default 30; ``make sim``
runs 300).  The suite's counts check that every part works and has teeth on every run;
the campaign that looks for rare interleavings is ``make sim``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from twisted.internet.defer import Deferred, succeed

from dds.bricks.storage import Storage
from dds.lib.coordinator import _Write

from tests.sim.nemesis import ALL_FAULTS, DEFAULT_FAULTS
from tests.sim.simulation import report, run_seed, summary_line, sweep
from tests.sim.stateful import SimMachine
from tests.sim.test_regressions import race_steps

ROOT = Path(__file__).resolve().parents[2]
SEEDS = int(os.environ.get("DDS_SIM_SEEDS", "50"))
JOBS = int(os.environ.get("DDS_SIM_JOBS", str(min(2, os.cpu_count() or 1))))


def test_seed_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    results = sweep(range(SEEDS), JOBS)
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\nsimulation sweep: {summary_line(results)} ({elapsed:.1f}s, {JOBS} jobs)")
    failed = [r for r in results if not r.ok]
    if failed:
        pytest.fail(f"{len(failed)} of {SEEDS} seeds failed (seeds "
                    f"{[r.seed for r in failed]}):\n" +
                    "\n".join(report(r) for r in failed[:5]), pytrace=False)
    # The sweep did exercise the system: operations of every kind and outcome, and
    # every default fault kind, many times.
    kinds = Counter(op.kind for r in results for op in r.ops)
    statuses = Counter(op.status for r in results for op in r.ops)
    faults: Counter[str] = Counter()
    for r in results:
        faults.update(r.faults)
    assert sum(kinds.values()) >= 100 * SEEDS
    assert all(kinds[k] > SEEDS for k in ("get", "put", "create", "cas", "remove")), kinds
    assert all(statuses[s] > 0 for s in ("ok", "fail", "indeterminate")), statuses
    assert all(faults[k] >= SEEDS for k in DEFAULT_FAULTS), faults


def test_the_same_seed_gives_the_same_history() -> None:
    first, again = run_seed(12), run_seed(12)
    assert len(first.ops) > 100 and sum(first.faults.values()) > 5
    assert first.ops == again.ops
    assert first.fault_log == again.fault_log
    assert first.digest() == again.digest()
    assert run_seed(13).digest() != first.digest()


def test_the_same_seed_gives_the_same_history_in_another_process() -> None:
    """Nothing depends on the process: not on str hashing (PYTHONHASHSEED), not on object
    addresses, not on wall-clock time."""
    here = run_seed(7, faults=ALL_FAULTS)
    out = subprocess.run(
        [sys.executable, "-m", "tests.sim.simulation", "--seed", "7", "--crash"],
        cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "4242"}, capture_output=True,
        text=True, timeout=120)
    digest = next(line.split()[-1] for line in out.stdout.splitlines()
                  if line.startswith("history digest"))
    assert digest == here.digest(), out.stdout + out.stderr


def test_a_planted_bug_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks have teeth: a brick that acknowledges writes of one key without storing
    them fails every run, by diverging replicas and by reads that go back in time."""
    write = Storage.write

    def forgetful(self: Storage, pid: str, key: bytes, *args: Any, **kw: Any) -> Any:
        if key == b"k1" and self.data_dir.name == "b0":
            return succeed(None)
        return write(self, pid, key, *args, **kw)
    write_then = Storage.write_then

    def forgetful_then(self: Storage, pid: str, key: bytes, *args: Any) -> bool:
        if key == b"k1" and self.data_dir.name == "b0":
            return False        # "durable already": acknowledged, never stored
        return write_then(self, pid, key, *args)
    monkeypatch.setattr(Storage, "write", forgetful)
    monkeypatch.setattr(Storage, "write_then", forgetful_then)
    for seed in (1, 2, 3):
        result = run_seed(seed, topology=0, faults=(), duration=3.0)
        assert any("replicas of b'k1' disagree" in v for v in result.violations), \
            report(result)
        assert any(v.startswith("not_linearizable: key b'k1'") for v in result.violations)


def test_success_before_every_vote_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parallel commit's rule has teeth: a coordinator that reports success at the
    *first* YES vote (rather than the last) acknowledges writes that the other members
    then refuse, and the checker finds them lost or out of order."""
    voted = _Write._voted

    def eager(self: _Write, i: int, reply: Any) -> None:
        if type(reply) is dict and type(reply.get("version")) is int \
                and not self.result.called:
            early, self.result = self.result, Deferred()
            self.result.addErrback(lambda _f: None)     # the real outcome goes nowhere
            early.callback(reply["version"] + 1)
        voted(self, i, reply)
    monkeypatch.setattr(_Write, "_voted", eager)
    runs = [run_seed(seed, topology=0, faults=(), duration=3.0) for seed in range(1, 6)]
    # A run whose writes never meet a conflicting one cannot show the bug (seed 3).
    caught = [r for r in runs if not r.ok]
    assert len(caught) >= 4, "\n".join(report(r) for r in runs)


def test_crash_is_a_fault_kind_off_by_default() -> None:
    assert "crash" in ALL_FAULTS and "crash" not in DEFAULT_FAULTS
    result = run_seed(3, faults=("crash",), fault_interval=1.0)
    assert result.faults.get("crash", 0) >= 2
    assert [what for _t, what in result.fault_log if what.startswith("crash")]
    assert len(result.ops) > 100


def test_the_same_steps_give_the_same_history() -> None:
    """A falsifying example of the stateful test replays exactly: its steps are all."""
    histories = []
    for _ in range(2):
        machine = SimMachine()
        try:
            race_steps(machine)
            histories.append(machine.s.ops())
            machine.s.finish()
            histories.append(machine.s.ops())
        finally:
            machine.s.close()
            shutil.rmtree(str(machine.dir), ignore_errors=True)
    assert histories[0] == histories[2] and histories[1] == histories[3]
    assert len(histories[1]) > len(histories[0]) >= 2


TestSimMachine = SimMachine.TestCase
TestSimMachine.settings = settings(
    max_examples=int(os.environ.get("DDS_SIM_EXAMPLES", "30")), stateful_step_count=50,
    deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
