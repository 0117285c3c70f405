"""``dds-admin``: the command line (the click group, and the commands whose bodies are a
few lines; the others are in ``tools/*cmd.py``: ``membershipcmd``, ``scrubcmd``,
``reorgcmd``, ``localcmd``, and ``certs``).  A command module imports its subsystem only
when the command runs: every ``dds-admin`` start imports every command module.

Failures are printed as ``error: ...`` lines on stderr with exit status 1; a bad option is
exit status 2 (click's usage error).  Commands that talk to a running cluster take the
options of :func:`dds.tools.cli.cluster_target`: ``--seeds host:port,...`` with
``--secret-file`` (the admin role's secret, or DDS_ADMIN_SECRET) or
``--ca-file/--cert-file/--key-file`` (TLS), or ``--local`` / nothing, which uses the local
cluster in ``--dir`` (default ``./.dds-local``).  Every result is printed by
:func:`dds.tools.ui.show`: one JSON object with ``--json``, else tables.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.table import Table

from dds.config import load_cluster_config
from dds.version import VERSION

from dds.tools import ui
from dds.tools.backupcmd import backup, restore
from dds.tools.certs import certs
from dds.tools.changescmd import changes
from dds.tools.drcmd import dr
from dds.tools.cli import (cluster_target, cluster_target_resolver, fail, reports_errors,
                           target_of, tls_from_context, tls_options)
from dds.tools.cluster import DEFAULT_LOCAL_DIR, Target, resolve_target
from dds.tools.localcmd import local
from dds.tools.membershipcmd import add_brick, rebalance, remove_brick
from dds.tools.reorgcmd import merge, move, split
from dds.tools.runner import run
from dds.tools.scrubcmd import scrub

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="dds-admin", message="%(prog)s %(version)s")
def main() -> None:
    """Administer a DDS cluster: local clusters, init, status, recover, move, split, merge,
    add-brick, remove-brick, forget-brick, rebalance, jobs, cancel, scrub, txns, repair,
    changes, backup, restore, dr, bench, certs."""


for _command in (local, certs, move, split, merge, scrub, add_brick, remove_brick,
                 rebalance, changes, backup, restore, dr):
    main.add_command(_command)


# -- init ------------------------------------------------------------------------------------

def _help_config(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``init --help-config``: every cluster setting, its default and meaning."""
    if not value or ctx.resilient_parsing:
        return
    from dds.config import ClusterConfig, describe

    click.echo(describe(ClusterConfig), nl=False)
    ctx.exit(0)


@main.command()
@click.option("--help-config", is_flag=True, expose_value=False, is_eager=True,
              callback=_help_config,
              help="print every cluster setting with its default and meaning, and exit")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="cluster configuration (TOML)")
@click.option("--secret-file", type=click.Path(dir_okay=False), default=None,
              help="file holding the admin role's shared secret (or set DDS_ADMIN_SECRET)")
@tls_options
@click.option("--force", is_flag=True,
              help="take over bricks that already hold another map")
@click.option("--partitions", "partition_list", default=None, metavar="PID,...",
              help="these partitions (e.g. p1.0,p2.1,p2.3) instead of the configuration's "
                   "cluster.partitions equal ones; they must cover the key space once")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="seconds to wait for each brick")
@reports_errors
def init(config_path: str, secret_file: str | None, force: bool,
         partition_list: str | None, timeout: float) -> None:
    """Push the first map to every brick of a cluster configuration."""
    from dds.partition import PartitionId
    from dds.tools.initcmd import init_cluster

    try:
        partitions = None if partition_list is None else [
            PartitionId.parse(t.strip()) for t in partition_list.split(",") if t.strip()]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--partitions") from None
    cfg = load_cluster_config(config_path)
    target = resolve_target(",".join(b.address for b in cfg.bricks), secret_file, False,
                            DEFAULT_LOCAL_DIR, cfg.cluster.name, tls_from_context())
    result = run(lambda reactor: init_cluster(reactor, cfg, target, force=force,
                                              timeout=timeout, say=ui.say,
                                              partitions=partitions))
    for w in result.warnings:
        ui.err.print(f"[yellow]warning:[/yellow] {escape(w)}")
    _print_init(result)


def _print_init(result: Any) -> None:
    cmap = result.map
    t = Table(title="replica groups", title_justify="left")
    for col in ("group", "members", "partitions"):
        t.add_column(col)
    for rg in sorted(cmap.rgs.values(), key=lambda g: (len(g.name), g.name)):
        t.add_row(rg.name, " ".join(m.brick for m in rg.members),
                  " ".join(str(e.pid) for e in rg.partitions))
    ui.out.print(t)
    ui.out.print(f"initialized cluster [bold]{cmap.cluster.name}[/bold]: "
                 f"{len(cmap.bricks)} bricks, {len(cmap.rgs)} replica groups, "
                 f"{len(cmap.partition_rg)} partitions, map fp {cmap.fp:#010x} "
                 f"(records adopted: {sum(result.adopted.values())})")


# -- status ------------------------------------------------------------------------------------

@main.command()
@cluster_target
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--timeout", type=float, default=5.0, show_default=True)
def status(target: Target, as_json: bool, timeout: float) -> None:
    """Bricks, replica groups and map agreement of a running cluster.

    Exit status 0 when the cluster is healthy (every brick that is not retired answers,
    one map fingerprint, no divergence: "ok" in --json); 1 when it is not (the report is
    printed all the same), or when no seed answers; 2 for a bad option.
    """
    from dds.tools.status import show

    show(target, as_json, timeout)


# -- recover -----------------------------------------------------------------------------------

@main.command()
@cluster_target
@click.argument("brick")
@click.option("--rg", default=None, metavar="RG",
              help="recover only this replica group [default: every group of the brick]")
@click.option("--full-lease", is_flag=True,
              help="fence writes for the whole copy (the original DDS behaviour), not only "
                   "for the delta [default: the brick's brick.full_lease_recovery]")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="follow the recovery until the brick is active again")
@click.option("--json", "as_json", is_flag=True,
              help="print one JSON object at the end instead of a progress bar")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=600.0, show_default=True,
              help="seconds to wait for the recovery to finish")
def recover(target: Target, brick: str, rg: str | None, full_lease: bool, wait: bool,
            as_json: bool, timeout: float) -> None:
    """Make BRICK re-sync its replicas now, by partition copy, and watch it finish.

    Exit status 0 once every recovery it started is done and BRICK is an active member
    again; 1 on a failure or after --timeout (the recovery goes on in the brick).
    """
    from dds.tools import recover as r

    options = r.Options(rg=rg, full_lease=full_lease, wait=wait, timeout=timeout)
    view: r.View = r.QuietView() if as_json else r.ProgressView(ui.err, brick)
    try:
        report = run(lambda reactor: r.recover(reactor, target, brick, options, view))
    finally:
        view.close()
    ui.show(report, r.render, as_json)
    if not report["ok"]:
        fail(report["errors"])


# -- txns and repair ---------------------------------------------------------------------------

@main.command()
@cluster_target
@click.option("--all", "show_all", is_flag=True,
              help="list every active transaction, not only the in-doubt ones")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="seconds to wait for each brick")
def txns(target: Target, show_all: bool, as_json: bool, timeout: float) -> None:
    """In-doubt transactions per brick.

    In doubt: held prepared past its deadline, undecided.  --all lists every active one.
    """
    from dds.tools.txns import collect, render

    ui.show(run(lambda reactor: collect(reactor, target, timeout, show_all)), render,
            as_json)


@main.command()
@cluster_target
@click.option("--txns-only", is_flag=True, help="run only the in-doubt transactions step")
@click.option("--step", "only_steps", multiple=True,
              type=click.Choice(["txns", "map", "reorg", "coverage"]),
              help="run only this step (repeatable) [default: all]")
@click.option("--dry-run", is_flag=True, help="show what would be repaired; change nothing")
@click.option("--prefer", default=None, metavar="BRICK",
              help="map step: a record held at one version with different contents and "
                   "no majority for either takes BRICK's contents (pushed as a new "
                   "version, without a vote: check first which is right)")
@click.option("--before-deadline", is_flag=True,
              help="also resolve prepared transactions whose deadline has not passed: "
                   "only when their coordinators are known to be dead (a live one may "
                   "still abort them)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="seconds to wait for each brick")
def repair(target: Target, txns_only: bool, only_steps: tuple[str, ...], dry_run: bool,
           prefer: str | None, before_deadline: bool, as_json: bool, timeout: float) -> None:
    """Repair step by step: in-doubt transactions, map divergence, half-done
    reorganizations, key space coverage (partitions restored from quarantine).

    Exit status 1 when a step left something unrepaired (or refused to choose) or a brick
    could not be reached.
    """
    from dds.tools import repair as r

    options = r.Options(dry_run=dry_run, before_deadline=before_deadline, timeout=timeout,
                        prefer=prefer)
    only = {"txns"} if txns_only else (set(only_steps) or None)
    report = run(lambda reactor: r.repair(reactor, target, options, only, ui.say))
    ui.show(report, r.render, as_json)
    if not report["ok"]:
        sys.exit(1)


# -- jobs and cancel (journaled operations, DESIGN §8) ----------------------------------------

@main.command()
@cluster_target
@click.option("--all", "show_all", is_flag=True,
              help="also list finished jobs (kept for 7 days, the last 1000)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="seconds to wait for each brick")
def jobs(target: Target, show_all: bool, as_json: bool, timeout: float) -> None:
    """Running and unfinished multi-step operations (moves, splits, merges, brick changes),
    from the journals of every brick."""
    from dds.tools.jobs import collect, render

    ui.show(run(lambda reactor: collect(reactor, target, timeout, show_all)), render,
            as_json)


@main.command()
@cluster_target
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="seconds to wait for each brick")
def cancel(target: Target, job: str, as_json: bool, timeout: float) -> None:
    """Ask for JOB to stop: the tool running it stops after its current step and rolls it
    back (or `dds-admin repair` does, if no tool runs it any more).

    Exit status 1 for an unknown or finished job, or when no brick took the request.
    """
    from dds.tools import jobs as j

    ui.show(run(lambda reactor: j.cancel(reactor, target, job, timeout)), j.render_cancel,
            as_json)


@main.command("forget-brick")
@cluster_target
@click.argument("bricks", metavar="BRICK...", nargs=-1, required=True)
@click.option("--dry-run", is_flag=True, help="check only; change nothing")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="seconds to wait for each brick")
def forget_brick(target: Target, bricks: tuple[str, ...], dry_run: bool, as_json: bool,
                 timeout: float) -> None:
    """Forget BRICK (one or more) for good: a brick that remove-brick retired and that is
    stopped disappears from status, repair, jobs and placement.  Refused, with nothing
    changed, while it is in a replica group, not retired, or still answers."""
    from dds.tools import forget as fg

    say = (lambda text: None) if as_json else ui.say
    report = run(lambda reactor: fg.forget_bricks(
        reactor, target, list(dict.fromkeys(bricks)), dry_run=dry_run, timeout=timeout,
        say=say))
    ui.show(report, fg.render, as_json)


# -- bench -------------------------------------------------------------------------------------

@main.group(invoke_without_command=True)
@cluster_target_resolver
@click.option("--seconds", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True,
              help="duration of the floor, put and get phases, each")
@click.option("--keys", type=click.IntRange(1), default=10000, show_default=True)
@click.option("--value-size", type=click.IntRange(0), default=100, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 100000), default=64, show_default=True,
              help="operations in flight, over all client processes")
@click.option("--clients", type=click.IntRange(1, 256), default=1, show_default=True,
              help="client (worker) processes; one, like the floor's client")
@click.option("--tls", "with_tls", is_flag=True,
              help="measure what mutual TLS costs: the same phases on a throwaway plain "
                   "cluster and a throwaway TLS cluster, alternately")
@click.option("--rounds", type=click.IntRange(1, 20), default=2, show_default=True,
              help="with --tls: plain-then-TLS rounds; the ratios are their medians")
@click.option("--dr", "with_dr", is_flag=True,
              help="measure what a DR site costs: puts without and with a DR site "
                   "attached (its follower running), alternately, on throwaway clusters; "
                   "DR lag p50/p99")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@reports_errors
@click.pass_context
def bench(ctx: click.Context, resolve_target: Callable[[], Target], seconds: float,
          keys: int, value_size: int, concurrency: int, clients: int, with_tls: bool,
          rounds: int, with_dr: bool, as_json: bool) -> None:
    """Throughput, latency and CPU per operation, next to the echo floor.

    `bench --tls` compares a plain and a TLS cluster, `bench --dr` puts without and
    with a DR site; `bench recovery` measures a
    partition re-copy, `bench move` a partition move, `bench backup` a backup and its
    restore, each on throwaway clusters;
    `bench contention` increments hot keys with compare_and_put."""
    if ctx.invoked_subcommand is not None:
        return
    from dds.tools.bench import putget as b
    from dds.tools.status import collect

    params = b.BenchParams(seconds, keys, value_size, concurrency, clients)
    if with_tls:
        from dds.tools.bench import tls as benchtls
        tls_result = run(lambda reactor: benchtls.bench_tls(reactor, params,
                                                            rounds=rounds))
        ui.show(tls_result, benchtls.render_tls, as_json)
        return

    if with_dr:
        from dds.tools.bench import dr as benchdr
        dr_result = run(lambda reactor: benchdr.bench_dr(reactor, params))
        ui.show(dr_result, benchdr.render_dr, as_json)
        return

    target = resolve_target()
    report = run(lambda reactor: collect(reactor, target))
    ui.show(b.bench(target, params, report), b.render, as_json)


@bench.command("contention")
@click.option("--seconds", type=click.FloatRange(0.2, 3600), default=4.0, show_default=True,
              help="per key count and commit mode (run as two halves, A-B-B-A)")
@click.option("--loops", type=click.IntRange(1, 10000), default=16, show_default=True,
              help="increments in flight, over all worker processes")
@click.option("--clients", type=click.IntRange(1, 64), default=1, show_default=True,
              help="worker processes")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@reports_errors
@click.pass_context
def bench_contention(ctx: click.Context, seconds: float, loops: int, clients: int,
                     as_json: bool) -> None:
    """compare_and_put increments on 1 key and on 10 keys, both commit modes; checks
    that no acknowledged increment was lost (exit 1 if one was).  Uses the cluster
    named by `bench`'s options (`dds-admin bench --seeds ... contention`)."""
    from dds.tools.bench import contention as bc

    target = target_of(ctx.parent.params if ctx.parent is not None else {})
    result = bc.bench_contention(target, bc.ContentionParams(seconds, loops, clients))
    ui.show(result, bc.render, as_json)
    if result["cas_lost"]:
        raise SystemExit(1)


def writer_bench_options(what: str, keys: int = 1_000_000) -> Callable[[F], F]:
    """The options of the benches that preload a partition and write to it while
    ``what`` happens (``bench recovery``, ``bench move``)."""
    def decorate(fn: F) -> F:
        for option in reversed([
            click.option("--keys", type=click.IntRange(1), default=keys,
                         show_default=True, help="keys preloaded into the partition"),
            click.option("--value-bytes", type=click.IntRange(0), default=100,
                         show_default=True),
            click.option("--clients", type=click.IntRange(1, 256), default=16,
                         show_default=True, help="writer clients, each doing sequential puts"),
            click.option("--workers", type=click.IntRange(1, 16), default=2,
                         show_default=True,
                         help="processes the writer clients are split over"),
            click.option("--lease-ms", type=click.IntRange(30, 600000), default=1000,
                         show_default=True, help="the bricks' membership lease"),
            click.option("--baseline-s", type=click.FloatRange(0.2, 60), default=2.0,
                         show_default=True,
                         help=f"steady writes measured before {what} (the floor)"),
            click.option("--dir", "work_dir", type=click.Path(path_type=Path), default=None,
                         help="a new or empty directory for the cluster [default: a "
                              "temporary one]"),
            click.option("--keep", is_flag=True,
                         help="keep the cluster directory (brick logs)"),
            click.option("--json", "as_json", is_flag=True, help="print one JSON object"),
        ]):
            fn = option(fn)
        return fn
    return decorate


@bench.command("recovery")
@writer_bench_options("each recovery")
@reports_errors
def bench_recovery(keys: int, value_bytes: int, clients: int, workers: int, lease_ms: int,
                   baseline_s: float, work_dir: Path | None, keep: bool,
                   as_json: bool) -> None:
    """A rejoining brick re-copies a large partition while clients write to it: copy
    time, MB/s and longest write pause, default and --full-lease.  Runs its own
    throwaway 3-brick cluster."""
    from dds.tools.bench import recovery as br

    result = br.bench_recovery(br.RecoveryParams(
        keys=keys, value_bytes=value_bytes, clients=clients, workers=workers,
        lease_ms=lease_ms, baseline_s=baseline_s, dir=work_dir, keep=keep))
    ui.show(result, br.render, as_json)


@bench.command("move")
@writer_bench_options("the move", keys=550_000)
@click.option("--rate", "rate_mb_s", type=click.IntRange(0, 100_000), default=None,
              metavar="MB/S", help="bandwidth limit of each target's copy (0: none) "
              "[default: the bricks' brick.move_rate_mb_s, 40, as for dds-admin move]")
@reports_errors
def bench_move(keys: int, value_bytes: int, clients: int, workers: int, lease_ms: int,
               baseline_s: float, work_dir: Path | None, keep: bool, as_json: bool,
               rate_mb_s: int | None) -> None:
    """A large partition moves to another replica group while clients write to it: move
    time, longest write pause, throughput during the move against before.  Runs its own
    throwaway 6-brick cluster (two groups of 3)."""
    from dds.tools.bench import move as bm

    result = bm.bench_move(bm.MoveParams(
        keys=keys, value_bytes=value_bytes, clients=clients, workers=workers,
        lease_ms=lease_ms, baseline_s=baseline_s, dir=work_dir, keep=keep,
        rate_mb_s=rate_mb_s))
    ui.show(result, bm.render, as_json)


@bench.command("backup")
@click.option("--keys", type=click.IntRange(1), default=1_000_000, show_default=True,
              help="keys preloaded, spread over the partitions")
@click.option("--value-bytes", type=click.IntRange(0), default=1000, show_default=True)
@click.option("--partitions", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="partitions of the throwaway cluster (a power of two)")
@click.option("--dir", "work_dir", type=click.Path(path_type=Path), default=None,
              help="a new or empty directory for the clusters and the backup [default: a "
                   "temporary one]")
@click.option("--keep", is_flag=True, help="keep the directory (brick logs, the backup)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@reports_errors
def bench_backup(keys: int, value_bytes: int, partitions: int, work_dir: Path | None,
                 keep: bool, as_json: bool) -> None:
    """MB/s of dds-admin backup and of dds-admin restore (target: 50 each) on a
    throwaway 3-brick cluster preloaded with ~1 GB, restored into 3 new bricks."""
    from dds.tools.bench import backup as bb

    result = bb.bench_backup(bb.BackupParams(keys=keys, value_bytes=value_bytes,
                                             partitions=partitions, dir=work_dir,
                                             keep=keep))
    ui.show(result, bb.render, as_json)


if __name__ == "__main__":
    main()
