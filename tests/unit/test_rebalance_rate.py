"""``dds-admin rebalance --rate``: the limit reaches every ``dds-admin move`` the plan
runs (tools/membership/execute.py ``Executor``), and the plan says it."""

from __future__ import annotations

import io
from typing import Any

import pytest
import pytest_twisted
from rich.console import Console

from dds.partition import PartitionId
from dds.records import Member, PartitionEntry, RGRecord
from dds.tools import membership as m
from dds.tools import move as mv


class FakeCluster:
    reactor = None
    target = None

    def __init__(self) -> None:
        self.where = "rg1"

    async def record(self, rg: str) -> RGRecord:
        state = "active" if rg == self.where else "incoming"
        return RGRecord(rg, 1, [Member("b1")], [PartitionEntry(PartitionId.parse("p1.0"),
                                                                state)])


class FakeJob:
    kind = "rebalance"
    id = "rebalance-test"

    def __init__(self) -> None:
        self.steps: list[str] = []

    def done(self, name: str) -> bool:
        return name in self.steps

    async def step(self, name: str, **_: Any) -> None:
        self.steps.append(name)


@pytest_twisted.ensureDeferred
async def test_the_rate_reaches_each_move_of_the_plan(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    cl = FakeCluster()
    seen: list[int | None] = []

    async def fake_move(reactor: Any, target: Any, pid: str, to_rg: str, say: Any,
                        progress: Any = None, rate_mb_s: int | None = None
                        ) -> dict[str, Any]:
        seen.append(rate_mb_s)
        cl.where = to_rg
        return {"copied_bytes": 10}

    monkeypatch.setattr(mv, "move", fake_move)
    change = m.Change("rg1", None, None, 1, 10, pid="p1.0", to_rg="rg2")
    job = FakeJob()
    ex = m.Executor(cl, job, [change], m.QuietView(), lambda _: None,  # type: ignore[arg-type]
                    m.Options(rate_mb_s=7))
    assert await ex.run_one(1, change) == "done"
    assert seen == [7] and job.steps == ["1.moved"]


def test_the_plan_shows_the_rate() -> None:
    plan = m.Plan([], {}, {}, 1.0, True)
    out = io.StringIO()
    m.render_plan({"plan": plan.to_json(), "changes": [], "dry_run": True,
                   "kind": "rebalance", "rate_mb_s": 5}, Console(file=out, width=120))
    assert "copy rate of each move: at most 5 MB/s" in out.getvalue()
