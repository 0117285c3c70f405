"""``dds-admin add-brick``, ``remove-brick`` and ``rebalance`` (DESIGN §8): which bricks
hold the replicas of which replica group, changed online as journaled jobs.

**The changes a plan is made of** (:class:`Change`):

- *replace* ``old → new`` in RG ``g``: ``rg_update add_member=new`` (``new`` joins as
  ``recovering`` and re-syncs by itself, by partition copy from an active member, exactly
  as a restarted brick does, DESIGN §7), wait until readmission made it ``active``, then
  ``rg_update remove_member=old``.  The RG never has fewer active members than before,
  and writes pause only for recovery's short fenced delta;
- *add* ``new`` to an RG with fewer members than the replication factor (the first two
  steps only); *remove* ``old`` without a replacement (the last step only:
  ``remove-brick --no-drain``, or ``--force`` where nothing can replace it);
- *move* a partition to another RG: a ``dds-admin move`` job of its own
  (``tools/move.py``), for finer steps than whole RGs;
- *create* a new RG, empty, all members active: its record pushed at version 1 to every
  brick, as ``init`` does; moves then fill it.

**Planner rules** (:func:`plan_changes`, a pure function of the layout, unit-tested):

1. *Drain*: every RG listing a brick being removed gets the eligible brick that leaves
   the load most level in its place.  Eligible: reachable, not retired, not being
   removed, not yet a member, and on a failure domain (``BrickRecord.host``) none of the
   RG's members has (the outgoing one included: the brick checks it against all current
   members).  No eligible brick: refused, or with ``--force`` the brick is just removed
   (the RG shrinks).  ``--no-drain`` removes without replacement, refused when an RG
   would keep fewer active members than a majority of the replication factor.  Removing
   an RG's last active member is refused even with ``--force``.  An RG with more
   members than the replication factor just loses the brick.
2. *Fill*: an RG with fewer members than the replication factor gets eligible bricks.
3. *Balance* (add-brick, rebalance): the load of a brick is the number of partitions of
   every RG it is a member of (what it stores).  Target: every brick within ±1 of the
   mean (over the bricks that are members or may receive).  Greedy: repeatedly the
   replacement or move that most reduces the excess over ±1 per byte copied (ties: fewest
   bytes, then the most level result), stopping as soon as the target is reached; when
   nothing reduces the excess, steps that make the load more level without raising it.
   A brick added to an RG by the plan is not moved out of it again, a brick removed is
   not put back, and a partition moves at most once.
4. *New RGs* only when the target cannot be reached without them (RG sizes too coarse,
   or a brick in every RG): the plan is made again with one, two, ... new RGs (members:
   bricks in fewest RGs, distinct hosts) and the first that reaches the target is kept;
   none reaches it: the closest.  A new RG no move fills is dropped from the plan.

Bytes are the key + value bytes of each active partition, as one active member reports
them (``range_checksums`` with one bucket: a scan in the brick's thread pool); a copy
moves the SQLite files, which are somewhat larger.  A plan that cannot reach the target
says so in its notes.

**Journal**: one job per command (kind ``add-brick``, ``remove-brick``, ``rebalance``)
whose plan lists the changes; steps ``registered`` (add-brick), then per change ``i``:
``<i>.added``, ``<i>.active``, ``<i>.removed``, ``<i>.rolled-back``, ``<i>.created``,
``<i>.moved``; ``retired`` (remove-brick).  Up to ``--parallel`` changes run at once; a
change waits for the earlier changes of the RGs it alters.  A failed or cancelled
change is rolled back (its new member removed) unless the new member is already active
and serves, in which case it is finished.  ``dds-admin repair`` (:func:`resume`) settles
the changes in flight the same way (it waits for a recovering new member while its
recovery progresses, and rolls back one whose new brick is gone), starts none of the
others, and ends the job ``done`` or ``cancelled``; run the command or ``rebalance``
again to go on.  A move has its own job, which repair settles first (it is newer).

**Retired bricks**: the map cannot delete a record.  A brick that ``remove-brick``
emptied gets its brick record re-pushed with ``host = "retired:<old host>"``, so that
``rebalance`` never gives it replicas again; ``add-brick`` of the same id registers it
afresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any, Protocol

import attrs
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table
from twisted.internet.defer import Deferred, DeferredSemaphore

from dds import failpoints
from dds.config import ConfigError, parse_address, format_address
from dds.errors import DDSError, Refused, StaleMap
from dds.maps import ClusterMap
from dds.partition import PartitionId
from dds.records import BrickRecord, Member, Record, RGRecord, record_from_wire

from dds.tools.cluster import (Target, call_brick, connect_brick, describe_error,
                               fetch_map, gather)
from dds.tools.jobs import Job, JobView
from dds.tools.runner import AdminError, pause

__all__ = [
    "RETIRED",
    "Change",
    "Group",
    "Layout",
    "Plan",
    "ProgressView",
    "QuietView",
    "View",
    "add_brick",
    "is_retired",
    "layout_from_map",
    "plan_changes",
    "rebalance",
    "remove_brick",
    "render_plan",
    "render_report",
    "resume",
]

#: Prefix of the ``host`` of a brick record that remove-brick emptied (see the module doc).
RETIRED = "retired:"
#: Seconds for one ordinary request.
CALL_TIMEOUT_S = 10.0
#: An ``rg_update`` waits for the majority 2PC (votes may wait for a lease to lapse).
UPDATE_TIMEOUT_S = 30.0
#: A partition scan for its size may take a while on a large partition.
SIZE_TIMEOUT_S = 120.0
POLL_S = 0.25
#: A recovering new member whose recovery shows no progress this long is given up.
STALL_S = 60.0
#: ... and one whose recovery failed this many attempts in a row.
MAX_ATTEMPTS = 12
#: How long the new brick may miss status polls (busy copying) before it counts as gone.
UNREACHABLE_GRACE_S = 15.0
#: Between two looks at the journal for a cancel request while waiting.
CANCEL_CHECK_S = 2.0
UPDATE_ATTEMPTS = 12
_PHASE_ORDER = {"discovering": 1, "marking": 2, "copying": 3, "delta": 4,
                "readmitting": 5, "done": 6}

Say = Callable[[str], None]


def is_retired(rec: BrickRecord) -> bool:
    return rec.retired


# -- the planner (pure) ----------------------------------------------------------------------

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


# -- progress --------------------------------------------------------------------------------

class View(Protocol):
    """Where progress goes while a plan runs."""

    def begin(self, title: str, changes: list[Change]) -> None: ...

    def event(self, i: int, change: Change, what: str) -> None: ...

    def copy(self, i: int, change: Change, row: Mapping[str, Any]) -> None: ...

    def end(self) -> None: ...


class QuietView:
    """Nothing (``--json``: stdout gets the one final object)."""

    def begin(self, title: str, changes: list[Change]) -> None:
        pass

    def event(self, i: int, change: Change, what: str) -> None:
        pass

    def copy(self, i: int, change: Change, row: Mapping[str, Any]) -> None:
        pass

    def end(self) -> None:
        pass


class ProgressView:
    """On a terminal: an overall bar (planned bytes, rate, time left) and a bar per copy
    in flight (the new member's recovery: bytes, rate, time left).  Everywhere: a line
    per event of each change, so a log that is not a terminal shows how it went."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.total: TaskID | None = None
        self.tasks: dict[int, TaskID] = {}
        self.changes: list[Change] = []
        self.fraction: dict[int, float] = {}
        self.shown: dict[int, int] = {}
        self.finished = 0
        self.title = ""

    def begin(self, title: str, changes: list[Change]) -> None:
        self.end()
        self.title, self.changes, self.fraction, self.finished = title, changes, {}, 0
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(),
                                 TimeRemainingColumn(), console=self.console,
                                 disable=not self.console.is_terminal)
        planned = sum(c.bytes for c in changes if c.new)
        self.total = self.progress.add_task(self._title(), total=max(planned, 1))
        self.tasks = {}
        self.progress.start()

    def _title(self) -> str:
        return f"{self.title}: {self.finished}/{len(self.changes)} changes"

    def _update_total(self) -> None:
        if self.progress is None or self.total is None:
            return
        done = sum(self.changes[i].bytes * f for i, f in self.fraction.items()
                   if i < len(self.changes))
        self.progress.update(self.total, completed=int(done), description=self._title())

    def event(self, i: int, change: Change, what: str) -> None:
        self.console.print(f"[dim]#{i} {escape(change.text())}: {escape(what)}[/dim]")
        if what in ("done", "rolled back", "failed", "not started"):
            self.finished += 1
            self.fraction[i] = 1.0
            if self.progress is not None and i in self.tasks:
                self.progress.remove_task(self.tasks.pop(i))
            self._update_total()

    def copy(self, i: int, change: Change, row: Mapping[str, Any]) -> None:
        if self.progress is None:
            return
        total, done = int(row.get("bytes_total") or 0), int(row.get("bytes_done") or 0)
        task = self.tasks.get(i)
        if task is None:
            task = self.tasks[i] = self.progress.add_task("", total=None)
        elif done < self.shown.get(i, 0):
            self.progress.reset(task)               # a new attempt: the rate starts over
        self.shown[i] = done
        phase = row.get("phase") or "joining"
        self.progress.update(task, total=total or None, completed=done,
                             description=f"  #{i} {change.rg} → {change.new} {phase}")
        if total:
            self.fraction[i] = min(1.0, done / total) * 0.95
            self._update_total()

    def end(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


# -- talking to the cluster ------------------------------------------------------------------

class ChangeFailed(AdminError):
    """One change could not be carried out (it was rolled back, or finished)."""


class Cancelled(AdminError):
    """An operator asked for the job to stop (``dds-admin cancel``)."""


class Cluster:
    """The admin tool's handle on the cluster while a plan runs: addresses, the newest
    records it has seen, and the requests of the steps."""

    def __init__(self, reactor: Any, target: Target, cmap: ClusterMap,
                 addresses: Mapping[str, tuple[str, int]] | None = None) -> None:
        self.reactor = reactor
        self.target = target
        self.map = cmap
        self.addresses: dict[str, tuple[str, int]] = {
            b.id: (b.address, b.port) for b in cmap.bricks.values()}
        self.addresses.update(addresses or {})
        self.down: dict[str, str] = {}

    async def call(self, brick: str, mtype: str, body: dict[str, Any],
                   timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        if brick not in self.addresses:
            raise AdminError(f"no address for brick {brick!r}")
        host, port = self.addresses[brick]
        reply = await call_brick(self.reactor, host, port, self.target, mtype, body,
                                 timeout=5.0, call_timeout=timeout)
        peer = reply.pop("_peer_id", brick)
        if peer != brick:
            raise AdminError(f"{host}:{port} answers as {peer!r}, not as brick {brick}")
        return reply

    def learn(self, records: Iterable[Record]) -> None:
        self.map = self.map.merge(records).map
        for b in self.map.bricks.values():
            self.addresses.setdefault(b.id, (b.address, b.port))

    async def probe(self, bricks: Iterable[str] | None = None) -> set[str]:
        """The bricks (of the map by default) that answer ``status``; the others are in
        ``down`` with the reason."""
        ids = sorted(self.addresses if bricks is None else bricks)
        replies = await gather(self.call(b, "status", {}, 5.0) for b in ids)
        up = set()
        for b, r in zip(ids, replies):
            if isinstance(r, BaseException):
                self.down[b] = describe_error(r)
            else:
                up.add(b)
                self.down.pop(b, None)
        return up

    async def record(self, rg: str, also: Iterable[str] = ()) -> RGRecord:
        """The newest record of ``rg`` among its members (and ``also``)."""
        rec = await self.lookup(rg, also)
        if rec is None:
            raise AdminError(f"no brick knows replica group {rg}")
        return rec

    async def lookup(self, rg: str, also: Iterable[str] = ()) -> RGRecord | None:
        """:meth:`record`, or None if no brick asked knows ``rg``."""
        known = self.map.rgs.get(rg)
        ask = sorted({*(m.brick for m in known.members), *also} if known else set(also))
        ask = [b for b in ask if b in self.addresses]
        replies = await gather(self.call(b, "rg_status", {"rg": rg}, 5.0) for b in ask)
        found = []
        for r in replies:
            if isinstance(r, BaseException) or r.get("record") is None:
                continue
            try:
                found.append(record_from_wire(r["record"]))
            except ValueError:
                continue
        self.learn(found)
        return self.map.rgs.get(rg)

    async def push(self, records: Sequence[Record], bricks: Iterable[str] | None = None
                   ) -> dict[str, BaseException | dict[str, Any]]:
        """``map_push`` (best effort; gossip spreads records anyway, this is faster)."""
        ids = sorted(self.addresses if bricks is None else bricks)
        ids = [b for b in ids if b not in self.down]
        wire = [r.canonical() for r in records]
        replies = await gather(self.call(b, "map_push", {"records": wire}, 5.0) for b in ids)
        return dict(zip(ids, replies))

    async def rg_update(self, rg: str, *, add: str | None = None,
                        remove: str | None = None, reason: str) -> RGRecord:
        """Add or remove one member of ``rg`` by the majority 2PC (DESIGN §5), retrying
        while the record moves under us.  Already so: nothing to do."""
        member = add or remove
        assert member is not None and (add is None) != (remove is None)
        errors: list[str] = []
        for attempt in range(UPDATE_ATTEMPTS):
            rec = await self.record(rg, [member])
            state = rec.member_state(member)
            if (add and state is not None) or (remove and state is None):
                return rec
            body: dict[str, Any] = {"rg": rg, "version": rec.version, "fp": rec.fp,
                                    "reason": reason}
            body["add_member" if add else "remove_member"] = member
            coordinators = [b for b in rec.active_members if b != member] or \
                list(rec.active_members)
            for coordinator in coordinators:
                try:
                    reply = await self.call(coordinator, "rg_update", body,
                                            UPDATE_TIMEOUT_S)
                    new = record_from_wire(reply["record"])
                    assert isinstance(new, RGRecord)
                    self.learn([new])
                    await self.push([new])
                    return new
                except (StaleMap, Refused) as e:
                    errors.append(f"{coordinator}: {e.message}")
                    break           # the record moved, or its lock is held: look again
                except DDSError as e:
                    errors.append(f"{coordinator}: {describe_error(e)}")
            await pause(self.reactor, min(0.2 * (attempt + 1), 2.0))
        what = f"adding {add} to" if add else f"removing {remove} from"
        raise AdminError(f"{what} {rg} failed after {UPDATE_ATTEMPTS} attempts",
                         *errors[-3:])


async def partition_sizes(cl: Cluster, up: set[str]) -> tuple[dict[str, int], list[str]]:
    """``{pid: key + value bytes}`` of every partition, from one active, reachable member
    of its RG (a scan in the brick's thread pool), and what could not be measured."""
    jobs: list[tuple[str, list[str]]] = []
    for rec in cl.map.rgs.values():
        for e in rec.partitions:
            if e.state == "active":
                jobs.append((str(e.pid), [b for b in rec.active_members if b in up]))
    sem = DeferredSemaphore(4)
    missing: list[str] = []

    async def one(pid: str, members: list[str]) -> int | None:
        for b in members:
            try:
                reply = await cl.call(b, "range_checksums", {"pid": pid, "buckets": 1},
                                      SIZE_TIMEOUT_S)
                return int(reply.get("bytes", 0))
            except (DDSError, AdminError):
                continue
        return None
    results = await gather(sem.run(one, p, m) for p, m in jobs)
    sizes: dict[str, int] = {}
    for (pid, _), r in zip(jobs, results):
        if isinstance(r, int):
            sizes[pid] = r
        else:
            missing.append(pid)
    if missing and sizes:                   # unknown: as large as the average known one
        avg = sum(sizes.values()) // len(sizes)
        for pid in missing:
            sizes[pid] = avg
    return sizes, missing


# -- running a plan --------------------------------------------------------------------------

@attrs.frozen
class Options:
    #: Changes in flight at once (changes of one RG always run one after the other).
    parallel: int = 2
    #: Seconds one change may take (its new member's recovery, mostly).
    timeout: float = 3600.0
    dry_run: bool = False
    #: Bandwidth limit of each partition copy of a move, MB/s (0: none; None: the source
    #: brick's ``brick.move_rate_mb_s``).  A member replacement re-syncs by recovery,
    #: which always uses the source brick's setting.
    rate_mb_s: int | None = None


class Executor:
    """Runs (or, for repair, settles) the changes of one job."""

    def __init__(self, cl: Cluster, job: Job, changes: list[Change], view: View, say: Say,
                 options: Options) -> None:
        self.cl = cl
        self.job = job
        self.changes = changes
        self.view = view
        self.say = say
        self.options = options
        #: Why no further change starts (a failure, a cancel), once one happened.
        self.stop: str | None = None
        self.cancelled = False
        self.outcomes: dict[int, str] = {}
        self.copied: dict[int, int] = {}
        self.errors: list[str] = []

    def _steps_done(self, n: int, c: Change) -> str | None:
        if self.job.done(f"{n}.rolled-back"):
            return "rolled back"
        if self.job.done(f"{n}.created") or self.job.done(f"{n}.moved"):
            return "done"
        if c.kind in ("create", "move"):
            return None
        if c.old and self.job.done(f"{n}.removed"):
            return "done"
        if not c.old and self.job.done(f"{n}.active"):
            return "done"
        return None

    async def _step(self, n: int, name: str) -> None:
        await self.job.step(f"{n}.{name}")
        if failpoints.ARMED:
            failpoints.fire(f"membership.after_{name}")

    def _reason(self, n: int, c: Change) -> str:
        return f"{self.job.kind} {self.job.id} #{n}: {c.text()}"

    # -- the whole plan ----------------------------------------------------------------------

    async def run_all(self) -> None:
        """Every change, at most ``parallel`` at once; a change waits for the earlier
        changes of the RGs it alters (so changes of one RG run in plan order)."""
        sem = DeferredSemaphore(max(1, self.options.parallel))
        finished: set[int] = set()
        waiters: dict[int, list[Deferred[None]]] = {}
        last: dict[str, int] = {}
        deps: dict[int, set[int]] = {}
        for i, c in enumerate(self.changes, 1):
            deps[i] = {last[rg] for rg in c.rgs if rg in last}
            for rg in c.rgs:
                last[rg] = i
        self.view.begin(f"{self.job.kind} {self.job.id}", self.changes)

        async def one(n: int) -> None:
            c = self.changes[n - 1]
            try:
                for d in sorted(deps[n]):
                    if d not in finished:
                        waiter: Deferred[None] = Deferred()
                        waiters.setdefault(d, []).append(waiter)
                        await waiter
                if self.stop is not None:
                    self._outcome(n, c, "not started")
                    return
                await sem.acquire()
                try:
                    if self.stop is None and await self.job.cancel_requested():
                        self.cancelled = True
                        self.stop = "cancelled by dds-admin cancel"
                    if self.stop is not None:
                        self._outcome(n, c, "not started")
                        return
                    await self._guarded(n, c)
                finally:
                    sem.release()
            except Exception as e:  # noqa: BLE001 -- a bug must not pass for success
                self.errors.append(f"#{n} {c.text()}: internal error {e!r}; run "
                                   "dds-admin repair")
                self.stop = self.stop or f"change #{n} failed"
                self._outcome(n, c, "failed")
            finally:
                finished.add(n)
                for waiter in waiters.pop(n, []):
                    waiter.callback(None)
        try:
            await gather(one(n) for n in range(1, len(self.changes) + 1))
        finally:
            self.view.end()

    async def _guarded(self, n: int, c: Change) -> None:
        try:
            self._outcome(n, c, await self.run_one(n, c))
        except Cancelled as e:
            self.cancelled = True
            self.stop = self.stop or "cancelled by dds-admin cancel"
            self._outcome(n, c, e.lines[0] if e.lines else "rolled back")
        except (AdminError, DDSError) as e:
            lines = e.lines if isinstance(e, AdminError) else [describe_error(e)]
            self.errors.append(f"#{n} {c.text()}: " + "; ".join(lines))
            self.stop = self.stop or f"change #{n} failed"
            self._outcome(n, c, "failed" if not isinstance(e, ChangeFailed)
                          else e.lines[0])

    def _outcome(self, n: int, c: Change, what: str) -> None:
        self.outcomes[n] = what
        self.view.event(n, c, what)

    # -- one change ---------------------------------------------------------------------------

    async def run_one(self, n: int, c: Change, rollback: bool = False) -> str:
        """Carry out change ``n`` from wherever it is (every step checks the record
        first, so it is safe to redo).  Returns its outcome; raises :class:`Cancelled`
        or :class:`ChangeFailed` after settling it."""
        done = self._steps_done(n, c)
        if done is not None:
            return done
        self.view.event(n, c, "started")
        if c.kind == "create":
            return await self._create(n, c)
        if c.kind == "move":
            return await self._move(n, c)
        try:
            if c.new:
                if not self.job.done(f"{n}.added"):
                    await self.cl.rg_update(c.rg, add=c.new, reason=self._reason(n, c))
                    await self._step(n, "added")
                    self.view.event(n, c, f"{c.new} joined {c.rg} as recovering")
                if not self.job.done(f"{n}.active"):
                    if rollback:
                        raise Cancelled("rolled back")
                    await self._wait_active(n, c)
                    await self._step(n, "active")
                    self.view.event(n, c, f"{c.new} is active in {c.rg}")
            if c.old and not self.job.done(f"{n}.removed"):
                await self.cl.rg_update(c.rg, remove=c.old, reason=self._reason(n, c))
                await self._step(n, "removed")
            return "done"
        except Cancelled as e:
            raise Cancelled(await self._unwind(n, c, str(e))) from None
        except (AdminError, DDSError) as e:
            why = "; ".join(e.lines) if isinstance(e, AdminError) else describe_error(e)
            if not c.new:
                raise ChangeFailed(f"failed: {why}") from None
            try:
                what = await self._unwind(n, c, why)
            except (AdminError, DDSError) as e2:
                raise AdminError(f"failed ({why}), and settling it failed too "
                                 f"({describe_error(e2) if isinstance(e2, DDSError) else e2})"
                                 "; run dds-admin repair") from None
            if what == "done":
                return "done"
            raise ChangeFailed(f"{what}: {why}") from None

    async def _create(self, n: int, c: Change) -> str:
        """A new RG of ``c.members``, all active, no partitions: pushed at version 1 to
        every brick (as ``init`` does); moves fill it."""
        rec = RGRecord(c.rg, 1, [Member(m, "active") for m in c.members], [])
        held = await self.cl.lookup(c.rg, c.members)
        if held is not None and held.fp != rec.fp:
            raise ChangeFailed(f"a replica group {c.rg} exists already (v{held.version})")
        self.cl.learn([rec])
        replies = await self.cl.push([rec])
        took = [b for b, r in replies.items()
                if not isinstance(r, BaseException) and not r.get("conflicts")]
        if not set(c.members) <= set(took):
            raise ChangeFailed(f"{c.rg} was not taken by {sorted(set(c.members) - set(took))}")
        await self.job.step(f"{n}.created")
        return "done"

    async def _move(self, n: int, c: Change) -> str:
        """``dds-admin move`` of ``c.pid`` to ``c.to_rg`` (a job of its own, which
        ``repair`` settles by itself if this tool dies during it)."""
        from dds.tools import move as mv

        assert c.pid is not None and c.to_rg is not None
        where = await self._partition_rg(c)
        if where == c.to_rg:
            await self.job.step(f"{n}.moved")
            return "done"
        if where != c.rg:
            raise ChangeFailed(f"{c.pid} is active in {where or 'no RG'} now, not {c.rg}")
        result = await mv.move(self.cl.reactor, self.cl.target, c.pid, c.to_rg, self.say,
                               rate_mb_s=self.options.rate_mb_s)
        self.copied[n] = int(result.get("copied_bytes", 0))
        for rg in c.rgs:
            await self.cl.record(rg)
        await self.job.step(f"{n}.moved")
        return "done"

    async def _partition_rg(self, c: Change) -> str | None:
        found = None
        for rg in c.rgs:
            rec = await self.cl.record(rg)
            if c.pid is not None and rec.partition_state(PartitionId.parse(c.pid)) == "active":
                found = rg
        return found

    async def _serving(self, brick: str, rg: str) -> bool:
        """Whether ``brick`` answers and serves ``rg`` (asked a few times over ~2 s)."""
        for attempt in range(3):
            try:
                st = await self.cl.call(brick, "status", {}, 5.0)
                return ((st.get("members") or {}).get(rg) == "active"
                        and rg not in st.get("blocked", []))
            except (DDSError, AdminError):
                await pause(self.cl.reactor, 1.0)
        return False

    async def _unwind(self, n: int, c: Change, why: str) -> str:
        """A change that cannot go on: finished if its new member is active already and
        serves (then the old one goes), else rolled back (the new member is removed
        again, the old one stays)."""
        assert c.new is not None
        rec = await self.cl.record(c.rg, [c.new])
        state = rec.member_state(c.new)
        old_gone = c.old is not None and rec.member_state(c.old) is None
        if state == "active" and (old_gone or await self._serving(c.new, c.rg)):
            if not self.job.done(f"{n}.active"):
                await self._step(n, "active")
            if c.old and not self.job.done(f"{n}.removed"):
                await self.cl.rg_update(c.rg, remove=c.old, reason=self._reason(n, c))
                await self._step(n, "removed")
            return "done"
        if state is not None:
            self.say(f"#{n} {c.text()}: rolling back ({why})")
            await self.cl.rg_update(c.rg, remove=c.new,
                                    reason=self._reason(n, c) + f" rolled back: {why}")
        await self._step(n, "rolled-back")
        return "rolled back"

    async def _wait_active(self, n: int, c: Change) -> None:
        """Until ``c.new`` is an active member of ``c.rg`` (it re-syncs by itself), with
        its recovery's bytes shown; gives up on a stall, a timeout, a brick gone, or a
        cancel request."""
        assert c.new is not None
        now = time.monotonic()
        deadline = now + self.options.timeout
        answered = last_progress = now
        next_cancel = now + CANCEL_CHECK_S
        seen: tuple[Any, ...] | None = None
        while True:
            now = time.monotonic()
            try:
                st = await self.cl.call(c.new, "status", {}, 5.0)
                answered = now
            except (DDSError, AdminError) as e:
                if now - answered > UNREACHABLE_GRACE_S:
                    raise ChangeFailed(f"{c.new} stopped answering: "
                                       f"{e.lines[0] if isinstance(e, AdminError) else describe_error(e)}"
                                       ) from None
                st = None
            if st is not None:
                row = (st.get("recovery") or {}).get(c.rg) or {}
                state = (st.get("members") or {}).get(c.rg)
                self.view.copy(n, c, row)
                if row.get("bytes_total"):
                    self.copied[n] = int(row["bytes_total"])
                if state == "active" and c.rg not in st.get("blocked", []):
                    rec = await self.cl.record(c.rg, [c.new])
                    if rec.member_state(c.new) == "active":
                        return
                key = (row.get("attempts"), row.get("phase"), row.get("bytes_done"), state)
                # "waiting": the RG lists an incoming partition (a move into it runs), and
                # recovery waits for it to land; that is not a stall, however long.
                if key != seen or row.get("phase") == "waiting":
                    seen, last_progress = key, now
                attempts = int(row.get("attempts") or 0)
                if attempts >= MAX_ATTEMPTS and row.get("phase") == "retrying":
                    raise ChangeFailed(f"{c.new}'s recovery of {c.rg} failed {attempts} "
                                       f"times: {row.get('last_error')}")
                if state is None:
                    rec = await self.cl.record(c.rg, [c.new])
                    if rec.member_state(c.new) is None:
                        raise ChangeFailed(f"{c.new} is no longer a member of {c.rg}")
            if now - last_progress > STALL_S:
                raise ChangeFailed(f"{c.new}'s recovery of {c.rg} made no progress for "
                                   f"{STALL_S:g}s")
            if now > deadline:
                raise ChangeFailed(f"{c.new} did not become active in {c.rg} within "
                                   f"{self.options.timeout:g}s")
            if now >= next_cancel:
                next_cancel = now + CANCEL_CHECK_S
                if await self.job.cancel_requested():
                    raise Cancelled("cancelled by dds-admin cancel")
            await pause(self.cl.reactor, POLL_S)

    # -- repair --------------------------------------------------------------------------------

    async def settle(self, n: int, c: Change, rollback: bool) -> str:
        """``dds-admin repair``: finish or roll back change ``n`` if it is in flight;
        never start one that was not."""
        done = self._steps_done(n, c)
        if done is not None:
            return done
        if c.kind == "create":
            if await self.cl.lookup(c.rg, c.members) is None:
                return "not started"
            await self.job.step(f"{n}.created")
            return "done"
        if c.kind == "move":
            # A move killed midway is a job of its own, newer than this one: repair
            # settled it before this one.
            if await self._partition_rg(c) == c.to_rg:
                await self.job.step(f"{n}.moved")
                return "done"
            return "not started"
        rec = await self.cl.record(c.rg, [b for b in (c.new, c.old) if b])
        if c.new:
            state = rec.member_state(c.new)
            if not self.job.done(f"{n}.added"):
                if state is None:
                    return "not started"
                await self._step(n, "added")
            elif state is None:
                await self._step(n, "rolled-back")
                return "rolled back"
            if state == "active" and (c.old is None or rec.member_state(c.old) is not None) \
                    and not await self._serving(c.new, c.rg):
                # Active but gone: finishing would leave the RG a replica short.
                return await self._unwind(n, c, f"{c.new} does not serve {c.rg}")
        elif rec.member_state(c.old or "") is not None:
            return "not started"
        try:
            return await self.run_one(n, c, rollback=rollback)
        except (Cancelled, ChangeFailed) as e:
            return e.lines[0] if e.lines else "rolled back"


async def _retire(cl: Cluster, job: Job, bricks: Iterable[str], say: Say) -> list[str]:
    """Mark each of ``bricks`` that no RG lists any more as retired (module doc)."""
    await gather(cl.lookup(rg) for rg in list(cl.map.rgs))
    retired = []
    records = []
    for b in sorted(bricks):
        rec = cl.map.bricks.get(b)
        if rec is None or is_retired(rec) or cl.map.rgs_of_brick(b):
            continue
        records.append(attrs.evolve(rec, version=rec.version + 1,
                                    host=RETIRED + rec.failure_domain))
        retired.append(b)
    if records:
        cl.learn(records)
        await cl.push(records)
        say(f"retired {', '.join(retired)}: no replica group lists them; stop them")
    if not job.done("retired"):
        await job.step("retired", bricks=retired)
    return retired


def _involved(cl: Cluster, changes: list[Change], up: set[str],
              extra: Iterable[str] = ()) -> dict[str, tuple[str, int]]:
    """Where the job is journaled: every brick a change touches and every member of the
    RGs it changes, that answered."""
    ids = set(extra)
    for c in changes:
        ids.update(b for b in (c.old, c.new) if b)
        rec = cl.map.rgs.get(c.rg)
        if rec is not None:
            ids.update(m.brick for m in rec.members)
    ids = {b for b in ids if b in up} or set(up)
    return {b: cl.addresses[b] for b in sorted(ids) if b in cl.addresses}


def _report(kind: str, plan: Plan, *, job: str | None, dry_run: bool,
            missing: list[str], ex: Executor | None = None, seconds: float = 0.0,
            **extra: Any) -> dict[str, Any]:
    changes = []
    for i, c in enumerate(plan.changes, 1):
        row = c.to_json()
        if ex is not None:
            row["outcome"] = ex.outcomes.get(i, "not started")
            row["copied_bytes"] = ex.copied.get(i, 0)
        changes.append(row)
    errors = list(ex.errors) if ex is not None else []
    ok = not plan.problems and (ex is None or (not errors and not ex.cancelled))
    return {"kind": kind, "job": job, "dry_run": dry_run, "plan": plan.to_json(),
            "changes": changes, "ok": ok, "errors": errors,
            "cancelled": bool(ex and ex.cancelled), "seconds": round(seconds, 3),
            "copied_bytes": sum(ex.copied.values()) if ex else 0,
            "sizes_unknown": missing, **extra}


async def _execute(cl: Cluster, job: Job, plan: Plan, view: View, say: Say,
                   options: Options) -> Executor:
    ex = Executor(cl, job, plan.changes, view, say, options)
    await ex.run_all()
    if ex.cancelled:
        await job.finish("cancelled")
    elif ex.errors:
        await job.finish("failed")
    return ex


async def _measure(cl: Cluster, up: set[str], say: Say) -> tuple[dict[str, int], list[str]]:
    say("measuring partitions")
    sizes, missing = await partition_sizes(cl, up)
    if missing:
        say(f"size unknown for {len(missing)} partition(s) (no active member answered): "
            "counted as average")
    return sizes, missing


# -- the commands ----------------------------------------------------------------------------

async def add_brick(reactor: Any, target: Target, address: str, *, brick_id: str | None,
                    host: str | None, rebalance: bool, options: Options, view: View,
                    say: Say) -> dict[str, Any]:
    """Register the brick listening at ``address`` (already running with the cluster's
    secret) and, unless ``rebalance`` is False, give it replicas by member replacement."""
    t0 = time.monotonic()
    try:
        addr_host, port = parse_address(address)
    except ConfigError as e:
        raise AdminError(f"bad address {address!r}: {e.message}") from None
    cmap, _seed = await fetch_map(reactor, target)
    try:
        conn = await connect_brick(reactor, addr_host, port, target, 5.0)
    except DDSError as e:
        raise AdminError(f"{address} does not answer: {describe_error(e)}") from None
    try:
        peer = conn.peer_id
        theirs = ClusterMap.from_wire((await conn.call("map_get", {}, timeout=5.0))["map"])
    except (DDSError, ValueError, KeyError) as e:
        raise AdminError(f"{address}: map_get failed: {e}") from None
    finally:
        conn.close()
    if not isinstance(peer, str) or not peer:
        raise AdminError(f"{address} did not name itself in the handshake")
    if brick_id is not None and peer != brick_id:
        raise AdminError(f"{address} is brick {peer!r}, not {brick_id!r}")
    mine, other = cmap.cluster, theirs.cluster
    if other is not None and mine is not None and other.fp != mine.fp:
        raise AdminError(f"{address} ({peer}) already belongs to cluster {other.name!r} "
                         "with another cluster record; nothing was changed")
    for b in cmap.bricks.values():
        if b.id != peer and (b.address, b.port) == (addr_host, port) and not is_retired(b):
            raise AdminError(f"{address} is brick {b.id}'s address in the map")
    domain = host or addr_host
    existing = cmap.brick_records.get(peer)     # a forgotten one's tombstone too
    wanted = BrickRecord(peer, 1, addr_host, port, domain)
    if existing is not None:
        same = (existing.address, existing.port, existing.host) == (addr_host, port, domain)
        wanted = existing if same else attrs.evolve(wanted, version=existing.version + 1)
    cl = Cluster(reactor, target, cmap, {peer: (addr_host, port)})
    up = await cl.probe()
    if peer not in up:
        raise AdminError(f"{peer} at {address} stopped answering: {cl.down.get(peer)}")
    hypothetical = cmap.merge([wanted]).map
    sizes, missing = (await _measure(cl, up, say)) if rebalance else ({}, [])
    plan = plan_changes(layout_from_map(hypothetical, reachable=up, sizes=sizes),
                        fill=rebalance, balance=rebalance)
    if options.dry_run:
        return _report("add-brick", plan, job=None, dry_run=True, missing=missing,
                       brick=peer, address=format_address(addr_host, port), host=domain)
    job = await Job.create(reactor, target, "add-brick", {
        "brick": peer, "address": format_address(addr_host, port), "host": domain,
        "record_version": wanted.version, "changes": [c.to_json() for c in plan.changes],
        "mean": round(plan.mean, 3)}, _involved(cl, plan.changes, up, [peer]), warn=say)
    say(f"job {job.id}: add {peer} ({addr_host}:{port}, host {domain}); "
        f"{len(plan.changes)} change(s)")
    # Registration: the whole map to the new brick, its record to everyone.
    replies = await cl.push(list(cmap.merge([wanted]).map), [peer])
    replies.update(await cl.push([wanted]))
    refused = [f"{b}: {describe_error(r)}" if isinstance(r, BaseException) else
               f"{b} holds a different {', '.join(r['conflicts'])}"
               for b, r in replies.items()
               if isinstance(r, BaseException) or r.get("conflicts")]
    if isinstance(replies.get(peer), BaseException) or refused and len(refused) == len(replies):
        await job.finish("failed")
        raise AdminError(f"registering {peer} failed:", *refused)
    for line in refused:
        say(f"warning: {line} (gossip will bring it the record)")
    cl.learn([wanted])
    await job.step("registered")
    if failpoints.ARMED:
        failpoints.fire("membership.after_registered")
    ex = await _execute(cl, job, plan, view, say, options)
    if not ex.errors and not ex.cancelled:
        await job.finish("done")
    return _report("add-brick", plan, job=job.id, dry_run=False, missing=missing, ex=ex,
                   seconds=time.monotonic() - t0, brick=peer,
                   address=format_address(addr_host, port), host=domain)


async def remove_brick(reactor: Any, target: Target, bricks: list[str], *, drain: bool,
                       force: bool, options: Options, view: View,
                       say: Say) -> dict[str, Any]:
    """Take ``bricks`` out of every RG: each replaced by another brick (``drain``), or
    just removed; refused by the rules of :func:`plan_changes` unless ``force``."""
    t0 = time.monotonic()
    cmap, _seed = await fetch_map(reactor, target)
    unknown = [b for b in bricks if b not in cmap.bricks]
    if unknown:
        raise AdminError(f"not in the map: {', '.join(unknown)} (bricks: "
                         f"{', '.join(sorted(cmap.bricks))})")
    cl = Cluster(reactor, target, cmap)
    up = await cl.probe()
    await gather(cl.lookup(rg) for rg in list(cmap.rgs))
    sizes, missing = (await _measure(cl, up, say)) if drain else ({}, [])
    plan = plan_changes(layout_from_map(cl.map, reachable=up, sizes=sizes), remove=bricks,
                        drain=drain, force=force, fill=False, balance=False)
    extra: dict[str, Any] = {"bricks": sorted(bricks), "drain": drain, "force": force}
    if options.dry_run:
        return _report("remove-brick", plan, job=None, dry_run=True, missing=missing,
                       **extra)
    if plan.problems:
        raise AdminError(*plan.problems, "nothing was changed")
    job = await Job.create(reactor, target, "remove-brick", {
        **extra, "changes": [c.to_json() for c in plan.changes]},
        _involved(cl, plan.changes, up), warn=say)
    say(f"job {job.id}: remove {', '.join(sorted(bricks))}; {len(plan.changes)} change(s)")
    ex = await _execute(cl, job, plan, view, say, options)
    retired: list[str] = []
    if not ex.errors and not ex.cancelled:
        retired = await _retire(cl, job, bricks, say)
        await job.finish("done")
    return _report("remove-brick", plan, job=job.id, dry_run=False, missing=missing,
                   ex=ex, seconds=time.monotonic() - t0, retired=retired, **extra)


async def rebalance(reactor: Any, target: Target, *, options: Options, view: View,
                    say: Say) -> dict[str, Any]:
    """Level the partitions per brick (and fill RGs below the replication factor)."""
    t0 = time.monotonic()
    cmap, _seed = await fetch_map(reactor, target)
    cl = Cluster(reactor, target, cmap)
    up = await cl.probe()
    await gather(cl.lookup(rg) for rg in list(cmap.rgs))
    sizes, missing = await _measure(cl, up, say)
    plan = plan_changes(layout_from_map(cl.map, reachable=up, sizes=sizes))
    if options.dry_run or not plan.changes:
        return _report("rebalance", plan, job=None, dry_run=options.dry_run,
                       missing=missing, rate_mb_s=options.rate_mb_s)
    job = await Job.create(reactor, target, "rebalance", {
        "changes": [c.to_json() for c in plan.changes], "mean": round(plan.mean, 3),
        "rate_mb_s": options.rate_mb_s}, _involved(cl, plan.changes, up), warn=say)
    say(f"job {job.id}: rebalance, {len(plan.changes)} change(s)")
    ex = await _execute(cl, job, plan, view, say, options)
    if not ex.errors and not ex.cancelled:
        await job.finish("done")
    return _report("rebalance", plan, job=job.id, dry_run=False, missing=missing, ex=ex,
                   seconds=time.monotonic() - t0, rate_mb_s=options.rate_mb_s)


async def resume(reactor: Any, target: Target, view: JobView, say: Say) -> str:
    """``dds-admin repair`` of an ``add-brick``, ``remove-brick`` or ``rebalance`` job
    whose tool stopped: each change in flight is finished (its new member is active, or
    becomes so while its recovery progresses) or rolled back (cancel requested, or the
    recovery cannot finish); changes not started are not started.  Returns what was done."""
    cmap, _seed = await fetch_map(reactor, target)
    extra: dict[str, tuple[str, int]] = {}
    if view.kind == "add-brick" and view.plan.get("brick") not in cmap.bricks:
        try:
            extra[str(view.plan["brick"])] = parse_address(str(view.plan["address"]))
        except (KeyError, ConfigError):
            pass
    cl = Cluster(reactor, target, cmap, extra)
    changes = [Change.from_json(c) for c in view.plan.get("changes", [])]
    up = await cl.probe()
    journal = {b: cl.addresses[b] for b in {*view.bricks, *_involved(cl, changes, up)}
               if b in cl.addresses and b in up} or {
        b: cl.addresses[b] for b in view.bricks if b in cl.addresses}
    job = Job.resume(reactor, target, view, journal, warn=say)
    ex = Executor(cl, job, changes, QuietView(), say, Options())
    rollback = view.state == "cancel-requested"
    outcomes: list[str] = []
    for n, c in enumerate(changes, 1):
        outcome = await ex.settle(n, c, rollback)
        ex.outcomes[n] = outcome
        outcomes.append(outcome)
        if outcome not in ("done", "not started"):
            say(f"#{n} {c.text()}: {outcome}")
    done = sum(1 for o in outcomes if o == "done")
    if done == len(changes):
        if view.kind == "remove-brick":
            await _retire(cl, job, view.plan.get("bricks", []), say)
        await job.finish("done")
        return "finished"
    await job.finish("cancelled")
    back = sum(1 for o in outcomes if o.startswith("rolled back"))
    if view.kind == "remove-brick":
        again = "remove-brick " + " ".join(view.plan.get("bricks", []))
    elif view.kind == "add-brick" and not job.done("registered"):
        again = f"add-brick {view.plan.get('address')}"
    else:
        again = "rebalance"
    return (f"stopped: {done} of {len(changes)} change(s) done"
            + (f", {back} rolled back" if back else "")
            + f"; run `dds-admin {again}` again to go on")


# -- output ----------------------------------------------------------------------------------

def render_plan(report: Mapping[str, Any], console: Console) -> None:
    """The plan: its changes, then the load of every brick before and after."""
    plan = report["plan"]
    changes = report["changes"]
    if changes:
        if report["dry_run"]:
            console.print("dry run: nothing is changed")
        t = Table(title=f"{report['kind']} plan", title_justify="left")
        for col in ("#", "group", "change", "partitions", "bytes"):
            t.add_column(col, justify="right" if col in ("#", "partitions", "bytes")
                         else "left")
        if "outcome" in changes[0]:
            t.add_column("outcome")
        for i, c in enumerate(changes, 1):
            change = Change.from_json(c)
            text = {"replace": f"{c['old']} → {c['new']}", "add": f"+ {c['new']}",
                    "remove": f"− {c['old']}",
                    "move": f"move {c.get('pid')} to {c.get('to_rg')}",
                    "create": "new group: " + " ".join(c.get("members", []))
                    }[change.kind]
            row = [str(i), escape(c["rg"]), escape(text), str(c["partitions"]),
                   decimal(int(c["bytes"])) if change.kind in ("replace", "add", "move")
                   else "-"]
            if "outcome" in c:
                colour = "green" if c["outcome"] == "done" else "yellow"
                row.append(f"[{colour}]{escape(c['outcome'])}[/{colour}]")
            t.add_row(*row)
        console.print(t)
    else:
        console.print("nothing to change: the layout is as level as member choice makes "
                      "it" if not plan["problems"] else "no change can be planned")
    before, after = plan["loads_before"], plan["loads_after"]
    if before or after:
        t = Table(title="partitions per brick", title_justify="left")
        for col in ("brick", "before", "after"):
            t.add_column(col, justify="left" if col == "brick" else "right")
        lo, hi = plan["mean"] - 1, plan["mean"] + 1
        for b in sorted({*before, *after}, key=lambda b: (len(b), b)):
            a = after.get(b, 0)
            colour = "green" if lo - 1e-9 <= a <= hi + 1e-9 or a == 0 and b not in after \
                else "yellow"
            t.add_row(b, str(before.get(b, 0)), f"[{colour}]{a}[/{colour}]")
        console.print(t)
    console.print(f"mean {plan['mean']:.2f} partitions per brick, target {plan['target']}")
    console.print(f"{len(changes)} change(s), {decimal(plan['bytes'])} to copy"
                  + ("" if plan["reached"] else " (target not reachable: see notes)"))
    if report.get("rate_mb_s") is not None:
        rate = report["rate_mb_s"]
        console.print("copy rate of each move: " + (f"at most {rate} MB/s" if rate
                                                    else "unlimited"))
    for note in plan["notes"]:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    for problem in plan["problems"]:
        console.print(f"[red]refused:[/red] {escape(problem)}", soft_wrap=True)


def render_report(report: Mapping[str, Any], console: Console) -> None:
    render_plan(report, console)
    if report["dry_run"] or report["job"] is None:
        return
    done = sum(1 for c in report["changes"] if c.get("outcome") == "done")
    line = (f"job {report['job']}: {done} of {len(report['changes'])} change(s) done, "
            f"{decimal(report['copied_bytes'])} copied in {report['seconds']:.1f}s")
    if report.get("retired"):
        line += f"; retired {', '.join(report['retired'])} (stop them)"
    if report["cancelled"]:
        line += " — cancelled"
    console.print(f"[green]{line}[/green]" if report["ok"] else line)
