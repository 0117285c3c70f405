"""The add-brick / remove-brick / rebalance planner (the rules are in the package doc):
a pure function of a :class:`Layout`, no I/O, no Twisted, no terminal, so that every
rule is unit-tested (tests/unit/test_rebalance.py).

One cohesive thing of some 470 lines: the layout types, the change and plan types the
journal stores, and the greedy search over them share the ``_State`` they mutate."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

import attrs

from dds.maps import ClusterMap
from dds.records import BrickRecord

__all__ = ["RETIRED", "KINDS", "Group", "Layout", "Change", "Plan", "is_retired",
           "layout_from_map", "plan_changes"]

#: Prefix of the ``host`` of a brick record that remove-brick emptied (see the package doc).
RETIRED = "retired:"


def is_retired(rec: BrickRecord) -> bool:
    return rec.retired


@attrs.frozen
class Group:
    """What the planner knows of one RG."""

    name: str
    #: Every member, in record order, whatever its state.
    members: tuple[str, ...]
    active: tuple[str, ...]
    #: Partitions it lists (any state: each member stores every one).
    partitions: int
    #: Key + value bytes of those partitions (0 when unknown or empty).
    bytes: int = 0
    #: The active partitions (which a move may take elsewhere) and their bytes.
    movable: tuple[tuple[str, int], ...] = ()


@attrs.frozen
class Layout:
    groups: Mapping[str, Group]
    #: Failure domain of every brick of the map.
    domains: Mapping[str, str]
    #: Bricks that may receive new replicas: reachable, not retired.
    receivers: frozenset[str]
    replication: int
    #: Every RG name in the map, retired groups included (a new RG needs a new name).
    names: frozenset[str] = frozenset()


KINDS = ("replace", "add", "remove", "move", "create")


@attrs.frozen
class Change:
    """One step of a plan.  ``replace``/``add``/``remove``: ``new`` joins ``rg`` and/or
    ``old`` leaves it (``partitions``/``bytes``: what ``rg`` holds, what ``new`` copies).
    ``move``: partition ``pid`` (``bytes``) from ``rg`` to ``to_rg`` (``dds-admin move``).
    ``create``: a new, empty RG ``rg`` of ``members``."""

    rg: str
    old: str | None
    new: str | None
    partitions: int
    bytes: int
    pid: str | None = None
    to_rg: str | None = None
    members: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        if self.members:
            return "create"
        if self.pid is not None:
            return "move"
        return "replace" if self.old and self.new else ("add" if self.new else "remove")

    @property
    def rgs(self) -> tuple[str, ...]:
        """The RGs this change alters (changes sharing one run in plan order)."""
        return (self.rg, self.to_rg) if self.to_rg else (self.rg,)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rg": self.rg, "old": self.old, "new": self.new,
                               "kind": self.kind, "partitions": self.partitions,
                               "bytes": self.bytes}
        if self.pid is not None:
            out.update(pid=self.pid, to_rg=self.to_rg)
        if self.members:
            out["members"] = list(self.members)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Change:
        return cls(str(data["rg"]), data.get("old"), data.get("new"),
                   int(data.get("partitions", 0)), int(data.get("bytes", 0)),
                   data.get("pid"), data.get("to_rg"),
                   tuple(str(m) for m in data.get("members", ())))

    def text(self) -> str:
        kind = self.kind
        if kind == "replace":
            return f"{self.rg}: {self.old} → {self.new}"
        if kind == "add":
            return f"{self.rg}: + {self.new}"
        if kind == "remove":
            return f"{self.rg}: − {self.old}"
        if kind == "move":
            return f"{self.pid}: {self.rg} → {self.to_rg}"
        return f"{self.rg}: new group of {', '.join(self.members)}"


@attrs.define
class Plan:
    changes: list[Change]
    before: dict[str, int]
    after: dict[str, int]
    mean: float
    #: Whether every balanced brick ends within ±1 of the mean.
    reached: bool
    #: Reasons to refuse the plan (``--force`` turns the forcible ones into notes).
    problems: list[str] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.changes if c.new or c.to_rg)

    def to_json(self) -> dict[str, Any]:
        return {"changes": [c.to_json() for c in self.changes],
                "loads_before": dict(sorted(self.before.items())),
                "loads_after": dict(sorted(self.after.items())),
                "mean": round(self.mean, 3), "target": _target_text(self.mean),
                "reached": self.reached, "bytes": self.bytes,
                "problems": list(self.problems), "notes": list(self.notes)}


def _target_text(mean: float) -> str:
    return f"{mean - 1:.2f} .. {mean + 1:.2f}"


def layout_from_map(cmap: ClusterMap, *, reachable: Iterable[str] | None = None,
                    sizes: Mapping[str, int] | None = None,
                    extra: Mapping[str, str] | None = None) -> Layout:
    """The planner's view of ``cmap``: RG members and partition counts, bytes from
    ``sizes`` (``{pid: bytes}``), receivers = ``reachable`` bricks (every brick when
    None) that are not retired; ``extra`` adds bricks not in the map yet (id → domain)."""
    sizes = sizes or {}
    groups = {}
    for rec in cmap.rgs.values():
        if not rec.members and not rec.partitions:
            continue        # a retired group (init --force)
        groups[rec.name] = Group(
            rec.name, tuple(m.brick for m in rec.members), rec.active_members,
            len(rec.partitions), sum(sizes.get(str(e.pid), 0) for e in rec.partitions),
            tuple((str(e.pid), sizes.get(str(e.pid), 0)) for e in rec.partitions
                  if e.state == "active"))
    domains = {b.id: b.failure_domain for b in cmap.bricks.values()}
    domains.update(extra or {})
    ok = set(domains) if reachable is None else set(reachable)
    receivers = frozenset(b for b in ok if b in domains and not (
        b in cmap.bricks and is_retired(cmap.bricks[b])))
    replication = cmap.cluster.replication if cmap.cluster is not None else 3
    return Layout(groups, domains, receivers, replication, frozenset(cmap.rgs))


class _State:
    """The layout as the plan changes it."""

    def __init__(self, layout: Layout, balanced: set[str]) -> None:
        self.layout = layout
        self.members = {g.name: list(g.members) for g in layout.groups.values()}
        self.active = {g.name: set(g.active) for g in layout.groups.values()}
        self.size = {g.name: g.partitions for g in layout.groups.values()}
        self.parts = {g.name: dict(g.movable) for g in layout.groups.values()}
        self.other_bytes = {g.name: g.bytes - sum(dict(g.movable).values())
                            for g in layout.groups.values()}
        self.balanced = balanced
        self.load: dict[str, int] = {b: 0 for b in balanced}
        for g in layout.groups.values():
            for m in g.members:
                self.load[m] = self.load.get(m, 0) + g.partitions
        self.changes: list[Change] = []
        self.fresh: set[tuple[str, str]] = set()       # (rg, brick) added by the plan
        self.gone: set[tuple[str, str]] = set()        # (rg, brick) removed by the plan
        self.moved: set[str] = set()                   # partitions moved by the plan

    def domain(self, b: str) -> str:
        return self.layout.domains.get(b, b)

    def bytes(self, rg: str) -> int:
        return self.other_bytes[rg] + sum(self.parts[rg].values())

    def eligible(self, rg: str, avoid: set[str]) -> list[str]:
        taken = {self.domain(m) for m in self.members[rg]}
        return sorted(b for b in self.layout.receivers
                      if b not in avoid and b not in self.members[rg]
                      and (rg, b) not in self.gone and self.domain(b) not in taken)

    def apply(self, rg: str, old: str | None, new: str | None) -> None:
        p = self.size[rg]
        if new is not None:
            self.members[rg].append(new)
            self.active[rg].add(new)
            self.load[new] = self.load.get(new, 0) + p
            self.fresh.add((rg, new))
        if old is not None:
            self.members[rg].remove(old)
            self.active[rg].discard(old)
            self.load[old] -= p
            self.gone.add((rg, old))
        self.changes.append(Change(rg, old, new, p, self.bytes(rg)))

    def apply_move(self, pid: str, a: str, b: str) -> None:
        nbytes = self.parts[a].pop(pid)
        self.parts[b][pid] = nbytes
        self.size[a] -= 1
        self.size[b] += 1
        for m in self.members[a]:
            self.load[m] -= 1
        for m in self.members[b]:
            self.load[m] = self.load.get(m, 0) + 1
        self.moved.add(pid)
        self.changes.append(Change(a, None, None, 1, nbytes * self.copies(a, b), pid, b))

    def create(self, name: str, members: list[str]) -> None:
        self.members[name] = list(members)
        self.active[name] = set(members)
        self.size[name] = 0
        self.parts[name] = {}
        self.other_bytes[name] = 0
        for m in members:
            self.load.setdefault(m, 0)
            self.fresh.add((name, m))
        self.changes.append(Change(name, None, None, 0, 0, members=tuple(members)))

    def copies(self, a: str, b: str) -> int:
        """Replicas a move from ``a`` to ``b`` copies: ``b``'s members not in ``a``."""
        return max(1, len(set(self.members[b]) - set(self.members[a])))

    # Deviations in units of 1/n, so integers: load*n - total.
    def totals(self) -> tuple[int, int]:
        n = len(self.balanced)
        return n, sum(self.load.get(b, 0) for b in self.balanced)

    def cost(self, load: Mapping[str, int] | None = None) -> tuple[int, int]:
        """(excess over ±1 of the mean, squared deviation), both scaled by n."""
        load = self.load if load is None else load
        n = len(self.balanced)
        total = sum(load.get(b, 0) for b in self.balanced)
        if not n:
            return 0, 0
        excess = quad = 0
        for b in self.balanced:
            d = load.get(b, 0) * n - total
            excess += max(0, abs(d) - n)
            quad += d * d
        return excess, quad

    def cost_after(self, deltas: Mapping[str, int], base: tuple[int, int]
                   ) -> tuple[int, int]:
        """The cost with ``deltas`` applied to the loads (incremental when the total
        stays the same, which it does for every replacement)."""
        if sum(d for b, d in deltas.items() if b in self.balanced):
            trial = dict(self.load)
            for b, d in deltas.items():
                trial[b] = trial.get(b, 0) + d
            return self.cost(trial)
        n, total = self.totals()
        excess, quad = base
        for b, d in deltas.items():
            if b not in self.balanced or not d:
                continue
            x = self.load.get(b, 0) * n - total
            y = x + d * n
            excess += max(0, abs(y) - n) - max(0, abs(x) - n)
            quad += y * y - x * x
        return excess, quad


def plan_changes(layout: Layout, *, remove: Iterable[str] = (), drain: bool = True,
                 force: bool = False, fill: bool = True, balance: bool = True,
                 moves: bool = True, create: bool = True) -> Plan:
    """The changes that take ``layout`` to a level one (see the module doc for the
    rules); ``remove``: bricks to take out of every RG.  New RGs are planned only when
    the target cannot be reached without them, as few as reach it."""
    plan = _plan(layout, set(remove), drain, force, fill, balance, moves, 0)
    if not (create and balance and moves) or plan.reached or plan.problems:
        return plan
    in_rgs = {m for g in layout.groups.values() for m in g.members}
    bricks = (set(layout.receivers) | in_rgs) - set(remove)
    best = plan
    for extra in range(1, max(0, len(bricks) - len(layout.groups)) + 1):
        trial = _plan(layout, set(remove), drain, force, fill, balance, moves, extra)
        if _score(trial) < _score(best):
            best = trial
        if trial.reached:
            break
    return best


def _score(plan: Plan) -> tuple[float, int, int]:
    lo, hi = plan.mean - 1, plan.mean + 1
    excess = sum(max(0.0, lo - v, v - hi) for v in plan.after.values())
    return (round(excess, 6), plan.bytes, len(plan.changes))


def _plan(layout: Layout, removing: set[str], drain: bool, force: bool, fill: bool,
          balance: bool, moves: bool, new_groups: int) -> Plan:
    problems: list[str] = []
    notes: list[str] = []
    for b in sorted(removing):
        if b not in layout.domains:
            problems.append(f"brick {b} is not in the map")
    in_rgs = {m for g in layout.groups.values() for m in g.members}
    balanced = (set(layout.receivers) | in_rgs) - removing
    st = _State(layout, balanced)
    before = dict(st.load)
    r = layout.replication
    need = r // 2 + 1

    # 1. drain (or shrink) the RGs of the bricks being removed
    for g in sorted(layout.groups.values(), key=lambda g: _rg_key(g.name)):
        for old in [m for m in g.members if m in removing]:
            new = None
            # An RG above the replication factor (an interrupted replacement) just
            # loses the member.
            if drain and len(st.members[g.name]) <= r:
                options = st.eligible(g.name, removing)
                if options:
                    base = st.cost()
                    new = min(options, key=lambda b: (
                        st.cost_after({b: g.partitions}, base), st.load.get(b, 0), b))
                else:
                    why = (f"{g.name}: no brick can replace {old} without two replicas of "
                           f"{g.name} on one host" if layout.receivers - removing - set(
                               st.members[g.name]) else
                           f"{g.name}: no other brick can take {old}'s replicas")
                    if not force:
                        problems.append(why + "; --force removes it anyway and leaves "
                                        f"{g.name} with {len(st.members[g.name]) - 1} "
                                        "replicas")
                        continue
                    notes.append(why + f" (--force: {g.name} shrinks)")
            if new is None:
                left = st.active[g.name] - {old}
                if not left:
                    problems.append(f"{g.name}: {old} is its last active member; removing "
                                    "it would lose its data (not even with --force)")
                    continue
                if len(left) < need and g.partitions:
                    text = (f"{g.name} would keep {len(left)} active member(s), below a "
                            f"majority of {r} replicas")
                    if not force:
                        problems.append(text + " (--force to remove anyway)")
                        continue
                    notes.append(text + " (--force)")
            st.apply(g.name, old, new)

    # 2. fill RGs below the replication factor
    if fill:
        for g in sorted(layout.groups.values(), key=lambda g: _rg_key(g.name)):
            while len(st.members[g.name]) < r:
                options = st.eligible(g.name, removing)
                if not options:
                    notes.append(f"{g.name} has {len(st.members[g.name])} of {r} replicas "
                                 "and no brick on another host can take one more")
                    break
                base = st.cost()
                new = min(options, key=lambda b: (st.cost_after({b: g.partitions}, base),
                                                  st.load.get(b, 0), b))
                st.apply(g.name, None, new)

    # 3. new (empty) RGs, which moves then fill
    for _ in range(new_groups):
        if not _create_group(st, notes):
            break

    # 4. balance
    if balance:
        _balance(st, removing, moves)
    # A new RG no move chose is not worth creating.
    empty = {c.rg for c in st.changes if c.kind == "create" and not st.size[c.rg]}
    st.changes = [c for c in st.changes if c.rg not in empty]
    for rg in empty:
        del st.members[rg]
    excess, _ = st.cost()
    reached = excess == 0
    n, total = st.totals()
    mean = total / n if n else 0.0
    if not reached:
        sizes = sorted({st.size[g] for g in st.members}, reverse=True)
        notes.append(f"not every brick can be within ±1 of the mean ({mean:.2f}) "
                     f"(RG sizes {sizes}, replication {r}, {len(balanced)} bricks, "
                     f"{len({st.domain(b) for b in balanced})} hosts); this plan gets as "
                     "close as it can")
    after = dict(st.load)
    return Plan(st.changes, before, after, mean, reached, problems, notes)


def _create_group(st: _State, notes: list[str]) -> bool:
    """A new, empty RG of ``replication`` bricks on distinct hosts, those in fewest RGs
    (then least loaded) first."""
    r = st.layout.replication
    memberships = {b: 0 for b in st.balanced}
    for ms in st.members.values():
        for m in ms:
            if m in memberships:
                memberships[m] += 1
    chosen: list[str] = []
    for b in sorted((b for b in st.balanced if b in st.layout.receivers),
                    key=lambda b: (memberships[b], st.load.get(b, 0), b)):
        if st.domain(b) not in {st.domain(c) for c in chosen}:
            chosen.append(b)
        if len(chosen) == r:
            break
    if len(chosen) < r:
        notes.append(f"a new replica group needs {r} bricks on distinct hosts; only "
                     f"{len(chosen)} can be found")
        return False
    k = len(st.members)
    while f"rg{k}" in st.members or f"rg{k}" in st.layout.names:
        k += 1
    st.create(f"rg{k}", chosen)
    return True


def _balance(st: _State, removing: set[str], moves: bool) -> None:
    limit = 4 * (sum(len(m) for m in st.members.values()) + sum(st.size.values())) + 16
    for _ in range(limit):
        base = st.cost()
        excess, quad = base
        if excess == 0:
            return
        best: tuple[Any, ...] | None = None

        def consider(e2: int, q2: int, nbytes: int, action: tuple[Any, ...],
                     excess: int = excess, quad: int = quad) -> None:
            nonlocal best
            if e2 > excess or (e2 == excess and q2 >= quad):
                return
            gain = excess - e2
            # Excess reduced per byte copied first (exact, as a fraction), then fewest
            # bytes, then the most level result.
            key = (gain > 0, Fraction(gain, nbytes + 1), -nbytes, quad - q2)
            if best is None or key > best[0]:
                best = (key, *action)

        for rg in sorted(st.members, key=_rg_key):
            p = st.size[rg]
            if p:
                nbytes = st.bytes(rg)
                targets = st.eligible(rg, removing)
                for old in list(st.members[rg]):
                    if old not in st.balanced or (rg, old) in st.fresh:
                        continue
                    for new in targets:
                        consider(*st.cost_after({old: -p, new: p}, base), nbytes,
                                 ("replace", rg, old, new))
            if not moves:
                continue
            for pid, pbytes in sorted(st.parts[rg].items()):
                if pid in st.moved:
                    continue
                for to in sorted(st.members, key=_rg_key):
                    if to == rg or not st.active[to]:
                        continue
                    deltas: dict[str, int] = {}
                    for m in st.members[rg]:
                        deltas[m] = deltas.get(m, 0) - 1
                    for m in st.members[to]:
                        deltas[m] = deltas.get(m, 0) + 1
                    consider(*st.cost_after(deltas, base), pbytes * st.copies(rg, to),
                             ("move", pid, rg, to))
        if best is None:
            return
        if best[1] == "replace":
            st.apply(best[2], best[3], best[4])
        else:
            st.apply_move(best[2], best[3], best[4])


def _rg_key(name: str) -> tuple[int, str]:
    return (len(name), name)

