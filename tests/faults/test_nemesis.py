"""The fault schedule: a pure function of its seed, and within the overlap rules."""

from __future__ import annotations

import pytest

from tests.faults import runner
from tests.faults.nemesis import (
    KINDS,
    LOSS_KINDS,
    NET_KINDS,
    DEFAULT_KINDS,
    PROCESS_KINDS,
    RESTART_ALLOWANCE,
    RESTART_SPACING,
    plan,
)

BRICKS = [f"b{i}" for i in range(1, 7)]


def test_same_seed_same_schedule() -> None:
    for seed in range(20):
        a = plan(seed, KINDS, BRICKS, 120.0, start=5.0)
        b = plan(seed, list(reversed(KINDS)), list(reversed(BRICKS)), 120.0, start=5.0)
        assert a == b and a


def test_different_seeds_differ() -> None:
    schedules = {tuple(plan(seed, KINDS, BRICKS, 60.0)) for seed in range(20)}
    assert len(schedules) == 20


@pytest.mark.parametrize("seed", range(30))
def test_overlap_rules(seed: int) -> None:
    span, lease = 200.0, 3.0
    faults = plan(seed, KINDS, BRICKS, span, lease_s=lease, max_active=3, start=5.0)
    assert {f.kind for f in faults} == set(KINDS)        # every kind at least once
    assert [f.at for f in faults] == sorted(f.at for f in faults)
    for f in faults:
        assert 5.0 <= f.at and f.end <= span
        if f.kind == "pause":
            assert f.duration > lease
        during = [g for g in faults if g is not f and g.at < f.end and f.at < g.end]
        assert len([g for g in during if g.at <= f.at]) <= 2    # <= 3 at once
        if f.kind == "restart":
            assert set(f.targets) == set(BRICKS)
            assert not [g for g in faults if g is not f and
                        g.at < f.end + RESTART_ALLOWANCE - 1e-6 and f.at < g.end]
        if f.kind in PROCESS_KINDS:
            assert not [g for g in during if g.kind in PROCESS_KINDS
                        and g.targets == f.targets]
        if f.kind in NET_KINDS:
            assert not [g for g in during if g.kind in NET_KINDS]


@pytest.mark.parametrize("seed", range(30))
def test_restarts_keep_away_from_lost_messages(seed: int) -> None:
    faults = plan(seed, KINDS, BRICKS, 300.0, start=5.0, restart_quiet=12.0)
    restarts = [f for f in faults if f.kind == "restart"]
    assert restarts
    for r in restarts:
        assert all(f.end + 12.0 <= r.at + 1e-6 for f in faults
                   if f.kind in LOSS_KINDS and f.at < r.at)
    for a, b in zip(restarts, restarts[1:]):
        assert b.at - a.at >= RESTART_SPACING


def test_only_enabled_kinds() -> None:
    faults = plan(7, ["pause", "cut"], BRICKS, 300.0)
    assert {f.kind for f in faults} == {"pause", "cut"}
    with pytest.raises(ValueError):
        plan(7, ["pause", "meteor"], BRICKS, 60.0)


def test_profiles_plan_enough_faults_of_every_kind() -> None:
    """The floors of the ci and verify profiles are met by the plan for any seed, and
    both plan every kind (the ci profile is short: the suite's run must still exercise
    every nemesis)."""
    for name in ("ci", "verify"):
        prof = runner.PROFILES[name]
        assert prof.all_kinds, name
        bricks = [f"b{i + 1}" for i in range(prof.bricks)]
        for seed in range(100):
            faults = plan(seed, DEFAULT_KINDS, bricks, prof.fault_span, lease_s=prof.lease_s,
                          gap=prof.gap, max_active=prof.max_active, start=prof.warmup,
                          restart_quiet=prof.restart_quiet)
            assert len(faults) >= prof.min_faults, (name, seed)
            assert {f.kind for f in faults} == set(DEFAULT_KINDS), (name, seed)


def test_runner_plan_only_is_replayable(capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for _ in range(2):
        assert runner.main(["--profile", "verify", "--seed", "4242", "--plan-only",
                            "--nemeses", "all"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert "seed=4242" in outputs[0] and "kill" in outputs[0]
