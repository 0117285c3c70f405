"""The click group ``local``: ``up``, ``down`` and ``status`` of a cluster of bricks on
this machine (``tools/local.py``), registered on ``dds-admin`` by ``tools/admin.py``."""

from __future__ import annotations

import re
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from dds.tools import ui
from dds.tools.cli import reports_errors
from dds.tools.cluster import DEFAULT_LOCAL_DIR, resolve_target
from dds.tools.runner import run

__all__ = ["local"]


@click.group()
def local() -> None:
    """A cluster of bricks on this machine, under one directory."""


dir_option = click.option("--dir", "local_dir", type=click.Path(path_type=Path),
                          default=DEFAULT_LOCAL_DIR, show_default=True,
                          help="directory of the local cluster")


@local.command("up")
@dir_option
@click.option("--bricks", type=click.IntRange(1, 64), default=None,
              help="number of bricks [default: 6]")
@click.option("--replication", type=click.IntRange(1, 16), default=None,
              help="replicas per group [default: 3]")
@click.option("--partitions", type=click.IntRange(1, 65536), default=None,
              help="initial partitions, a power of two [default: 16]")
@click.option("--durability", type=click.Choice(["memory", "disk", "fsync"]), default=None,
              help="brick durability mode [default: disk]")
@click.option("--tls", is_flag=True, default=None,
              help="mutual TLS: create a cluster CA and a certificate per brick, admin "
                   "and client under DIR/tls (default: one shared secret per role)")
@click.option("--name", default=None, metavar="NAME",
              help="the cluster's name [default: dds]; a second cluster beside the first "
                   "(a DR site: --dir .dds-local-dr --name dr) gets its own")
@reports_errors
def local_up(local_dir: Path, bricks: int | None, replication: int | None,
             partitions: int | None, durability: str | None, tls: bool | None,
             name: str | None) -> None:
    """Start a local cluster (or say that one is running) and initialize it."""
    from dds.tools import local as loc

    if partitions is not None and partitions & (partitions - 1):
        raise click.BadParameter(f"must be a power of two, got {partitions}",
                                 param_hint="--partitions")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise click.BadParameter(f"letters, digits, '_', '.' and '-' (at most 64), got "
                                 f"{name!r}", param_hint="--name")
    layout = loc.Layout(local_dir.absolute())
    with layout.lock():
        alive = loc.running(layout)
        if alive:
            ui.out.print(f"a local cluster is already running in {local_dir}: "
                         f"{len(alive)} brick(s) up ({', '.join(b.id for b in alive)}); "
                         f"`dds-admin local down --dir {local_dir}` stops it")
            return
        params, ports = loc.resolve_params(layout, {"bricks": bricks,
                                                    "replication": replication,
                                                    "partitions": partitions,
                                                    "durability": durability,
                                                    "tls": tls or None,
                                                    "name": name})
        started, result = run(lambda reactor: loc.local_up(reactor, layout, params, ports))
    for w in result.warnings:
        ui.err.print(f"[yellow]warning:[/yellow] {escape(w)}")
    t = Table(title=f"local cluster in {local_dir}", title_justify="left")
    for col in ("brick", "address", "pid", "http port"):
        t.add_column(col)
    for b in started:
        t.add_row(b.id, b.address, str(b.pid), str(b.http_port))
    ui.out.print(t)
    cmap = result.map
    shown = str(cmap.cluster.replication) if cmap.cluster is not None else "?"
    ui.out.print(f"{len(cmap.bricks)} bricks, replication {shown}, "
                 f"{len(cmap.rgs)} replica groups, {len(cmap.partition_rg)} partitions, "
                 f"durability {params.durability}, map fp {cmap.fp:#010x}")
    seeds = ",".join(b.address for b in started[:3])
    here = "" if local_dir == DEFAULT_LOCAL_DIR else f" --dir {local_dir}"
    if params.tls:
        how = (f"TLS certificates in {layout.tls} (client.crt/client.key for services, "
               f"admin.* for dds-admin)\n  dds-admin status --seeds {seeds} --ca-file "
               f"{layout.tls / 'ca.crt'} --cert-file {layout.tls / 'admin.crt'} --key-file "
               f"{layout.tls / 'admin.key'}")
    else:
        how = (f"secrets per role in {layout.secrets} (client for services, admin for "
               f"dds-admin)\n  dds-admin status --seeds {seeds} --secret-file "
               f"{layout.secrets / 'admin'}")
    ui.out.print(f"connect: seeds [bold]{seeds}[/bold], cluster {params.name!r}, {how}\n"
                 f"  dds-admin status{here}    (the local cluster)", soft_wrap=True)


@local.command("down")
@dir_option
@click.option("--purge", is_flag=True, help="also delete the directory (data included)")
@reports_errors
def local_down(local_dir: Path, purge: bool) -> None:
    """Stop the bricks `local up` started there (SIGTERM, then SIGKILL after a deadline)."""
    from dds.tools import local as loc

    layout = loc.Layout(local_dir.absolute())
    if layout.dir.exists():
        with layout.lock():
            stopped = loc.local_down(layout, purge=False)
    else:
        stopped = []
    if purge:
        loc.purge_dir(layout)
    if not stopped:
        ui.out.print(f"no local cluster was running in {local_dir}")
    for s in stopped:
        ui.out.print(f"{s.brick.id} (pid {s.brick.pid}): {s.how}"
                     + (f" in {s.seconds:.2f}s" if s.how in ("stopped", "killed") else ""))
    if purge:
        ui.out.print(f"deleted {local_dir}" if not layout.dir.exists() else
                     f"{local_dir} was not deleted")


@local.command("status")
@dir_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--timeout", type=float, default=5.0, show_default=True)
@reports_errors
def local_status(local_dir: Path, as_json: bool, timeout: float) -> None:
    """`dds-admin status` for the local cluster in --dir (the same exit status)."""
    from dds.tools.status import show

    show(resolve_target(None, None, True, local_dir, None), as_json, timeout)
