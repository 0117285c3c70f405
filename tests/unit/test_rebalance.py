"""Tests of the add-brick / remove-brick / rebalance planner (dds.tools.membership):
partitions per brick within ±1 of the mean, never two replicas of an RG on one host,
fewest bytes copied, and the refusals of remove-brick."""

from __future__ import annotations

from collections import Counter

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from dds.config import parse_cluster_config
from dds.maps import ClusterMap
from dds.partition import initial_partitions
from dds.records import BrickRecord, ClusterRecord, PartitionEntry, RGRecord
from dds.tools.membership import (RETIRED, Change, Group, Layout, Plan, is_retired,
                                  layout_from_map, plan_changes)
from dds.tools.placement import plan as placement_plan


def layout(groups: dict[str, tuple[list[str], int]], bricks: list[str],
           hosts: dict[str, str] | None = None, replication: int = 3,
           sizes: dict[str, int] | None = None, active: dict[str, list[str]] | None = None,
           receivers: list[str] | None = None, moves: bool = True) -> Layout:
    """``groups``: name → (members, partitions); ``sizes``: bytes of each of an RG's
    partitions."""
    hosts = hosts or {}
    return Layout(
        {name: Group(name, tuple(members), tuple((active or {}).get(name, members)), parts,
                     (sizes or {}).get(name, 0) * parts,
                     tuple((f"{name}/{i}", (sizes or {}).get(name, 0))
                           for i in range(parts)) if moves else ())
         for name, (members, parts) in groups.items()},
        {b: hosts.get(b, b) for b in bricks},
        frozenset(bricks if receivers is None else receivers), replication)


class Result(dict):  # type: ignore[type-arg]
    """Members per RG after a plan, with each RG's partition count in ``sizes``."""

    sizes: dict[str, int]


def apply(lay: Layout, plan: Plan) -> Result:
    """Run the plan's changes in order, checking each as the bricks do (``_added``,
    ``_removed``, move preconditions): a new member is not a member yet and shares no
    host with any member, an old one is a member, a moved partition is in its source,
    a new RG has members on distinct hosts."""
    members = Result({g.name: list(g.members) for g in lay.groups.values()})
    parts = {g.name: {p for p, _ in g.movable} for g in lay.groups.values()}
    members.sizes = {g.name: g.partitions for g in lay.groups.values()}
    for c in plan.changes:
        if c.kind == "create":
            assert c.rg not in members, c
            assert len({lay.domains[m] for m in c.members}) == len(c.members), c
            assert all(m in lay.receivers for m in c.members), c
            members[c.rg] = list(c.members)
            parts[c.rg] = set()
            members.sizes[c.rg] = 0
            continue
        if c.kind == "move":
            assert c.pid in parts[c.rg] and c.to_rg in members and members[c.to_rg], c
            parts[c.rg].remove(c.pid)
            parts[c.to_rg].add(c.pid)
            members.sizes[c.rg] -= 1
            members.sizes[c.to_rg] += 1
            continue
        if c.new is not None:
            assert c.new not in members[c.rg], c
            taken = {lay.domains[m] for m in members[c.rg]}
            assert lay.domains[c.new] not in taken, (c, members[c.rg])
            assert c.new in lay.receivers, c
            members[c.rg].append(c.new)
        if c.old is not None:
            assert c.old in members[c.rg], c
            members[c.rg].remove(c.old)
    return members


def loads(lay: Layout, members: dict[str, list[str]], bricks: list[str]) -> dict[str, int]:
    sizes = getattr(members, "sizes", {g.name: g.partitions for g in lay.groups.values()})
    out = {b: 0 for b in bricks}
    for name, ms in members.items():
        for b in ms:
            out[b] = out.get(b, 0) + sizes[name]
    return out


def advance(lay: Layout, plan: Plan) -> Layout:
    """The layout after ``plan`` (for planning the next step)."""
    members = apply(lay, plan)
    parts = {g.name: dict(g.movable) for g in lay.groups.values()}
    for c in plan.changes:
        if c.kind == "create":
            parts[c.rg] = {}
        elif c.kind == "move":
            assert c.pid is not None and c.to_rg is not None
            parts[c.to_rg][c.pid] = parts[c.rg].pop(c.pid)
    groups = {rg: Group(rg, tuple(ms), tuple(ms), members.sizes[rg],
                        sum(parts[rg].values()), tuple(sorted(parts[rg].items())))
              for rg, ms in members.items()}
    return attrs.evolve(lay, groups=groups)


def within_one(values: dict[str, int], bricks: list[str]) -> bool:
    mean = sum(values[b] for b in bricks) / len(bricks)
    return all(abs(values[b] - mean) <= 1 + 1e-9 for b in bricks)


def initial(n: int, r: int = 3, partitions: int = 16,
            hosts: list[str] | None = None) -> ClusterMap:
    """The map ``dds-admin init`` makes for ``n`` bricks."""
    cfg = parse_cluster_config({
        "cluster": {"name": "dds", "replication": r, "partitions": partitions},
        "bricks": [{"id": f"b{i + 1}", "address": f"127.0.0.1:{7401 + i}",
                    "host": hosts[i] if hosts else f"m{i + 1}"} for i in range(n)]})
    return ClusterMap.of(placement_plan(cfg).records)


def with_bricks(cmap: ClusterMap, ids: list[str], hosts: list[str] | None = None
                ) -> ClusterMap:
    return cmap.merge([BrickRecord(b, 1, "127.0.0.1", 8000 + i,
                                   hosts[i] if hosts else f"h-{b}")
                       for i, b in enumerate(ids)]).map


# -- balance -------------------------------------------------------------------------------

def test_a_level_cluster_needs_no_change() -> None:
    lay = layout_from_map(initial(6))
    plan = plan_changes(lay)
    assert plan.changes == [] and plan.reached and not plan.problems


def test_a_new_brick_gets_replicas_until_every_brick_is_within_one_of_the_mean() -> None:
    for n in (3, 4, 6):
        cmap = with_bricks(initial(n, partitions=32), ["new"])
        lay = layout_from_map(cmap)
        plan = plan_changes(lay)
        bricks = sorted(lay.domains)
        after = loads(lay, apply(lay, plan), bricks)
        assert plan.reached, (n, plan.after, plan.notes)
        assert within_one(after, bricks), (n, after)
        assert after == {b: plan.after.get(b, 0) for b in bricks}
        assert after["new"] > 0


def test_growing_3_to_6_one_brick_at_a_time_ends_level() -> None:
    """The integration test's shape: 3 bricks, 3 RGs of 3, 8 partitions (3, 3, 2)."""
    lay = layout_from_map(initial(3, partitions=8))
    for b in ("b4", "b5", "b6"):
        lay = attrs.evolve(lay, domains={**lay.domains, b: f"m-{b}"},
                           receivers=lay.receivers | {b})
        plan = plan_changes(lay)
        assert plan.reached, (b, plan.after, plan.notes)
        lay = advance(lay, plan)
        final = loads(lay, {g.name: list(g.members) for g in lay.groups.values()},
                      sorted(lay.domains))
        assert within_one(final, sorted(final)), (b, final)
    assert sum(final.values()) == 24 and max(final.values()) <= 5, final
    # ... and back to 3 by draining, the bricks being removed never a replacement
    plan = plan_changes(lay, remove=["b4", "b5", "b6"], fill=False, balance=False)
    assert not plan.problems
    lay = advance(lay, plan)
    assert all(sorted(g.members) == ["b1", "b2", "b3"] for g in lay.groups.values())


def test_the_host_rule_keeps_replicas_of_an_rg_on_distinct_hosts() -> None:
    # The new brick is on host m1: never in an RG where b1 (on m1) is a member.
    cmap = with_bricks(initial(4, partitions=16), ["new"], hosts=["m1"])
    lay = layout_from_map(cmap)
    plan = plan_changes(lay)
    members = apply(lay, plan)
    for rg, ms in members.items():
        assert len({lay.domains[m] for m in ms}) == len(ms), (rg, ms)
    for c in plan.changes:
        if c.kind in ("replace", "add"):
            assert c.new != "new" or "b1" not in members[c.rg], c


def test_a_brick_on_the_only_host_left_gets_nothing_and_the_plan_says_so() -> None:
    # Three bricks on three hosts; the new one shares host m1 with b1, a member of every
    # RG: it can join none.
    cmap = with_bricks(initial(3, partitions=8), ["new"], hosts=["m1"])
    plan = plan_changes(layout_from_map(cmap))
    assert all(c.new != "new" or c.old == "b1" for c in plan.changes)
    assert not plan.reached and plan.notes


def test_fewest_bytes_among_equally_good_replacements() -> None:
    # Loads 2, 2, 2, 0 (mean 1.5): one replacement reaches the target; either RG would,
    # the one with the smaller partition is chosen, and nothing more is done.
    lay = layout({"rg0": (["a", "b", "c"], 1), "rg1": (["a", "b", "c"], 1)},
                 ["a", "b", "c", "d"], sizes={"rg0": 10_000, "rg1": 100})
    plan = plan_changes(lay)
    assert plan.reached
    assert [(c.rg, c.new, c.bytes) for c in plan.changes] == [("rg1", "d", 100)], plan
    assert plan.bytes == 100


def test_a_move_of_a_small_partition_beats_a_replacement_of_a_big_group() -> None:
    # d is a member of rg1, which has no partition: moving rg0's small partition to rg1
    # levels the loads for 100 bytes; replacing a by d in rg0 would copy 10,100.
    lay = Layout({"rg0": Group("rg0", ("a", "b", "c"), ("a", "b", "c"), 2, 10_100,
                               (("big", 10_000), ("small", 100))),
                  "rg1": Group("rg1", ("b", "c", "d"), ("b", "c", "d"), 0, 0, ())},
                 {b: b for b in "abcd"}, frozenset("abcd"), 3)
    plan = plan_changes(lay)
    assert plan.reached
    assert [(c.kind, c.pid, c.to_rg, c.bytes) for c in plan.changes] == [
        ("move", "small", "rg1", 100)], plan.changes


def test_the_plan_stops_as_soon_as_the_target_is_reached() -> None:
    # 16 partitions over 4 bricks; a fifth brick: a few changes, not a reshuffle.
    lay = layout_from_map(with_bricks(initial(4, partitions=16), ["new"]))
    plan = plan_changes(lay)
    assert plan.reached
    assert len(plan.changes) <= 6, [c.text() for c in plan.changes]
    assert plan_changes(advance(lay, plan)).changes == []


def test_new_groups_only_when_the_target_needs_them() -> None:
    # 4 bricks, 3 RGs of 3: 9 slots, so one brick is in every RG and holds all 8
    # partitions, above the target (6 ± 1): a fourth RG is needed, and moves fill it.
    lay = layout({"rg0": (["a", "b", "c"], 3), "rg1": (["b", "c", "a"], 3),
                  "rg2": (["c", "a", "b"], 2)}, ["a", "b", "c", "d"])
    plan = plan_changes(lay)
    assert plan.reached
    kinds = Counter(c.kind for c in plan.changes)
    assert kinds["create"] == 1 and kinds["move"] >= 1, plan.changes
    without = plan_changes(lay, create=False)
    assert not without.reached and without.notes
    assert all(c.kind != "create" for c in without.changes)


def test_an_rg_below_the_replication_factor_is_filled() -> None:
    lay = layout({"rg0": (["a", "b"], 4), "rg1": (["b", "c", "a"], 4)}, ["a", "b", "c"])
    plan = plan_changes(lay)
    assert plan.changes[0] == Change("rg0", None, "c", 4, 0)
    assert apply(lay, plan)["rg0"] == ["a", "b", "c"]


def test_no_change_moves_a_brick_it_added_out_again() -> None:
    cmap = with_bricks(initial(5, partitions=64), ["x", "y"])
    lay = layout_from_map(cmap)
    plan = plan_changes(lay)
    added = set()
    moved = set()
    for c in plan.changes:
        if c.kind == "move":
            assert c.pid not in moved, c
            moved.add(c.pid)
        elif c.kind in ("replace", "remove"):
            assert (c.rg, c.old) not in added, c
        if c.new:
            added.add((c.rg, c.new))


def test_retired_and_unreachable_bricks_receive_nothing() -> None:
    cmap = initial(3, partitions=8)
    cmap = cmap.merge([BrickRecord("old", 2, "127.0.0.1", 9000, RETIRED + "m9"),
                       BrickRecord("dead", 1, "127.0.0.1", 9001, "m8")]).map
    assert is_retired(cmap.bricks["old"])
    lay = layout_from_map(cmap, reachable=["b1", "b2", "b3", "old"])
    assert lay.receivers == {"b1", "b2", "b3"}
    assert plan_changes(lay).changes == []


def test_group_bytes_come_from_partition_sizes() -> None:
    cmap = initial(3, partitions=4)
    sizes = {str(p): 100 * (i + 1) for i, p in enumerate(initial_partitions(4))}
    lay = layout_from_map(cmap, sizes=sizes)
    assert sum(g.bytes for g in lay.groups.values()) == sum(sizes.values())


def test_changes_survive_the_journal() -> None:
    c = Change("rg3", "b1", "b7", 5, 1234)
    assert Change.from_json(c.to_json()) == c
    assert Change.from_json(Change("rg3", None, "b7", 5, 0).to_json()).kind == "add"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 9), r=st.integers(1, 3), parts_log=st.integers(2, 6),
       new=st.integers(1, 3), shared_hosts=st.booleans())
def test_plans_are_always_valid_and_never_less_level(n: int, r: int, parts_log: int,
                                                     new: int, shared_hosts: bool) -> None:
    hosts = [f"m{i % max(r, 3 if shared_hosts else n)}" for i in range(n)]
    cmap = initial(n, r=r, partitions=1 << parts_log, hosts=hosts)
    extra = [f"n{i}" for i in range(new)]
    cmap = with_bricks(cmap, extra, hosts=[f"x{i % 2}" for i in range(new)])
    lay = layout_from_map(cmap)
    plan = plan_changes(lay)
    bricks = sorted(lay.domains)
    before = loads(lay, {g.name: list(g.members) for g in lay.groups.values()}, bricks)
    after = loads(lay, apply(lay, plan), bricks)
    mean = sum(before.values()) / len(bricks)

    def excess(values: dict[str, int]) -> float:
        return sum(max(0.0, abs(v - mean) - 1) for v in values.values())
    assert excess(after) <= excess(before) + 1e-9
    assert plan.reached == (excess(after) < 1e-9)
    assert all(c.kind != "remove" for c in plan.changes)


# -- remove-brick refusals ---------------------------------------------------------------------

def test_draining_replaces_the_brick_in_every_rg_by_the_least_loaded_eligible_one() -> None:
    cmap = initial(6, partitions=16)
    lay = layout_from_map(cmap)
    plan = plan_changes(lay, remove=["b1"], fill=False, balance=False)
    assert not plan.problems
    rgs_of_b1 = {g.name for g in lay.groups.values() if "b1" in g.members}
    assert {c.rg for c in plan.changes} == rgs_of_b1
    assert all(c.old == "b1" and c.new not in (None, "b1") for c in plan.changes)
    members = apply(lay, plan)
    assert all("b1" not in ms and len(ms) == 3 for ms in members.values())
    # spread over three bricks (none is in all of b1's groups already)
    assert len({c.new for c in plan.changes}) == 3, plan.changes


def test_removal_is_refused_when_nothing_can_replace_the_brick() -> None:
    lay = layout_from_map(initial(3, partitions=8))
    plan = plan_changes(lay, remove=["b3"], fill=False, balance=False)
    assert len(plan.problems) == 3 and all("no other brick" in p for p in plan.problems)
    forced = plan_changes(lay, remove=["b3"], force=True, fill=False, balance=False)
    assert not forced.problems and forced.notes
    assert all(c.kind == "remove" and c.old == "b3" for c in forced.changes)
    assert len(forced.changes) == 3


def test_removal_is_refused_when_the_replacement_would_share_a_host() -> None:
    # b4 is the only other brick, and it is on b1's host: it may replace b1 (the only
    # member on that host would be itself) ... but not b2, whose RGs hold b1.
    lay = layout({"rg0": (["b1", "b2", "b3"], 4)}, ["b1", "b2", "b3", "b4"],
                 hosts={"b4": "b1"})
    plan = plan_changes(lay, remove=["b2"], fill=False, balance=False)
    assert plan.problems and "on one host" in plan.problems[0], plan.problems
    ok = plan_changes(lay, remove=["b1"], fill=False, balance=False)
    # the brick checks the host rule against every current member, the outgoing one too
    assert ok.problems and "on one host" in ok.problems[0]


def test_no_drain_is_refused_below_a_majority_unless_forced() -> None:
    lay = layout({"rg0": (["b1", "b2", "b3"], 4)}, ["b1", "b2", "b3"],
                 active={"rg0": ["b1", "b2"]})          # b3 excluded
    plan = plan_changes(lay, remove=["b1"], drain=False, fill=False, balance=False)
    assert plan.problems and "below a majority" in plan.problems[0]
    forced = plan_changes(lay, remove=["b1"], drain=False, force=True, fill=False,
                          balance=False)
    assert not forced.problems and forced.changes == [Change("rg0", "b1", None, 4, 0)]
    fine = plan_changes(layout({"rg0": (["b1", "b2", "b3"], 4)}, ["b1", "b2", "b3"]),
                        remove=["b1"], drain=False, fill=False, balance=False)
    assert not fine.problems and len(fine.changes) == 1


def test_the_last_active_member_is_never_removed() -> None:
    lay = layout({"rg0": (["b1", "b2"], 4)}, ["b1", "b2"], active={"rg0": ["b1"]},
                 replication=2)
    plan = plan_changes(lay, remove=["b1"], drain=False, force=True, fill=False,
                        balance=False)
    assert plan.problems and "last active member" in plan.problems[0]


def test_removing_several_bricks_never_picks_one_of_them_as_a_replacement() -> None:
    cmap = initial(6, partitions=16)
    lay = layout_from_map(cmap)
    plan = plan_changes(lay, remove=["b4", "b5", "b6"], fill=False, balance=False)
    assert not plan.problems
    assert all(c.new in ("b1", "b2", "b3") for c in plan.changes)
    members = apply(lay, plan)
    assert all(sorted(ms) == ["b1", "b2", "b3"] for ms in members.values())


def test_unknown_bricks_are_named() -> None:
    plan = plan_changes(layout_from_map(initial(3)), remove=["zz"])
    assert plan.problems == ["brick zz is not in the map"]


def test_records_of_an_empty_rg_are_ignored() -> None:
    cmap = initial(3).merge([RGRecord("rg9", 2, [], [])]).map
    assert "rg9" not in layout_from_map(cmap).groups
    assert isinstance(ClusterRecord("dds", 1, 3), ClusterRecord)
    assert PartitionEntry(initial_partitions(2)[0]).state == "active"
    assert Counter()["x"] == 0
