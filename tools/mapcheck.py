"""``dds-admin repair``, step ``map``: every brick's map compared record by record, and
made to agree (DESIGN §2, §5).

1. **Collect.** ``map_get`` from every brick the map names (and any brick another
   brick's map names).  A brick that does not answer is reported and left alone: what it
   holds is not guessed.
2. **Compare.** Per record (the cluster record, each brick record, each RG record), which
   bricks hold which ``(version, fp)``.  A record is

   - *agreed*: every reachable brick holds the same version and fingerprint;
   - *lagging*: one content at the newest version, and some bricks hold an older version
     or no copy at all: the newest record is pushed to them (``map_push``; gossip would,
     in a second or so, unless gossip is broken, which is why repair does not wait);
   - *conflicting*: two contents at the newest version (the 2PC of §5 makes that
     impossible; manual surgery, a bug or a half-done ``init`` do not).

3. **Choose** the content that wins a conflict, safely, or refuse:

   - an RG record: the content held by a majority of *its own* active members
     (``RGRecord.quorum``).  It wins by the normal record change: ``rg_update`` (the
     majority 2PC) of the same partitions, coordinated by one of those members, commits
     it as version v+1.  Members that hold the other content vote no (``Divergence``);
     the majority is enough.  Merge by version then makes every brick adopt v+1;
   - a brick or cluster record (they have no 2PC; their changes are pushed, as
     ``remove-brick`` re-pushes a retired brick's record): the content held by a
     majority of all bricks (a stopped brick counts against), pushed as version v+1.

   Two contents that each have such a majority, or none that has one: no safe choice.
   Then nothing at all is changed (no push either), the report says why, and the step
   fails.  ``--prefer BRICK`` names the brick whose content wins a conflict that has no
   safe choice: pushed as version v+1 without a vote (a record change could not get
   one).  The operator must have checked which content is right.
4. **Verify.** The maps are fetched again; every reachable brick must hold the same
   version and fingerprint of every record (pushed again, a few rounds, while a record
   still moves under a change made meanwhile).

Retired bricks (``remove-brick``) that are stopped are listed, not counted as
unreachable.  :func:`repair_map` returns the report; :func:`render` draws it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dds.config import format_address
from dds.errors import DDSError, Divergence, StaleMap
from dds.maps import ClusterMap
from dds.messages import MapGet, MapPush, RGUpdate
from dds.records import BrickRecord, Record, RGRecord, record_from_wire
from dds.tools.cluster import BrickCaller, Target, ask, describe_error, fetch_map, gather
from dds.tools.runner import AdminError, pause

__all__ = ["MapView", "RecordView", "Choice", "collect", "choose", "repair_map", "render"]

Say = Callable[[str], None]
#: ``rg_update`` waits for the majority 2PC.
UPDATE_TIMEOUT_S = 30.0
#: Attempts of one record change while a voter's record lock is held by another change.
UPDATE_ATTEMPTS = 5
#: Rounds of push and check after the changes (a record may move under a change made
#: meanwhile, by a move, an exclusion ...).
VERIFY_ROUNDS = 3
RETIRED = "retired:"


def _fp(value: int) -> str:
    return f"{value:#010x}"


def _at(rec: Record) -> str:
    return f"{rec.record_id}@{rec.version}"


# -- collecting ------------------------------------------------------------------------------

@attrs.frozen
class MapView:
    """Every brick's map, as far as the bricks answered."""

    #: The newest brick record seen of every brick (anywhere).
    bricks: Mapping[str, BrickRecord]
    maps: Mapping[str, ClusterMap]
    #: Bricks that did not answer (or answered with something unusable): the reason.
    errors: Mapping[str, str]

    @property
    def reachable(self) -> list[str]:
        return sorted(self.maps)

    def retired_down(self, brick: str) -> bool:
        rec = self.bricks.get(brick)
        return brick in self.errors and rec is not None and rec.host.startswith(RETIRED)

    @property
    def unreachable(self) -> dict[str, str]:
        return {b: e for b, e in sorted(self.errors.items()) if not self.retired_down(b)}

    def records(self) -> list["RecordView"]:
        ids = sorted({rid for m in self.maps.values() for rid in m.records})
        return [RecordView(rid, {b: m.records[rid] for b, m in sorted(self.maps.items())
                                 if rid in m.records},
                           tuple(b for b in self.reachable if rid not in self.maps[b].records))
                for rid in ids]


async def _map_of(reactor: Any, target: Target, brick: BrickRecord,
                  timeout: float) -> ClusterMap:
    answer = await ask(reactor, brick.address, brick.port, target, MapGet(), timeout)
    if answer.peer != brick.id:
        raise AdminError(f"{brick.address}:{brick.port} answers as "
                         f"{answer.peer!r}, not as {brick.id}")
    try:
        return ClusterMap.from_wire(answer.reply["map"])
    except (ValueError, KeyError) as e:
        raise AdminError(f"unreadable map: {e}") from None


async def collect(reactor: Any, target: Target, timeout: float) -> MapView:
    """The map of every brick named by the seed's map, or by any brick's map."""
    cmap, _seed = await fetch_map(reactor, target, timeout)
    # Forgotten bricks' tombstones included, so that an older record of the same brick
    # in a lagging map does not bring it back; they are never asked nor listed.
    known: dict[str, BrickRecord] = dict(cmap.brick_records)
    maps: dict[str, ClusterMap] = {}
    errors: dict[str, str] = {}
    asked: set[str] = set()
    while todo := sorted(b for b in set(known) - asked if not known[b].forgotten):
        asked.update(todo)
        replies = await gather(_map_of(reactor, target, known[b], timeout) for b in todo)
        for b, r in zip(todo, replies):
            if isinstance(r, AdminError):
                errors[b] = "; ".join(r.lines)
            elif isinstance(r, BaseException):
                errors[b] = describe_error(r)
            else:
                maps[b] = r
                for rec in r.brick_records.values():
                    if rec.id not in known or rec.version > known[rec.id].version:
                        known[rec.id] = rec
    return MapView({b: rec for b, rec in known.items() if not rec.forgotten}, maps, errors)


# -- comparing -------------------------------------------------------------------------------

@attrs.frozen
class RecordView:
    """One record across the reachable bricks."""

    rid: str
    #: What each brick holding it holds.
    held: Mapping[str, Record]
    #: Reachable bricks with no copy at all.
    missing: tuple[str, ...]

    @property
    def newest(self) -> int:
        return max(r.version for r in self.held.values())

    @property
    def contents(self) -> dict[int, Record]:
        """The contents at the newest version, by fingerprint."""
        v = self.newest
        return {r.fp: r for r in self.held.values() if r.version == v}

    def holders(self, fp: int) -> list[str]:
        v = self.newest
        return sorted(b for b, r in self.held.items() if r.version == v and r.fp == fp)

    @property
    def lagging(self) -> list[str]:
        v = self.newest
        return sorted([b for b, r in self.held.items() if r.version < v] + list(self.missing))

    @property
    def state(self) -> str:
        if len(self.contents) > 1:
            return "conflict"
        return "lagging" if self.lagging else "agreed"

    def to_json(self) -> dict[str, Any]:
        groups: dict[tuple[int, int], list[str]] = {}
        for b, r in self.held.items():
            groups.setdefault((r.version, r.fp), []).append(b)
        return {"record": self.rid, "state": self.state, "newest": self.newest,
                "held": [{"version": v, "fp": fp, "fp_text": _fp(fp), "bricks": sorted(bs)}
                         for (v, fp), bs in sorted(groups.items(), key=lambda x: (-x[0][0],
                                                                                  x[0][1]))],
                "missing": list(self.missing)}


@attrs.frozen
class Choice:
    """The content that wins a conflict (``winner``) and why (``rule``), or why none
    can (``winner`` None)."""

    winner: Record | None
    rule: str
    #: Per content at the newest version: who holds it, who may vote, how many must.
    candidates: list[dict[str, Any]]
    forced: bool = False
    #: The winning holders that may coordinate its record change (RG records).
    coordinators: tuple[str, ...] = ()


def choose(rv: RecordView, view: MapView, prefer: str | None) -> Choice:
    """Which content of a conflicting record wins (module doc, step 3)."""
    everyone = sorted(b for b in view.bricks if not view.retired_down(b))
    candidates: list[dict[str, Any]] = []
    qualified: list[tuple[Record, list[str]]] = []
    for fp, rec in sorted(rv.contents.items(), key=lambda item: item[0]):
        holders = rv.holders(fp)
        if isinstance(rec, RGRecord):
            voters, needed = list(rec.active_members), rec.quorum
            who = "its active members"
        else:
            voters, needed = everyone, len(everyone) // 2 + 1
            who = "all bricks"
        votes = [b for b in holders if b in voters]
        candidates.append({"fp": fp, "fp_text": _fp(fp), "bricks": holders,
                           "voters": voters, "votes": votes, "needed": needed,
                           "majority": len(votes) >= needed, "of": who})
        if len(votes) >= needed:
            qualified.append((rec, votes))
    if len(qualified) == 1:
        rec, votes = qualified[0]
        c = next(c for c in candidates if c["fp"] == rec.fp)
        return Choice(rec, f"held by {len(votes)} of {len(c['voters'])} of {c['of']} "
                           f"({', '.join(votes)}), a majority", candidates,
                      coordinators=tuple(votes) if isinstance(rec, RGRecord) else ())
    why = ("no safe choice: more than one content is held by a majority of its voters"
           if qualified else "no safe choice: no content is held by a majority of "
           + ("its active members" if isinstance(next(iter(rv.contents.values())), RGRecord)
              else "all bricks"))
    if prefer is not None:
        for fp, rec in rv.contents.items():
            if prefer in rv.holders(fp):
                return Choice(rec, f"{why}; --prefer {prefer}: its content", candidates,
                              forced=True)
        why += f"; --prefer {prefer}: it does not hold {rv.rid} v{rv.newest}"
    return Choice(None, why, candidates)


# -- acting ----------------------------------------------------------------------------------

async def _commit_rg(calls: BrickCaller, rv: RecordView, choice: Choice, say: Say) -> RGRecord:
    """The winning content of an RG record as version v+1, by ``rg_update`` of the same
    partitions (the majority 2PC) coordinated by one of the members that hold it."""
    winner = choice.winner
    assert isinstance(winner, RGRecord)
    update = RGUpdate(rg=winner.name, version=winner.version, fp=winner.fp,
                      partitions=[[str(e.pid), e.state] for e in winner.partitions],
                      reason=f"dds-admin repair: divergence of {winner.record_id} "
                             f"v{winner.version}, contents {_fp(winner.fp)} win")
    expected = attrs.evolve(winner, version=winner.version + 1)
    errors: list[str] = []
    for attempt in range(UPDATE_ATTEMPTS):
        for coordinator in choice.coordinators:
            try:
                reply = await calls.send(coordinator, update, UPDATE_TIMEOUT_S)
                new = record_from_wire(reply["record"])
            except StaleMap as e:
                if not isinstance(e, Divergence):
                    # An earlier attempt whose reply was lost may have committed it.
                    try:
                        if e.data is not None and record_from_wire(e.data) == expected:
                            return expected
                    except ValueError:
                        pass
                    raise AdminError(f"{coordinator}: {e.message} (the record moved on "
                                     "while repairing: run repair again)") from None
                errors.append(f"{coordinator}: {e.message}")
                continue
            except (DDSError, AdminError, ValueError, KeyError) as e:
                # Refused: a voter's record lock is held by another change, or too
                # few votes came (a voter busy, unreachable): try again.
                errors.append(f"{coordinator}: " + (describe_error(e) if isinstance(
                    e, DDSError) else str(e)))
                continue
            if not isinstance(new, RGRecord) or new.fp != expected.fp:
                raise AdminError(f"{coordinator} committed an unexpected {_at(new)}")
            return new
        say(f"  {rv.rid}: retrying the record change ({'; '.join(errors[-2:])})")
        await pause(calls.reactor, 0.3 * (attempt + 1))
    raise AdminError(f"could not commit {rv.rid} v{rv.newest + 1}: " + "; ".join(errors[-3:]))


async def _push(calls: BrickCaller, wanted: Mapping[str, Record], view: MapView,
                say: Say) -> list[dict[str, Any]]:
    """``map_push`` to each reachable brick of the records it holds older or lacks."""
    plan = _pushes(wanted, view)
    if not plan:
        return []
    say(f"pushing {sum(len(r) for r in plan.values())} record(s) to {len(plan)} brick(s)")
    ids = sorted(plan)
    replies = await gather(calls.send(b, MapPush(records=[r.canonical() for r in plan[b]]))
                           for b in ids)
    out = []
    for b, r in zip(ids, replies):
        entry: dict[str, Any] = {"brick": b, "records": [_at(x) for x in plan[b]]}
        if isinstance(r, BaseException):
            entry["error"] = "; ".join(r.lines) if isinstance(r, AdminError) else \
                describe_error(r)
        else:
            entry["adopted"] = int(r.get("adopted", 0))
            if r.get("conflicts"):
                entry["error"] = f"holds other contents of {', '.join(r['conflicts'])}"
        out.append(entry)
    return out


def _pushes(wanted: Mapping[str, Record], view: MapView) -> dict[str, list[Record]]:
    plan: dict[str, list[Record]] = {}
    for b, m in view.maps.items():
        need = [rec for rid, rec in sorted(wanted.items())
                if (held := m.records.get(rid)) is None or held.version < rec.version]
        if need:
            plan[b] = need
    return plan


# -- the step --------------------------------------------------------------------------------

def _brick_rows(view: MapView) -> list[dict[str, Any]]:
    rows = []
    for b in sorted(view.bricks, key=lambda x: (len(x), x)):
        rec = view.bricks[b]
        row: dict[str, Any] = {"brick": b, "address": format_address(rec.address, rec.port),
                               "up": b in view.maps}
        if b in view.maps:
            m = view.maps[b]
            row.update(map_version=m.version, map_fp=m.fp, records=len(m))
        else:
            row.update(error=view.errors.get(b, ""), retired=view.retired_down(b))
        rows.append(row)
    return rows


def _agreement(view: MapView) -> str:
    fps = {m.fp for m in view.maps.values()}
    n = len(view.maps)
    which = f"{n} reachable bricks" if view.unreachable else f"{n} bricks"
    if len(fps) == 1:
        m = next(iter(view.maps.values()))
        return f"all {which} agree on map version {m.version} fp {_fp(m.fp)}"
    return f"the {which} hold {len(fps)} different maps"


def _note(view: MapView) -> str:
    down = view.unreachable
    return f"; not reachable, not checked: {', '.join(down)}" if down else ""


async def repair_map(reactor: Any, target: Target, *, dry_run: bool, prefer: str | None,
                     timeout: float, say: Say) -> dict[str, Any]:
    """Step ``map`` of repair (module doc).  Returns its report."""
    view = await collect(reactor, target, timeout)
    if prefer is not None and prefer not in view.bricks:
        raise AdminError(f"--prefer {prefer}: no such brick (bricks: "
                         f"{', '.join(sorted(view.bricks))})")
    records = view.records()
    report: dict[str, Any] = {
        "bricks": _brick_rows(view),
        "unreachable": [{"brick": b, "error": e} for b, e in view.unreachable.items()],
        "retired_down": sorted(b for b in view.errors if view.retired_down(b)),
        "records": [rv.to_json() for rv in records],
        "conflicts": [], "pushes": [], "unresolved": [], "errors": []}
    lagging = [rv for rv in records if rv.state == "lagging"]
    conflicting = [rv for rv in records if rv.state == "conflict"]
    if not view.maps:
        report.update(ok=False, summary="no brick answered" + _note(view))
        return report
    if not lagging and not conflicting:
        report.update(ok=not view.unreachable, summary=_agreement(view) + _note(view))
        return report

    choices = {rv.rid: choose(rv, view, prefer) for rv in conflicting}
    for rv in conflicting:
        c = choices[rv.rid]
        report["conflicts"].append({
            "record": rv.rid, "version": rv.newest, "candidates": c.candidates,
            "winner": None if c.winner is None else {"fp": c.winner.fp,
                                                    "fp_text": _fp(c.winner.fp),
                                                    "bricks": rv.holders(c.winner.fp)},
            "rule": c.rule, "forced": c.forced,
            "how": None if c.winner is None else (
                "record change (majority 2PC)" if c.coordinators else "push"),
            "new_version": rv.newest + 1})
    unresolved = [rv.rid for rv in conflicting if choices[rv.rid].winner is None]
    report["unresolved"] = unresolved
    if unresolved:
        for rid in unresolved:
            say(f"{rid}: {choices[rid].rule}")
        report.update(ok=False, summary=(
            f"refused, nothing changed: no safe choice for {', '.join(unresolved)} "
            "(see the conflicts; --prefer BRICK chooses)" + _note(view)))
        return report

    lag_pushes = _pushes({rv.rid: next(iter(rv.contents.values())) for rv in lagging},
                         view)
    if dry_run:
        winners = {rid: c.winner.fp for rid, c in choices.items() if c.winner is not None}
        parts = [f"would make {len(conflicting)} conflicting record(s) win at a new "
                 "version: " + ", ".join(
                     f"{rv.rid} v{rv.newest} → v{rv.newest + 1} contents "
                     f"{_fp(winners[rv.rid])}" for rv in conflicting)] if conflicting else []
        if lagging:
            parts.append(f"would push {sum(len(r) for r in lag_pushes.values())} record(s) "
                         f"to {len(lag_pushes)} lagging brick(s)")
        report["pushes"] = [{"brick": b, "records": [_at(r) for r in rs],
                             "action": "would push"} for b, rs in sorted(lag_pushes.items())]
        report.update(ok=not view.unreachable, summary="; ".join(parts) + _note(view))
        return report

    calls = BrickCaller(reactor, target, {b: (rec.address, rec.port)
                                          for b, rec in view.bricks.items()},
                        timeout=timeout, connect_timeout=timeout, reuse=False)
    wanted: dict[str, Record] = {rv.rid: next(iter(rv.contents.values())) for rv in lagging}
    done: list[str] = []
    for rv, entry in zip(conflicting, report["conflicts"]):
        c = choices[rv.rid]
        assert c.winner is not None
        try:
            if c.coordinators:
                say(f"{rv.rid} v{rv.newest}: contents {_fp(c.winner.fp)} win ({c.rule}); "
                    f"committing v{rv.newest + 1} by a record change")
                new: Record = await _commit_rg(calls, rv, c, say)
            else:
                say(f"{rv.rid} v{rv.newest}: contents {_fp(c.winner.fp)} win ({c.rule}); "
                    f"pushing them as v{rv.newest + 1}")
                new = attrs.evolve(c.winner, version=rv.newest + 1)
        except AdminError as e:
            entry["error"] = "; ".join(e.lines)
            report["errors"].append(f"{rv.rid}: {entry['error']}")
            continue
        entry.update(committed={"version": new.version, "fp": new.fp,
                                "fp_text": _fp(new.fp)})
        wanted[rv.rid] = new
        done.append(f"{rv.rid} → v{new.version}")

    if done:
        # The coordinators told the members already; push only what is still missing.
        view = await collect(reactor, target, timeout)
    # Push, look again, push what is still behind (a change made meanwhile moves on).
    for _round in range(VERIFY_ROUNDS):
        pushed = await _push(calls, wanted, view, say)
        report["pushes"] += pushed
        view = await collect(reactor, target, timeout)
        after = view.records()
        behind = [rv for rv in after if rv.state != "agreed"]
        if not behind or any(rv.state == "conflict" for rv in behind):
            break
        wanted = {rv.rid: next(iter(rv.contents.values())) for rv in behind}
    after = view.records()
    left = [rv for rv in after if rv.state != "agreed"]
    report["after"] = [rv.to_json() for rv in left]
    report["bricks_after"] = _brick_rows(view)
    report["errors"] += [f"{p['brick']}: {p['error']}" for p in report["pushes"]
                         if "error" in p]
    ok_pushes = [p for p in report["pushes"] if "error" not in p]
    parts = []
    if done:
        parts.append("resolved " + ", ".join(done))
    if ok_pushes:
        parts.append(f"pushed {sum(len(p['records']) for p in ok_pushes)} record(s) to "
                     f"{len({p['brick'] for p in ok_pushes})} brick(s)")
    if left:
        parts.append("still differing: " + ", ".join(f"{rv.rid} ({rv.state})" for rv in left))
    else:
        parts.append(_agreement(view))
    report.update(ok=not left and not report["errors"] and not view.unreachable,
                  summary="; ".join(parts) + _note(view))
    return report


# -- rendering -------------------------------------------------------------------------------

def _held_text(entry: Mapping[str, Any]) -> str:
    parts = [f"v{h['version']} {h['fp_text']}: {', '.join(h['bricks'])}"
             for h in entry["held"]]
    if entry["missing"]:
        parts.append(f"missing: {', '.join(entry['missing'])}")
    return "; ".join(parts)


def render(result: Mapping[str, Any], dry_run: bool, console: Console) -> None:
    """The records that differ, the conflicts with their choice, the pushes."""
    differing = [r for r in result["records"] if r["state"] != "agreed"]
    if differing:
        t = Table(title="map records that differ between bricks", title_justify="left")
        for col in ("record", "state", "held (version fp: bricks)"):
            t.add_column(col)
        for r in differing:
            colour = "red" if r["state"] == "conflict" else "yellow"
            t.add_row(escape(r["record"]), f"[{colour}]{r['state']}[/{colour}]",
                      escape(_held_text(r)))
        console.print(t)
    if result["conflicts"]:
        t = Table(title="conflicts (same version, different contents)", title_justify="left")
        for col in ("record", "contents", "held by", "voters holding it", "outcome"):
            t.add_column(col)
        for c in result["conflicts"]:
            winner = c["winner"]["fp"] if c["winner"] else None
            for i, cand in enumerate(c["candidates"]):
                first = i == 0
                mark = " [green](wins)[/green]" if cand["fp"] == winner else ""
                outcome = ""
                if first:
                    if winner is None:
                        outcome = f"[red]{escape(c['rule'])}[/red]"
                    elif "committed" in c:
                        outcome = (f"[green]v{c['committed']['version']} "
                                   f"{c['committed']['fp_text']} by {c['how']}[/green]: "
                                   + escape(c["rule"]))
                    elif "error" in c:
                        outcome = f"[red]{escape(c['error'])}[/red]"
                    else:
                        outcome = (f"{'would commit' if dry_run else 'commit'} "
                                   f"v{c['new_version']} by {c['how']}: " + escape(c["rule"]))
                t.add_row(escape(c["record"]) if first else "",
                          f"v{c['version']} {cand['fp_text']}{mark}",
                          escape(", ".join(cand["bricks"])),
                          f"{len(cand['votes'])} of {len(cand['voters'])} "
                          f"({cand['needed']} needed)",
                          outcome, end_section=i == len(c["candidates"]) - 1)
        console.print(t)
    pushes = [p for p in result["pushes"]]
    if pushes:
        t = Table(title="records pushed" if not dry_run else "records repair would push",
                  title_justify="left")
        for col in ("brick", "records", "outcome"):
            t.add_column(col)
        for p in pushes:
            outcome = (f"[red]{escape(p['error'])}[/red]" if "error" in p else
                       p.get("action") or f"adopted {p.get('adopted', 0)}")
            t.add_row(p["brick"], escape(", ".join(p["records"])), outcome)
        console.print(t)
    for r in result.get("after", []):
        console.print(f"[red]still differing: {escape(r['record'])} ({r['state']}): "
                      f"{escape(_held_text(r))}[/red]")
    for u in result["unreachable"]:
        console.print(f"[red]{u['brick']}: not reachable, its map not checked: "
                      f"{escape(u['error'])}[/red]")
    if result.get("retired_down"):
        console.print(f"[dim]retired and stopped, not checked: "
                      f"{', '.join(result['retired_down'])}[/dim]")
