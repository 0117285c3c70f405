"""A member that is re-syncing while a split or merge runs (``docs/operations.md``, "A
brick crashes during a reorganization"): the job plans without it, and a restarted brick
that the record still lists active refuses the job's steps until it has re-synced.  The
integration side is ``tests/integration/test_reorg_crash.py``."""

from __future__ import annotations

import pytest

from dds.config import parse_cluster_config
from dds.errors import NotServing
from dds.maps import ClusterMap
from dds.messages import SplitFinish
from dds.tools.placement import plan as placement_plan
from dds.tools.split import plan

from tests.unit.test_split import JOB, C0, C1, P, Brick, brick, fill, incoming, prepare

__all__ = ["brick"]         # the fixture, used by name


def _cluster(recovering: str | None) -> ClusterMap:
    cfg = parse_cluster_config({
        "cluster": {"name": "dds", "replication": 3, "partitions": 1},
        "bricks": [{"id": f"b{i}", "address": f"127.0.0.1:{7000 + i}", "host": f"h{i}"}
                   for i in range(1, 4)]})
    cmap = ClusterMap.of(placement_plan(cfg).records)
    if recovering is None:
        return cmap
    rec = cmap.rgs["rg0"].with_member_state(recovering, "recovering")
    return ClusterMap.of([*(r for r in cmap if r.record_id != rec.record_id), rec])


def test_a_split_plans_with_the_active_members_and_leaves_a_recovering_one_out() -> None:
    full = plan(_cluster(None), "split", "p0.0")
    assert full["members"] == ["b1", "b2", "b3"] and full["left_out"] == []
    p = plan(_cluster("b3"), "split", "p0.0")
    assert p["members"] == ["b1", "b2"] and p["left_out"] == ["b3"]
    assert p["leader"] == "b1"


def test_a_member_re_syncing_the_rg_refuses_to_prepare_and_to_finish(brick: Brick) -> None:
    fill(brick)
    resyncing = {"rg0"}
    brick.splits.blocked = lambda rg: rg in resyncing
    incoming(brick)
    with pytest.raises(NotServing, match="re-syncing rg0"):
        prepare(brick)
    resyncing.clear()
    prepare(brick)
    resyncing.add("rg0")          # e.g. ``dds-admin recover`` between the steps
    with pytest.raises(NotServing, match="re-syncing rg0"):
        brick.call(brick.splits.finish(SplitFinish(job=JOB)))
    resyncing.clear()               # the refusal changed nothing: the job goes on
    reply = brick.call(brick.splits.finish(SplitFinish(job=JOB)))
    assert set(reply["counts"]) == {str(C0), str(C1)}
    assert brick.splits.jobs[JOB].sources == (P,)
