"""``dds-admin bench backup`` (issue 17): MB/s of ``dds-admin backup`` and of
``dds-admin restore`` on a throwaway local cluster preloaded with ``--keys`` rows of
``--value-bytes`` spread over ``--partitions`` partitions (~1 GB by default).  Target:
both at least 50 MB/s.

Three bricks (replication 3) are preloaded, started, initialized and backed up; then
they are stopped and three new, uninitialized bricks take the restore.  The times are
those of the commands' own functions, end to end (the restore's includes verifying
every file first and comparing every replica's checksum at the end).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console

from dds.tools.bench.throwaway import CLUSTER, HOST, READY_TIMEOUT_S, throwaway_cluster
from dds.tools.runner import run

__all__ = ["BackupParams", "bench_backup", "render", "TARGET_MB_S"]

TARGET_MB_S = 50.0


@attrs.frozen
class BackupParams:
    keys: int = 1_000_000
    value_bytes: int = 1000
    partitions: int = 4
    lease_ms: int = 1000
    dir: Path | None = None
    keep: bool = False


def _config(bricks: list[Any], partitions: int) -> Any:
    from dds.config import parse_cluster_config
    return parse_cluster_config({
        "cluster": {"name": CLUSTER, "replication": 3, "partitions": partitions},
        "bricks": [{"id": b.id, "address": b.address, "host": b.id} for b in bricks]},
        source="bench backup")


def bench_backup(params: BackupParams) -> dict[str, Any]:
    """Run the whole benchmark; the result is what ``--json`` prints."""
    from functools import partial

    from dds.partition import initial_partitions
    from dds.tools.bench.preload import partition_key
    from dds.tools.local import stop

    pids = initial_partitions(params.partitions)
    per = max(1, params.keys // len(pids))
    with throwaway_cluster(params.dir, params.keep, "dds-bench-backup-") as r:
        first = ["b1", "b2", "b3"]
        size = 0
        for n, pid in enumerate(pids):
            size += r.preload(str(pid), first, per, params.value_bytes,
                              key=partial(lambda i, n, pid: partition_key(n * per + i, pid),
                                          n=n, pid=pid))
        r.spawn_bricks(first, params.lease_ms)
        dest = r.root / "backup"

        async def both(reactor: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            taken = await _backup(reactor, r, params, dest)
            stop(r.bricks)          # (blocks the reactor: nothing else runs now)
            r.bricks = []
            r.spawn_bricks(["r1", "r2", "r3"], params.lease_ms)
            return taken, await _restore(reactor, r, dest)
        taken, restored = run(both)
    return _result(params, size, taken, restored, str(r.root) if r.kept else None)


async def _ready(reactor: Any, r: Any) -> Any:
    from dds.tools.cluster import Target
    from dds.tools.local import wait_ready

    target = Target(((HOST, 0),), r.admin_secret(), CLUSTER, None)
    await wait_ready(reactor, r.layout, r.bricks, target, timeout=READY_TIMEOUT_S)
    return Target(tuple((HOST, b.port) for b in r.bricks), r.admin_secret(), CLUSTER, None)


async def _backup(reactor: Any, r: Any, params: BackupParams, dest: Path) -> dict[str, Any]:
    from dds.tools import ui
    from dds.tools.backup import backup
    from dds.tools.initcmd import init_cluster
    from dds.tools.reorg import ProgressView

    target = await _ready(reactor, r)
    await init_cluster(reactor, _config(r.bricks, params.partitions), target, say=ui.say)
    t0 = time.monotonic()
    report = await backup(reactor, target, dest, ProgressView(ui.err, "bytes", "backup"))
    report["wall_s"] = time.monotonic() - t0
    return report


async def _restore(reactor: Any, r: Any, dest: Path) -> dict[str, Any]:
    from dds.tools import ui
    from dds.tools.reorg import ProgressView
    from dds.tools.restore import restore

    target = await _ready(reactor, r)
    cfg = _config(r.bricks, 1)
    t0 = time.monotonic()
    report = await restore(reactor, cfg, target, dest, ProgressView(ui.err, "bytes",
                                                                    "restore"))
    report["wall_s"] = time.monotonic() - t0
    return report


def _result(params: BackupParams, size: int, taken: dict[str, Any],
            restored: dict[str, Any], kept: str | None) -> dict[str, Any]:
    mb = taken["bytes"] / 1e6
    backup_mb_s = mb / taken["wall_s"] if taken["wall_s"] > 0 else 0.0
    restore_mb_s = mb / restored["wall_s"] if restored["wall_s"] > 0 else 0.0
    return {"keys": params.keys, "value_bytes": params.value_bytes,
            "partitions": taken["partitions"], "preloaded_bytes": size,
            "bytes": taken["bytes"], "backup_s": round(taken["wall_s"], 3),
            "backup_mb_s": round(backup_mb_s, 2), "restore_s": round(restored["wall_s"], 3),
            "restore_verify_s": restored["verify_s"],
            "restore_mb_s": round(restore_mb_s, 2), "target_mb_s": TARGET_MB_S,
            "ok": backup_mb_s >= TARGET_MB_S and restore_mb_s >= TARGET_MB_S,
            "dir": kept}


def render(result: dict[str, Any], console: Console) -> None:
    console.print(f"backup of {result['bytes'] / 1e6:,.1f} MB in {result['partitions']} "
                  f"partitions: {result['backup_s']:.1f}s, "
                  f"[bold]{result['backup_mb_s']} MB/s[/bold]")
    console.print(f"restore (verify {result['restore_verify_s']:.1f}s, install on 3 "
                  f"bricks, compare): {result['restore_s']:.1f}s, "
                  f"[bold]{result['restore_mb_s']} MB/s[/bold]")
    verdict = "[green]meets[/green]" if result["ok"] else "[red]misses[/red]"
    console.print(f"{verdict} the target of {result['target_mb_s']:g} MB/s for both")
