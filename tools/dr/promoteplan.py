"""What ``dds-admin dr promote`` decides, without any I/O (DESIGN §12): which replica
rows to copy so that every replica of a DR partition agrees, the cut-off of each primary
partition from the follower's marks, the loss window, the replays the bricks counted, and
the report (its table; ``--json`` prints the dict).

**Agreement.**  The follower's ``dr_apply`` goes to every active member of a DR
partition, and the primary was lost at an arbitrary moment: some members may hold rows
that others lack.  Per key the newest version wins (versions of a key only grow, and a
DR row is written only over an older copy): it is copied to every member holding an
older version or none.  Two members at the same version with different values cannot be
decided by version: reported as divergent, not changed.

**Cut-off.**  A mark ``(D, P) = [position, safe_ms]`` says DR partition ``D`` holds every
row of primary partition ``P`` committed before ``safe_ms`` that routes to ``D`` (the
follower applies a partition's pages in order and counts a page only once every DR
replica took it).  After the agreement, a DR partition holds the union of its replicas,
so its mark for ``P`` is the newest any replica holds; ``P``'s cut-off is the oldest mark
among the DR partitions overlapping ``P``: every write committed on ``P`` before it is
at the DR site.  A write acknowledged after it may be missing unless a client replays
it.  A DR partition overlapping ``P`` without a mark for it leaves ``P`` without a
cut-off (anything of ``P`` may be missing).  The **loss window** is the promotion time
minus the oldest cut-off.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from rich.console import Console
from rich.table import Table

from dds.partition import PartitionId

__all__ = ["Fix", "newest_fixes", "partition_marks", "cutoffs", "loss_window_ms",
           "replays", "REPLAY_OUTCOMES", "render"]

#: The outcomes bricks count (``dds_dr_replays_total{outcome}``).
REPLAY_OUTCOMES = ("applied", "newer", "window_closed", "not_promoted")


@attrs.frozen
class Fix:
    """Copy ``key`` at ``version`` from ``source`` to ``targets``."""

    key: bytes
    version: int
    source: str
    targets: tuple[str, ...]


def newest_fixes(listings: Mapping[str, Sequence[Sequence[Any]]]
                 ) -> tuple[list[Fix], list[bytes]]:
    """From each member's ``range_keys`` listing (``[[key, version, value_hash], ...]``),
    the copies that bring every member to each key's newest version, and the keys whose
    newest version differs in value between members (divergent: left alone)."""
    table: dict[bytes, dict[str, tuple[int, Any]]] = {}
    for brick, entries in listings.items():
        for key, version, vhash in entries:
            table.setdefault(bytes(key), {})[brick] = (int(version), vhash)
    fixes: list[Fix] = []
    divergent: list[bytes] = []
    members = sorted(listings)
    for key in sorted(table):
        held = table[key]
        newest = max(v for v, _h in held.values())
        at_newest = sorted(b for b, (v, _h) in held.items() if v == newest)
        if len({held[b][1] for b in at_newest}) > 1:
            divergent.append(key)
            continue
        behind = tuple(b for b in members if b not in held or held[b][0] < newest)
        if behind:
            fixes.append(Fix(key, newest, at_newest[0], behind))
    return fixes, divergent


def partition_marks(replies: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
                    members: Mapping[str, Sequence[str]]
                    ) -> dict[str, dict[str, int]]:
    """Per DR partition, per primary partition, the newest mark (safe ms) any of its
    active members holds.  ``replies``: brick → its ``dr_marks`` (DR pid → primary pid
    → ``[position, safe_ms]``); ``members``: DR pid → its active members."""
    out: dict[str, dict[str, int]] = {pid: {} for pid in members}
    for dr_pid, bricks in members.items():
        mine = out[dr_pid]
        for b in bricks:
            for p, mark in (replies.get(b, {}).get(dr_pid) or {}).items():
                try:
                    safe = int(mark[1])
                except (TypeError, ValueError, IndexError):
                    continue
                if safe > mine.get(p, -1):
                    mine[p] = safe
    return out


def cutoffs(marks: Mapping[str, Mapping[str, int]]) -> dict[str, int | None]:
    """Per primary partition named in any mark, its cut-off (module docstring): the
    oldest mark among the DR partitions that overlap it; None if one of them has none."""
    primaries = sorted({p for per in marks.values() for p in per},
                       key=PartitionId.parse)
    out: dict[str, int | None] = {}
    for p in primaries:
        pp = PartitionId.parse(p)
        found: list[int | None] = []
        for dr_pid, per in marks.items():
            d = PartitionId.parse(dr_pid)
            if d.covers(pp) or pp.covers(d):
                found.append(per.get(p))
        out[p] = None if not found or None in found else min(
            x for x in found if x is not None)
    return out


def loss_window_ms(cuts: Mapping[str, int | None], promoted_ms: int) -> int | None:
    """The promotion time minus the oldest cut-off; None if a partition has none (or no
    partition has marks: the follower never reported)."""
    if not cuts or any(v is None for v in cuts.values()):
        return None
    return max(0, promoted_ms - min(v for v in cuts.values() if v is not None))


def replays(metrics: Mapping[str, Mapping[str, float]],
            rgs: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """The replays the site took, by outcome: every member of an RG counts each replay
    it voted on, so per RG the largest count of its members, summed over RGs.
    ``metrics``: brick → its status ``metrics`` (``dr_replays_total{outcome="..."}``)."""
    out = {o: 0 for o in REPLAY_OUTCOMES}
    for members in rgs.values():
        for o in REPLAY_OUTCOMES:
            name = f'dr_replays_total{{outcome="{o}"}}'
            out[o] += int(max((metrics.get(b, {}).get(name, 0) for b in members),
                              default=0))
    return out


def _when(ms: int | None) -> str:
    if ms is None:
        return "none"
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def render(report: Mapping[str, Any], console: Console) -> None:
    """The report for people: the steps' outcome, the cut-offs, the loss window."""
    a = report["agreement"]
    console.print(f"promoted {report['site']!r} from {report['primary']!r} at epoch "
                  f"{report['epoch']}; replay window until "
                  f"{_when(report['replay_until_ms'])} ({report['window_s']:g} s)")
    console.print(f"agreement: {a['partitions']} partition(s) compared, "
                  f"{a['keys_copied']} key(s) copied to replicas that lacked them"
                  + (f", {len(a['divergent'])} divergent key(s) left alone"
                     if a["divergent"] else ""))
    table = Table(title="cut-off per primary partition (writes acknowledged after it "
                        "may be missing unless a client replays them)")
    for col in ("primary partition", "cut-off", "before promotion"):
        table.add_column(col)
    for p, c in report["cutoffs"].items():
        age = "unknown" if c["safe_ms"] is None else f"{c['age_ms'] / 1000:.3f} s"
        table.add_row(p, _when(c["safe_ms"]), age)
    console.print(table)
    loss = report["loss_window_ms"]
    console.print("loss window: " + ("unknown (a partition has no mark: the follower "
                                     "had not reported it)" if loss is None
                                     else f"{loss / 1000:.3f} s (promotion time − oldest "
                                          "cut-off)"))
    if report.get("not_adopted"):
        console.print(f"[red]not adopted by[/red] {', '.join(report['not_adopted'])}")
    if report.get("replays") is not None:
        r = report["replays"]
        console.print("replays received during the window: " +
                      ", ".join(f"{k} {v}" for k, v in r.items()))
