"""``dds-admin move``, ``split`` and ``merge`` as an operator runs them: ``--dry-run``
changes nothing, the three report the same ``--json`` fields, and progress is shown
(plain lines when stderr is not a terminal).  Real bricks (``local up``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.local import admin, local_up

#: What every one of the three reports (tools/reorg.py).
COMMON = {"kind", "job", "dry_run", "result", "pid", "sources", "targets", "from_rg",
          "to_rg", "from_bricks", "to_bricks", "bytes", "seconds", "fence_s"}


def run_json(cluster: Path, *args: str) -> dict[str, Any]:
    result = admin(*args, "--dir", str(cluster), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def state(cluster: Path) -> tuple[int, list[Any]]:
    """The map fingerprint and every job (finished or not) with its state and steps:
    what a dry run must leave as it was."""
    status = run_json(cluster, "status")
    jobs = run_json(cluster, "jobs", "--all")["jobs"]
    return status["map_fp"], [(j["job"], j["state"], j["steps"]) for j in jobs]


def rg_of(cluster: Path, pid: str) -> tuple[str, list[str]]:
    """The group holding ``pid`` and another group."""
    rgs = run_json(cluster, "status")["rgs"]
    here = next(g["name"] for g in rgs if pid in g["partition_states"])
    return here, [g["name"] for g in rgs if g["name"] != here]


def test_move_dry_run_prints_the_plan_and_changes_nothing(shared_local_cluster: Path) -> None:
    local_cluster = shared_local_cluster
    before = state(local_cluster)
    here, others = rg_of(local_cluster, "p2.1")
    plan = run_json(local_cluster, "move", "p2.1", "--to", others[0], "--dry-run")
    assert (plan["result"], plan["dry_run"], plan["job"]) == ("planned", True, None)
    assert (plan["from_rg"], plan["to_rg"], plan["sources"]) == (here, others[0], ["p2.1"])
    assert plan["fence_s"] == 0 and isinstance(plan["bytes"], int)
    human = admin("move", "p2.1", "--to", others[0], "--dir", str(local_cluster),
                  "--dry-run")
    assert human.returncode == 0, human.stderr
    assert "would move p2.1" in human.stdout and "Nothing was changed" in human.stdout
    assert state(local_cluster) == before


def test_split_dry_run_prints_the_plan_and_changes_nothing(shared_local_cluster: Path
                                                          ) -> None:
    local_cluster = shared_local_cluster
    before = state(local_cluster)
    plan = run_json(local_cluster, "split", "p2.1", "--dry-run")
    assert (plan["result"], plan["job"]) == ("planned", None)
    assert plan["sources"] == ["p2.1"] and plan["targets"] == ["p3.1", "p3.5"]
    human = admin("split", "p2.1", "--dir", str(local_cluster), "--dry-run")
    assert human.returncode == 0 and "would split p2.1 into p3.1 + p3.5" in human.stdout
    assert state(local_cluster) == before


def test_merge_dry_run_prints_the_plan_and_changes_nothing(local_cluster: Path) -> None:
    run_json(local_cluster, "split", "p2.1")
    before = state(local_cluster)
    plan = run_json(local_cluster, "merge", "p3.5", "--dry-run")
    assert (plan["result"], plan["job"]) == ("planned", None)
    assert plan["sources"] == ["p3.1", "p3.5"] and plan["targets"] == ["p2.1"]
    assert state(local_cluster) == before


def test_move_split_and_merge_report_the_same_fields(local_cluster: Path) -> None:
    _, others = rg_of(local_cluster, "p2.1")
    moved = run_json(local_cluster, "move", "p2.1", "--to", others[0])
    split = run_json(local_cluster, "split", "p2.1")
    merged = run_json(local_cluster, "merge", "p3.1")
    for report, kind in ((moved, "move"), (split, "split"), (merged, "merge")):
        assert COMMON <= set(report), (kind, COMMON - set(report))
        assert report["kind"] == kind and report["result"] == "done"
        assert report["job"] and report["dry_run"] is False
        assert report["fence_s"] > 0 and report["seconds"] >= report["fence_s"]
        assert isinstance(report["bytes"], int)
    assert moved["to_rg"] == others[0] and split["from_rg"] == split["to_rg"] == others[0]
    assert merged["targets"] == ["p2.1"]


@pytest.fixture
def pairs_cluster(tmp_path: Path) -> Iterator[Path]:
    """4 bricks, replication 2: groups of two, so a move between groups that share no
    brick copies the partition (``local up`` places rg0 on b1 b2 and rg2 on b3 b4)."""
    with local_up(tmp_path / "pairs", bricks=4, replication=2, partitions=4) as made:
        yield made


def test_move_shows_its_copy_progress_as_lines_off_a_terminal(pairs_cluster: Path) -> None:
    rgs = {g["name"]: g for g in run_json(pairs_cluster, "status")["rgs"]}
    here = next(n for n, g in rgs.items() if "p2.0" in g["partition_states"])
    mine = {m["brick"] for m in rgs[here]["members"]}
    there = next(n for n, g in rgs.items() if not mine & {m["brick"] for m in g["members"]})
    result = admin("move", "p2.0", "--to", there, "--dir", str(pairs_cluster))
    assert result.returncode == 0, result.stderr
    assert "copying: 100%" in result.stderr
    assert result.stdout.startswith(f"moved p2.0 from {here} to {there}")
    assert "writes paused" in result.stdout
