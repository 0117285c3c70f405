"""``dds-admin bench --tls``: what mutual TLS costs, measured in one run.

Two throwaway local clusters of the same shape: one with a shared secret per role, one
with mutual TLS (``local up --tls``).  In each round the plain bench's phases (floor,
load, put, get: :mod:`dds.tools.bench.putget`) run on the plain cluster, then on the TLS one;
only one cluster is loaded at a time.  The report gives the last round side by side and
``tls_get_ratio`` / ``tls_put_ratio``: the median over the rounds of TLS ops/s over
plain ops/s (each round's ratios are listed too).

A brick serves one authentication mode at a time, so the two cannot share a cluster.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console
from twisted.internet import threads

from dds.tools import credfiles, ui
from dds.tools.bench.putget import BenchParams, bench
from dds.tools.bench.report import met, table
from dds.tools.cluster import Target

__all__ = ["bench_tls", "render_tls", "TLS_TARGETS"]

#: The issue's targets: TLS costs at most 15 % of get and 10 % of put throughput.
TLS_TARGETS = {"get": 0.85, "put": 0.90}


async def _start(reactor: Any, root: Path, use_tls: bool, shape: Any) -> Target:
    from dds.tools import local

    ui.say(f"bench --tls: starting a {'TLS' if use_tls else 'plain'} cluster in {root}")
    started, _ = await local.local_up(reactor, local.Layout(root),
                                      attrs.evolve(shape, tls=use_tls), {})
    return Target(tuple((local.HOST, b.port) for b in started),
                  credfiles.client_credentials(root, "dds", "admin"), "dds", root)


async def _measure(reactor: Any, target: Target, params: BenchParams) -> dict[str, Any]:
    from dds.tools.status import collect

    report = await collect(reactor, target)
    result: dict[str, Any] = await threads.deferToThread(bench, target, params, report)
    return result


async def bench_tls(reactor: Any, params: BenchParams, work_dir: Path | None = None,
                    keep: bool = False, rounds: int = 2) -> dict[str, Any]:
    """Both clusters up (the idle one renews its leases, nothing more), then ``rounds``
    of plain-then-TLS phases, so a change of the machine's load between two halves shows
    as a spread of the ratios rather than as a false cost; the median ratio is reported."""
    from dds.tools import local
    from dds.tools.local import DEFAULTS
    root = work_dir or Path(tempfile.mkdtemp(prefix="dds-bench-tls-"))
    runs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    try:
        plain_target = await _start(reactor, root / "plain", False, DEFAULTS)
        tls_target = await _start(reactor, root / "tls", True, DEFAULTS)
        for i in range(rounds):
            ui.say(f"bench --tls: round {i + 1} of {rounds}")
            plain = await _measure(reactor, plain_target, params)
            secured = await _measure(reactor, tls_target, params)
            runs.append((plain, secured))
    finally:
        for name in ("plain", "tls"):
            if (root / name).exists():
                local.local_down(local.Layout(root / name), purge=False)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    plain, secured = runs[-1]
    out: dict[str, Any] = {"plain": plain, "tls": secured, "rounds": rounds}
    for op in ("get", "put"):
        ratios = [t[f"{op}_ops_s"] / max(1e-9, p[f"{op}_ops_s"]) for p, t in runs]
        cpu = [t[f"cpu_us_per_{op}"] / max(1e-9, p[f"cpu_us_per_{op}"]) for p, t in runs]
        ratio = statistics.median(ratios)
        out[f"tls_{op}_ratios"] = ratios
        out[f"tls_{op}_ratio"] = ratio
        out[f"tls_{op}_target"] = TLS_TARGETS[op]
        out[f"tls_{op}_target_met"] = ratio >= TLS_TARGETS[op]
        out[f"tls_cpu_per_{op}_ratios"] = cpu
        out[f"tls_cpu_us_per_{op}"] = statistics.median(t[f"cpu_us_per_{op}"] for _, t in runs)
        out[f"plain_cpu_us_per_{op}"] = statistics.median(p[f"cpu_us_per_{op}"]
                                                          for p, _ in runs)
    return out


def render_tls(r: dict[str, Any], console: Console) -> None:
    t = table("", "plain", "TLS", "TLS / plain", "target", "met",
              title="bench --tls: the same phases on a plain and a TLS cluster")
    plain, tls = r["plain"], r["tls"]
    t.add_row("rounds (ratios are medians)", "", "", str(r.get("rounds", 1)), "", "")
    t.add_row("floor rtt/s (same run)", f"{plain['floor_rtt_s']:,.0f}",
              f"{tls['floor_rtt_s']:,.0f}", "", "", "")
    for op in ("get", "put"):
        t.add_row(f"{op} ops/s", f"{plain[f'{op}_ops_s']:,.0f}", f"{tls[f'{op}_ops_s']:,.0f}",
                  f"{r[f'tls_{op}_ratio']:.3f}", f">= {r[f'tls_{op}_target']:.2f}",
                  met(r[f"tls_{op}_target_met"]))
    for op in ("get", "put"):
        t.add_row(f"CPU us per {op}", f"{plain[f'cpu_us_per_{op}']:,.1f}",
                  f"{tls[f'cpu_us_per_{op}']:,.1f}",
                  f"{tls[f'cpu_us_per_{op}'] / max(1e-9, plain[f'cpu_us_per_{op}']):.3f}",
                  "", "")
        t.add_row(f"{op} p50 / p99 ms",
                  f"{plain[f'{op}_p50_ms']:.2f} / {plain[f'{op}_p99_ms']:.2f}",
                  f"{tls[f'{op}_p50_ms']:.2f} / {tls[f'{op}_p99_ms']:.2f}", "", "", "")
    console.print(t)
