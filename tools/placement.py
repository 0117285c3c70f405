"""The initial layout of a cluster: which bricks form which replica group, and which
partitions each group serves (``dds-admin init``).

With ``n`` bricks and replication ``r`` there are ``n`` replica groups ``rg0..rg{n-1}`` of
``r`` members each, so every brick is a member of exactly ``r`` groups.  Members of a group
are on distinct failure domains (``host``) whenever that is possible at all (at least ``r``
hosts, none with more than ``n / r`` bricks); when it is not, the plan is still made and
every group that doubles up on a host is named in ``Plan.warnings``.

The bricks are laid out on a ring in which bricks of one host are spread apart (largest
host first, dealt round-robin into as many runs as that host has bricks), and group ``i``
is the ``r`` consecutive bricks from ring position ``i``.  Partitions go round-robin over
the groups; the ``partitions % n`` groups that get one more are evenly spaced on the ring,
so per-brick partition counts differ by at most one.  Should the ring ever fail to keep
hosts apart where that is possible, a greedy fill (``_greedy_groups``) is used instead.

The plan is a pure function of the configuration: the same file always gives the same
records, which is what makes ``init`` idempotent.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import TypeVar

import attrs

from dds.config import ClusterConfig, parse_address
from dds.partition import DPTrie, PartitionId, initial_partitions
from dds.records import (BrickRecord, ClusterRecord, Member, PartitionEntry, Record,
                         RGRecord)

__all__ = ["Plan", "PlacementError", "PlacementWarning", "plan", "plan_cluster",
           "assign_groups", "ring_order", "spread_partitions"]

H = TypeVar("H", bound=Hashable)


class PlacementError(ValueError):
    """The configuration admits no plan (fewer bricks than replicas)."""


class PlacementWarning(UserWarning):
    """A plan was made, but some group has two members on one failure domain."""


@attrs.frozen
class Plan:
    records: tuple[Record, ...]
    #: Human-readable problems that could not be avoided.
    warnings: tuple[str, ...] = ()


def _pick_round(demand: dict[H, int], rounds_left: int, r: int, order: Sequence[H],
                together: Counter[frozenset[H]]) -> list[H]:
    """Pick ``r`` distinct items with demand left for one group.  Items whose demand
    equals ``rounds_left`` must be picked now (or the remaining rounds could not absorb
    them); the rest go by fewest groups shared with those already picked, then most
    demand left."""
    picked: list[H] = []
    for _ in range(r):
        candidates = [x for x in order if demand[x] > 0 and x not in picked]
        forced = [x for x in candidates if demand[x] >= rounds_left]
        picked.append(min(forced or candidates, key=lambda x: (
            sum(together[frozenset((x, p))] for p in picked), -demand[x])))
    for i, x in enumerate(picked):
        demand[x] -= 1
        for y in picked[i + 1:]:
            together[frozenset((x, y))] += 1
    return picked


def _greedy_groups(bricks: Sequence[str], host_of: dict[str, str], r: int
                   ) -> list[list[str]]:
    """Hosts first (each at most once per group), then the host's brick with the most
    demand left.  Distinct hosts per group whenever :func:`_host_feasible`."""
    n = len(bricks)
    host_order = list(dict.fromkeys(host_of[b] for b in bricks))
    host_demand = {h: r * sum(1 for b in bricks if host_of[b] == h) for h in host_order}
    brick_demand = {b: r for b in bricks}
    together: Counter[frozenset[str]] = Counter()
    groups = []
    for g in range(n):
        group: list[str] = []
        for h in _pick_round(host_demand, n - g, r, host_order, together):
            mine = [b for b in bricks if host_of[b] == h and brick_demand[b] > 0]
            best = max(mine, key=lambda b: brick_demand[b])
            brick_demand[best] -= 1
            group.append(best)
        groups.append(group)
    return groups


def _host_feasible(hosts: Sequence[str], r: int) -> bool:
    per_host = Counter(hosts)
    return len(per_host) >= r and max(per_host.values()) * r <= len(hosts)


def ring_order(bricks: Sequence[str], hosts: Sequence[str]) -> list[str]:
    """The bricks in ring order: grouped by host (most bricks first, then first seen),
    dealt round-robin into as many runs as the largest host has bricks, runs joined."""
    per_host = Counter(hosts)
    first: dict[str, int] = {}
    for i, h in enumerate(hosts):
        first.setdefault(h, i)
    flat = sorted(range(len(bricks)), key=lambda i: (-per_host[hosts[i]], first[hosts[i]], i))
    runs: list[list[str]] = [[] for _ in range(max(per_host.values()))]
    for k, i in enumerate(flat):
        runs[k % len(runs)].append(bricks[i])
    return [b for run in runs for b in run]


def assign_groups(bricks: Sequence[str], hosts: Sequence[str], r: int
                  ) -> tuple[list[list[str]], list[str]]:
    """``len(bricks)`` groups of ``r`` bricks (``hosts[i]`` is brick i's failure domain):
    the groups, and warnings for groups with two members on one host."""
    n = len(bricks)
    if r < 1:
        raise PlacementError(f"replication must be at least 1, got {r}")
    if n < r:
        raise PlacementError(f"{r} replicas need at least {r} bricks, got {n}")
    if len(set(bricks)) != n:
        raise PlacementError("brick ids must be unique")
    host_of = dict(zip(bricks, hosts))
    ring = ring_order(bricks, hosts)
    groups = [[ring[(i + j) % n] for j in range(r)] for i in range(n)]
    feasible = _host_feasible(hosts, r)

    def doubled(group: list[str]) -> list[str]:
        counts = Counter(host_of[b] for b in group)
        return sorted(h for h, c in counts.items() if c > 1)

    if feasible and any(doubled(g) for g in groups):
        groups = _greedy_groups(bricks, host_of, r)
    problems = [f"rg{i} has more than one replica on host "
                + ", ".join(repr(h) for h in doubled(g)) + f" ({', '.join(g)})"
                for i, g in enumerate(groups) if doubled(g)]
    if problems:
        why = (f"only {len(set(hosts))} failure domain(s) for {r} replicas"
               if len(set(hosts)) < r else
               f"a failure domain holds more than 1/{r} of the bricks")
        problems.insert(0, f"replicas cannot all be on distinct hosts: {why}")
    return groups, problems


def _spread_cost(groups: Sequence[Sequence[str]], chosen: Sequence[int]) -> tuple[int, int]:
    load: Counter[str] = Counter({b: 0 for g in groups for b in g})
    for i in chosen:
        for b in groups[i]:
            load[b] += 1
    values = list(load.values())
    return max(values) - min(values), sum(v * v for v in values)


def spread_partitions(groups: Sequence[Sequence[str]], count: int) -> list[int]:
    """The order in which groups receive partitions round-robin (partition ``j`` goes to
    ``groups[order[j % len(order)]]``).  The ``count % n`` groups that get one partition
    more come first: evenly spaced (exact for ring groups), else chosen greedily and
    improved by swaps, so that per-brick totals stay level."""
    n = len(groups)
    extra = count % n
    chosen = [j * n // extra for j in range(extra)] if extra else []
    current = _spread_cost(groups, chosen)
    if current[0] > 1:
        chosen = []
        for _ in range(extra):
            chosen.append(min((i for i in range(n) if i not in chosen),
                              key=lambda i: (_spread_cost(groups, chosen + [i]), i)))
        current = _spread_cost(groups, chosen)
        improved = True
        while improved and current[0] > 1:
            improved = False
            for a in range(len(chosen)):
                for b in (i for i in range(n) if i not in chosen):
                    trial = chosen[:a] + [b] + chosen[a + 1:]
                    if (c := _spread_cost(groups, trial)) < current:
                        chosen, current, improved = trial, c, True
    return chosen + [i for i in range(n) if i not in chosen]


def plan(cfg: ClusterConfig, partitions: Sequence[PartitionId] | None = None) -> Plan:
    """The records of a new cluster, version 1 each, and any unavoidable problems.
    ``partitions``: an explicit set of leaves (a restored backup's, which splits and
    merges may have made irregular) instead of ``cluster.partitions`` equal ones."""
    c = cfg.cluster
    ids = [b.id for b in cfg.bricks]
    hosts = []
    records: list[Record] = [ClusterRecord(c.name, 1, c.replication, c.max_key_bytes,
                                           c.max_value_bytes)]
    for entry in cfg.bricks:
        host, port = parse_address(entry.address)
        domain = entry.host or host
        hosts.append(domain)
        records.append(BrickRecord(entry.id, 1, host, port, domain))
    groups, problems = assign_groups(ids, hosts, c.replication)
    parts = initial_partitions(c.partitions) if partitions is None else \
        explicit_partitions(partitions)
    order = spread_partitions(groups, len(parts))
    served: list[list[PartitionEntry]] = [[] for _ in groups]
    for j, pid in enumerate(parts):
        served[order[j % len(order)]].append(PartitionEntry(pid, "active"))
    for i, group in enumerate(groups):
        records.append(RGRecord(f"rg{i}", 1, [Member(b, "active") for b in group],
                                served[i]))
    return Plan(tuple(records), tuple(problems))


def explicit_partitions(partitions: Sequence[PartitionId]) -> list[PartitionId]:
    """``partitions`` sorted, checked to cover the key space exactly once (no gap, no
    overlap, no repeat): PlacementError naming the problem otherwise."""
    parts = sorted(partitions)
    if not parts:
        raise PlacementError("an explicit partition list must not be empty")
    if len(set(parts)) != len(parts):
        raise PlacementError("a partition is listed twice")
    try:
        DPTrie(parts)
    except ValueError as e:
        raise PlacementError(f"the partitions do not cover the key space exactly: {e}"
                             ) from None
    return parts


def plan_cluster(cfg: ClusterConfig) -> list[Record]:
    """The records of a new cluster; unavoidable problems are emitted as
    :class:`PlacementWarning` (use :func:`plan` to get them as a list)."""
    p = plan(cfg)
    for w in p.warnings:
        warnings.warn(w, PlacementWarning, stacklevel=2)
    return list(p.records)
