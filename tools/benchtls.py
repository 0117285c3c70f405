"""``dds-admin bench --tls``: what mutual TLS costs, measured in one run.

Two throwaway local clusters of the same shape, one after the other on this machine:
one with a shared secret per role, one with mutual TLS (``local up --tls``).  Each runs
the plain bench's phases (floor, load, put, get: :mod:`dds.tools.bench`); the report puts
them side by side with ``tls_get_ratio`` and ``tls_put_ratio`` (TLS ops/s over plain
ops/s, each against its own cluster, measured minutes apart on the same machine).

A brick serves one mode at a time, so the two cannot share a cluster; running them one
after the other (never together: two clusters would share the two cores) keeps both
measurements on an otherwise idle machine.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console
from rich.table import Table
from twisted.internet import threads

from dds.tools import credfiles, ui
from dds.tools.bench import BenchParams, bench
from dds.tools.cluster import Target

__all__ = ["bench_tls", "render_tls", "TLS_TARGETS"]

#: The issue's targets: TLS costs at most 15 % of get and 10 % of put throughput.
TLS_TARGETS = {"get": 0.85, "put": 0.90}


async def _one(reactor: Any, root: Path, params: BenchParams, use_tls: bool,
               shape: Any) -> dict[str, Any]:
    from dds.tools import local
    from dds.tools.status import collect

    layout = local.Layout(root)
    ui.say(f"bench --tls: starting a {'TLS' if use_tls else 'plain'} cluster in {root}")
    try:
        started, _ = await local.local_up(reactor, layout, attrs.evolve(shape, tls=use_tls),
                                          {})
        target = Target(tuple((local.HOST, b.port) for b in started),
                        credfiles.client_credentials(root, "dds", "admin"), "dds", root)
        report = await collect(reactor, target)
        result: dict[str, Any] = await threads.deferToThread(bench, target, params, report)
        return result
    finally:
        local.local_down(layout, purge=False)


async def bench_tls(reactor: Any, params: BenchParams, work_dir: Path | None = None,
                    keep: bool = False) -> dict[str, Any]:
    """Plain, then TLS; the ratios of their throughputs and CPU costs."""
    from dds.tools.local import DEFAULTS
    root = work_dir or Path(tempfile.mkdtemp(prefix="dds-bench-tls-"))
    try:
        plain = await _one(reactor, root / "plain", params, False, DEFAULTS)
        secured = await _one(reactor, root / "tls", params, True, DEFAULTS)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    out: dict[str, Any] = {"plain": plain, "tls": secured}
    for op in ("get", "put"):
        ratio = secured[f"{op}_ops_s"] / max(1e-9, plain[f"{op}_ops_s"])
        out[f"tls_{op}_ratio"] = ratio
        out[f"tls_{op}_target"] = TLS_TARGETS[op]
        out[f"tls_{op}_target_met"] = ratio >= TLS_TARGETS[op]
        out[f"tls_cpu_us_per_{op}"] = secured[f"cpu_us_per_{op}"]
        out[f"plain_cpu_us_per_{op}"] = plain[f"cpu_us_per_{op}"]
        out[f"{op}_floor_ratio_plain"] = plain[f"{op}_ratio"]
        out[f"{op}_floor_ratio_tls"] = secured[f"{op}_ratio"]
    return out


def render_tls(r: dict[str, Any], console: Console) -> None:
    t = Table(title="bench --tls: the same phases on a plain and a TLS cluster",
              title_justify="left")
    for col in ("", "plain", "TLS", "TLS / plain", "target", "met"):
        t.add_column(col, justify="left" if not col else "right")
    plain, tls = r["plain"], r["tls"]
    t.add_row("floor rtt/s (same run)", f"{plain['floor_rtt_s']:,.0f}",
              f"{tls['floor_rtt_s']:,.0f}", "", "", "")
    for op in ("get", "put"):
        met = "[green]yes[/green]" if r[f"tls_{op}_target_met"] else "[red]no[/red]"
        t.add_row(f"{op} ops/s", f"{plain[f'{op}_ops_s']:,.0f}", f"{tls[f'{op}_ops_s']:,.0f}",
                  f"{r[f'tls_{op}_ratio']:.3f}", f">= {r[f'tls_{op}_target']:.2f}", met)
    for op in ("get", "put"):
        t.add_row(f"CPU us per {op}", f"{plain[f'cpu_us_per_{op}']:,.1f}",
                  f"{tls[f'cpu_us_per_{op}']:,.1f}",
                  f"{tls[f'cpu_us_per_{op}'] / max(1e-9, plain[f'cpu_us_per_{op}']):.3f}",
                  "", "")
        t.add_row(f"{op} p50 / p99 ms",
                  f"{plain[f'{op}_p50_ms']:.2f} / {plain[f'{op}_p99_ms']:.2f}",
                  f"{tls[f'{op}_p50_ms']:.2f} / {tls[f'{op}_p99_ms']:.2f}", "", "", "")
    console.print(t)
