"""``dds-admin bench contention``: compare_and_put increments on a few hot keys.

Sixteen loops (by default, over the worker processes) each increment a counter picked
at random among 1, then among 10 keys: read it, compare_and_put the next number at the
version read, again on ``VersionMismatch``.  Both commit modes run on the same cluster in
A-B-B-A order (as in ``dds-admin bench``).  Parallel commit holds a key's lock until its
COMMIT is applied (DESIGN §3), so a hot key is where it could lose against the
acknowledged mode; this bench says whether it does.

Every round checks that no increment was lost: each counter grew by exactly the
increments acknowledged, plus at most the ones that ended ``Indeterminate`` or
``Timeout`` (which may or may not have applied).
"""

from __future__ import annotations

from typing import Any

import attrs
from rich.console import Console
from rich.table import Table

from dds.tools.bench.harness import load_workers, run_phase
from dds.tools.bench.measure import percentile
from dds.tools.children import Child, Events
from dds.tools.cluster import Target

__all__ = ["ContentionParams", "bench_contention", "lost_increments", "render"]

#: Commit modes in A-B-B-A order: (suffix of the result fields, worker "mode").
_ORDER = (("_ack_mode", "ack"), ("", ""), ("", ""), ("_ack_mode", "ack"))
_UNKNOWN_OUTCOME = ("Indeterminate", "Timeout")


@attrs.frozen
class ContentionParams:
    seconds: float = 4.0
    #: increments in flight, over all worker processes
    loops: int = 16
    clients: int = 1
    key_counts: tuple[int, ...] = (1, 10)


@attrs.define
class _Round:
    ops: int = 0
    secs: float = 0.0
    conflicts: int = 0
    unknown: int = 0
    errors: dict[str, int] = attrs.Factory(dict)
    lat: list[int] = attrs.Factory(list)
    lost: int = 0


def bench_contention(target: Target, params: ContentionParams) -> dict[str, Any]:
    out: dict[str, Any] = {"loops": params.loops, "seconds": params.seconds,
                           "clients": params.clients}
    with load_workers(target, concurrency=params.loops, clients=params.clients,
                      keys=1) as (workers, events):
        lost_total = 0
        for n in params.key_counts:
            rounds: dict[str, _Round] = {}
            for suffix, mode in _ORDER:
                r = rounds.setdefault(suffix, _Round())
                lost_total += _one_round(workers, events, n, mode, params.seconds / 2, r)
            name = f"cas_{n}key" if n == 1 else f"cas_{n}keys"
            for suffix, r in rounds.items():
                lat = sorted(r.lat)
                out.update({
                    f"{name}_ops_s{suffix}": r.ops / r.secs if r.secs else 0.0,
                    f"{name}_p50_ms{suffix}": percentile(lat, 0.50) / 1000.0,
                    f"{name}_p99_ms{suffix}": percentile(lat, 0.99) / 1000.0,
                    f"{name}_conflicts_per_op{suffix}": r.conflicts / max(1, r.ops),
                    f"{name}_errors{suffix}": r.errors,
                    f"{name}_lost{suffix}": r.lost,
                })
        out["cas_lost"] = lost_total
    return out


def _one_round(workers: list[Child], events: Events, n_keys: int, mode: str,
               seconds: float, r: _Round) -> int:
    """One timed round of increments; returns how many acknowledged increments are
    missing from the counters (must be 0)."""
    timeout = seconds + 60.0
    [before] = run_phase(workers[:1], events, {"phase": "cas-read", "keys": n_keys},
                         f"read {n_keys} counter(s)", n_keys, False, timeout)
    command: dict[str, Any] = {"phase": "cas", "seconds": seconds, "keys": n_keys}
    if mode:
        command["mode"] = mode
    label = f"increments on {n_keys} key(s){' ack mode' if mode else ''}"
    results = run_phase(workers, events, command, label, seconds, True, timeout)
    [after] = run_phase(workers[:1], events, {"phase": "cas-read", "keys": n_keys},
                        f"read {n_keys} counter(s)", n_keys, False, timeout)
    acked: dict[str, int] = {}
    unknown = 0
    for res in results:
        r.ops += res["ops"]
        r.lat.extend(res["lat_us"])
        r.conflicts += res["conflicts"]
        for key, count in res["increments"].items():
            acked[key] = acked.get(key, 0) + count
        for code, count in res["errors"].items():
            r.errors[code] = r.errors.get(code, 0) + count
            if code in _UNKNOWN_OUTCOME:
                unknown += count
    r.secs += max(res["elapsed"] for res in results)
    r.unknown += unknown
    lost = lost_increments(before["values"], after["values"], acked, unknown)
    r.lost += lost
    return lost


def lost_increments(before: dict[str, int], after: dict[str, int], acked: dict[str, int],
                    unknown: int) -> int:
    """Acknowledged increments the counters do not show.  A counter that grew by less
    than its acknowledged increments lost the difference; growth beyond them is allowed
    only up to the increments whose outcome is unknown (``unknown``, over all counters),
    and anything past that is counted too: an increment applied twice hides a lost one."""
    lost = 0
    for key in set(acked) | set(after):
        grew = after.get(key, 0) - before.get(key, 0)
        lost += max(0, acked.get(key, 0) - grew)
    extra = sum(after.values()) - sum(before.values()) - sum(acked.values())
    return lost + max(0, extra - unknown)


def render(r: dict[str, Any], console: Console) -> None:
    console.print(f"bench contention: {r['loops']} increment loops over {r['clients']} "
                  f"process(es), {r['seconds']:g}s per key count and commit mode "
                  "(A-B-B-A halves)")
    table = Table("keys", "mode", "increments/s", "p50 ms", "p99 ms", "conflicts/op",
                  "errors", "lost")
    for name in sorted({k.split("_ops_s")[0] for k in r if "_ops_s" in k}):
        for suffix, mode in (("", "parallel"), ("_ack_mode", "ack")):
            table.add_row(name.removeprefix("cas_"), mode,
                          f"{r[name + '_ops_s' + suffix]:.0f}",
                          f"{r[name + '_p50_ms' + suffix]:.2f}",
                          f"{r[name + '_p99_ms' + suffix]:.2f}",
                          f"{r[name + '_conflicts_per_op' + suffix]:.2f}",
                          str(sum(r[name + '_errors' + suffix].values())),
                          str(r[name + '_lost' + suffix]))
    console.print(table)
    verdict = ("[green]no increment lost[/]" if r["cas_lost"] == 0
               else f"[red]{r['cas_lost']} acknowledged increment(s) lost[/]")
    console.print(verdict)
