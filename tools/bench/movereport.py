"""``bench move``'s result (what ``--json`` prints) from the run's measurements, and its
tables."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.markup import escape

from dds.tools.bench.cpu import cpu_between
from dds.tools.bench.measure import merge
from dds.tools.bench.movelayout import (
    KEPT, MOVED, SOURCE_BRICKS, SOURCE_RG, TARGETS, TARGET_BRICKS, TARGET_RG, MoveParams,
    copy_rate)
from dds.tools.bench.report import cpu_text, met, num, table

__all__ = ["by_phase", "phases", "render", "result"]


def phases(steps: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per journaled step: from the previous step's record (or the start)."""
    out: dict[str, float] = {}
    last = 0.0
    for s in steps:
        out[s["step"]] = round(s["at_s"] - last, 3)
        last = s["at_s"]
    return out


def by_phase(windows: dict[str, list[float]], stats: list[dict[str, Any]],
              samples: list[tuple[float, dict[str, float]]], base_ops: float,
              source: str) -> dict[str, dict[str, Any]]:
    """Per window: length, puts/s and its ratio to the floor, the longest pause, and the
    CPU (cores in use on average) of the source brick, the other source members, the
    target members and the writer processes."""
    others = tuple(b for b in SOURCE_BRICKS if b != source)
    writers = tuple(n for n in (samples[0][1] if samples else {}) if n.startswith("w"))
    out: dict[str, dict[str, Any]] = {}
    for name in ("baseline", "phase_copy", "phase_switch", "phase_drop", "after"):
        if name not in windows:
            continue
        a, b = windows[name]
        m = merge(stats, name)
        cpu = cpu_between(samples, a, b)
        length = max(b - a, 1e-9)

        def cores(names: tuple[str, ...], cpu: dict[str, float] = cpu,
                  length: float = length) -> float:
            return round(sum(cpu.get(n, 0.0) for n in names) / length, 2)
        out[name.removeprefix("phase_")] = {
            "seconds": round(b - a, 3), "put_ops_s": round(m["put_ops_s"], 1),
            "ratio": round(m["put_ops_s"] / base_ops, 3) if base_ops else 0.0,
            "max_write_pause_ms": round(m["max_write_pause_ms"], 1),
            "p99_put_ms": round(m["p99_put_ms"], 1),
            "cpu_cores": {
                "source": cores((source,)), "other_source": cores(others),
                "targets": cores(TARGET_BRICKS), "writers": cores(writers)}}
    return out


def result(params: MoveParams, size: int, rnd: dict[str, Any], stats: list[dict[str, Any]],
            sums: dict[str, int], held: dict[str, bool]) -> dict[str, Any]:
    windows: dict[str, list[float]] = rnd["windows"]
    move = merge(stats, "move")
    settle = merge(stats, "settle")
    base = merge(stats, "baseline")
    after = merge(stats, "after")
    fences = [s["fenced_s"] for s in rnd["sessions"] if s.get("fenced_s") is not None]
    move_s = rnd["t_done"] - rnd["t_request"]
    out: dict[str, Any] = {
        "keys": params.keys, "value_bytes": params.value_bytes, "clients": params.clients,
        "workers": len(stats), "bricks": len(SOURCE_BRICKS) + len(TARGET_BRICKS),
        "replication": len(SOURCE_BRICKS), "partition": str(MOVED), "from_rg": SOURCE_RG,
        "to_rg": TARGET_RG, "durability": "disk", "lease_ms": params.lease_ms,
        "partition_bytes": size, "baseline_s": params.baseline_s, "after_s": params.after_s,
        "copy_rate_mb_s": copy_rate(params),
        "job": rnd["result"]["job"], "source": rnd["result"]["source"],
        "bytes_copied": rnd["result"]["copied_bytes"],
        "move_s": move_s,
        "copy_mb_s": rnd["result"]["copied_bytes"] / 1e6 / move_s if move_s else 0.0,
        "max_write_pause_ms": settle["max_write_pause_ms"],
        "max_write_pause_end_s": settle["max_write_pause_end_s"],
        "throughput_ratio": (move["put_ops_s"] / base["put_ops_s"]
                             if base["put_ops_s"] else 0.0),
        "put_ops_s": move["put_ops_s"], "p50_put_ms": move["p50_put_ms"],
        "p99_put_ms": move["p99_put_ms"], "max_put_ms": move["max_put_ms"],
        "write_errors": sum(settle["write_errors"].values()),
        "write_error_codes": settle["write_errors"],
        "source_fence_s": max(fences) if fences else None,
        "after_put_ops_s": after["put_ops_s"],
        "after_max_write_pause_ms": after["max_write_pause_ms"],
        "baseline_put_ops_s": base["put_ops_s"],
        "baseline_max_write_pause_ms": base["max_write_pause_ms"],
        "baseline_p99_put_ms": base["p99_put_ms"],
        "baseline_max_put_ms": base["max_put_ms"],
        "steps": rnd["steps"], "phases": phases(rnd["steps"]),
        "by_phase": by_phase(windows, stats, rnd["cpu_samples"], base["put_ops_s"],
                              rnd["result"]["source"]),
        "copy_sessions": rnd["sessions"], "cpu_s": rnd["cpu_s"],
        "replicas_identical": len(set(sums.values())) == 1,
        "source_dropped": not any(held.values()),
        "source_still_holds": sorted(b for b, h in held.items() if h),
        "layout": {SOURCE_RG: [str(MOVED), *map(str, KEPT[SOURCE_RG])],
                   TARGET_RG: list(map(str, KEPT[TARGET_RG]))},
        "targets": dict(TARGETS),
        "client_counters": dict(sum((Counter(s.get("counters", {})) for s in stats),
                                    Counter())),
        "timeline": rnd["timeline"],
    }
    out["pause_target_met"] = out["max_write_pause_ms"] <= TARGETS["max_write_pause_ms"]
    out["throughput_target_met"] = out["throughput_ratio"] >= TARGETS["throughput_ratio"]
    return out


def _rate_text(rate: int) -> str:
    return f"at most {rate} MB/s per target" if rate else "full speed"


def render(r: dict[str, Any], console: Console) -> None:
    console.print(f"bench move: {r['partition']} ({r['keys']:,} keys x {r['value_bytes']} B "
                  f"= {r['partition_bytes'] / 1e6:,.1f} MB file) from {r['from_rg']} "
                  f"(b1-b3) to {r['to_rg']} (b4-b6), replication {r['replication']}, "
                  f"durability {r['durability']}, lease {r['lease_ms']} ms; "
                  f"{r['clients']} writers in {r['workers']} processes; copies "
                  f"{_rate_text(r['copy_rate_mb_s'])}")
    t = table("", "during the move", "floor: before", "after", "target", "met")
    t.add_row("move s", f"{r['move_s']:.2f}", "", "", "", "")
    t.add_row("copied MB (all targets)", f"{r['bytes_copied'] / 1e6:,.1f}", "", "", "", "")
    t.add_row("writes fenced at the source s", num(r["source_fence_s"], ".3f"), "", "",
              "", "")
    t.add_row("longest write pause ms", f"{r['max_write_pause_ms']:,.0f}",
              f"{r['baseline_max_write_pause_ms']:,.0f}",
              f"{r['after_max_write_pause_ms']:,.0f}",
              f"<= {TARGETS['max_write_pause_ms']:g}", met(r["pause_target_met"]))
    t.add_row("puts/s", f"{r['put_ops_s']:,.0f}", f"{r['baseline_put_ops_s']:,.0f}",
              f"{r['after_put_ops_s']:,.0f}", "", "")
    t.add_row("throughput ratio (during / before)", f"{r['throughput_ratio']:.2f}", "", "",
              f">= {TARGETS['throughput_ratio']:g}", met(r["throughput_target_met"]))
    t.add_row("p99 put ms", f"{r['p99_put_ms']:,.1f}", f"{r['baseline_p99_put_ms']:,.1f}",
              "", "", "")
    t.add_row("longest put ms", f"{r['max_put_ms']:,.0f}", f"{r['baseline_max_put_ms']:,.0f}",
              "", "", "")
    t.add_row("write errors", str(r["write_errors"]), "", "", "", "")
    console.print(t)
    if r["by_phase"]:
        p = table("phase", "s", "puts/s", "x floor", "longest pause ms", "p99 put ms",
                  f"CPU {r['source']}", "CPU other sources", "CPU targets", "CPU writers",
                  title="by phase (CPU: cores in use on average, of 2)")
        for name, ph in r["by_phase"].items():
            c = ph["cpu_cores"]
            p.add_row(name, f"{ph['seconds']:.2f}", f"{ph['put_ops_s']:,.0f}",
                      f"{ph['ratio']:.2f}", f"{ph['max_write_pause_ms']:,.0f}",
                      f"{ph['p99_put_ms']:,.1f}", f"{c['source']:.2f}",
                      f"{c['other_source']:.2f}", f"{c['targets']:.2f}",
                      f"{c['writers']:.2f}")
        console.print(p)
    phases = ", ".join(f"{name} {s:.2f}s" for name, s in r["phases"].items())
    console.print(f"steps (time to each journal record): {phases or 'none'}")
    console.print(f"CPU s during the move: {cpu_text(r['cpu_s'])}; longest pause ended "
                  f"{r['max_write_pause_end_s']:.2f}s after the start")
    if r["write_errors"]:
        console.print(f"[red]write errors: {escape(str(r['write_error_codes']))}[/red]")
    if not r["replicas_identical"]:
        console.print("[red]the new replicas' checksums differ after the move[/red]")
    if not r["source_dropped"]:
        console.print("[red]a source brick still holds the moved partition[/red]")
