"""``dds-admin``: the command line (wiring only; each command lives in its own module).

Failures are printed as ``error: ...`` lines on stderr with exit status 1; a bad option is
exit status 2 (click's usage error).  Commands that talk to a running cluster take
``--seeds host:port,...`` with ``--secret-file`` (the admin role's secret, or
DDS_ADMIN_SECRET) or ``--ca-file/--cert-file/--key-file`` (TLS), or ``--local`` / nothing,
which uses the local cluster in ``--dir`` (default ``./.dds-local``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.table import Table

from dds.config import ConfigError, load_cluster_config
from dds.version import VERSION

from dds.tools import ui
from dds.tools.cluster import DEFAULT_LOCAL_DIR, Target, resolve_target
from dds.tools.runner import AdminError, run

F = TypeVar("F", bound=Callable[..., Any])


def _fail(lines: list[str]) -> None:
    for line in lines:
        ui.err.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
    sys.exit(1)


def reports_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AdminError as e:
            _fail(e.lines)
        except ConfigError as e:
            _fail([e.message])
        except KeyboardInterrupt:
            ui.err.print("interrupted")
            sys.exit(130)
    return wrapper  # type: ignore[return-value]


def _remember_tls(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """The TLS options are read by ``_target`` from the context, not passed to each
    command: every command takes them the same way."""
    if value:
        ctx.meta.setdefault("dds_tls", {})[param.name] = value


def _tls_from_context() -> tuple[str, str, str] | None:
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get("dds_tls", {}) if ctx is not None else {}
    if not given:
        return None
    missing = [f"--{n.replace('_', '-')}" for n in ("ca_file", "cert_file", "key_file")
               if n not in given]
    if missing:
        raise AdminError(f"TLS needs --ca-file, --cert-file and --key-file; missing "
                         f"{', '.join(missing)}")
    return given["ca_file"], given["cert_file"], given["key_file"]


def tls_options(fn: F) -> F:
    """``--ca-file/--cert-file/--key-file`` (or DDS_CA_FILE, …): connect with mutual TLS
    as the admin role."""
    for name, env, text in (("key-file", "DDS_KEY_FILE", "this admin's private key"),
                            ("cert-file", "DDS_CERT_FILE", "this admin's certificate "
                             "(dds-admin certs issue --role admin)"),
                            ("ca-file", "DDS_CA_FILE", "the cluster CA certificate")):
        fn = click.option(f"--{name}", envvar=env, type=click.Path(dir_okay=False),
                          expose_value=False, callback=_remember_tls, is_eager=True,
                          help=f"TLS: {text} (or {env})")(fn)
    return fn


def target_options(fn: F) -> F:
    """``--seeds/--secret-file/--cluster`` (or TLS files) or ``--local/--dir``."""
    fn = click.option("--dir", "local_dir", type=click.Path(path_type=Path),
                      default=DEFAULT_LOCAL_DIR, show_default=True,
                      help="local cluster directory (used without --seeds)")(fn)
    fn = click.option("--local", is_flag=True,
                      help="use the local cluster in --dir (the default without --seeds)")(fn)
    fn = click.option("--cluster", "cluster_name", default=None,
                      help="cluster name for the handshake (default: dds, or the local "
                           "cluster's)")(fn)
    fn = click.option("--secret-file", type=click.Path(dir_okay=False), default=None,
                      help="file holding the admin role's shared secret (or set "
                           "DDS_ADMIN_SECRET)")(fn)
    fn = click.option("--seeds", default=None, metavar="HOST:PORT,...",
                      help="bricks to fetch the map from")(fn)
    return tls_options(fn)


def _target(seeds: str | None, secret_file: str | None, cluster_name: str | None,
            local: bool, local_dir: Path) -> Target:
    return resolve_target(seeds, secret_file, local, local_dir, cluster_name,
                          _tls_from_context())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="dds-admin", message="%(prog)s %(version)s")
def main() -> None:
    """Administer a DDS cluster: local clusters, init, status, recover, move, split, merge,
    add-brick, remove-brick, forget-brick, rebalance, jobs, cancel, scrub, txns, repair,
    bench, certs."""


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
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="seconds to wait for each brick")
@reports_errors
def init(config_path: str, secret_file: str | None, force: bool, timeout: float) -> None:
    """Push the first map to every brick of a cluster configuration."""
    from dds.tools.initcmd import init_cluster

    cfg = load_cluster_config(config_path)
    target = resolve_target(",".join(b.address for b in cfg.bricks), secret_file, False,
                            DEFAULT_LOCAL_DIR, cfg.cluster.name, _tls_from_context())
    result = run(lambda reactor: init_cluster(reactor, cfg, target, force=force,
                                              timeout=timeout, say=ui.say))
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
@target_options
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--timeout", type=float, default=5.0, show_default=True)
@reports_errors
def status(seeds: str | None, secret_file: str | None, cluster_name: str | None, local: bool,
           local_dir: Path, as_json: bool, timeout: float) -> None:
    """Bricks, replica groups and map agreement of a running cluster.

    Exit status 0 when the cluster is healthy (every brick that is not retired answers,
    one map fingerprint, no divergence: "ok" in --json); 1 when it is not (the report is
    printed all the same), or when no seed answers; 2 for a bad option.
    """
    _status(_target(seeds, secret_file, cluster_name, local, local_dir), as_json, timeout)


def _status(target: Target, as_json: bool, timeout: float) -> None:
    from dds.tools.status import collect, render

    report = run(lambda reactor: collect(reactor, target, timeout))
    if as_json:
        ui.print_json(report)
    else:
        render(report, ui.out)
    if not report["ok"]:
        sys.exit(1)


# -- recover -----------------------------------------------------------------------------------

@main.command()
@target_options
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
@reports_errors
def recover(seeds: str | None, secret_file: str | None, cluster_name: str | None,
            local: bool, local_dir: Path, brick: str, rg: str | None, full_lease: bool,
            wait: bool, as_json: bool, timeout: float) -> None:
    """Make BRICK re-sync its replicas now, by partition copy, and watch it finish.

    Exit status 0 once every recovery it started is done and BRICK is an active member
    again; 1 on a failure or after --timeout (the recovery goes on in the brick).
    """
    from dds.tools import recover as r

    target = _target(seeds, secret_file, cluster_name, local, local_dir)
    options = r.Options(rg=rg, full_lease=full_lease, wait=wait, timeout=timeout)
    view: r.View = r.QuietView() if as_json else r.ProgressView(ui.err, brick)
    try:
        report = run(lambda reactor: r.recover(reactor, target, brick, options, view))
    finally:
        view.close()
    if as_json:
        ui.print_json(report)
    else:
        r.render(report, ui.out)
    if not report["ok"]:
        _fail(report["errors"])


# -- txns and repair ---------------------------------------------------------------------------

@main.command()
@target_options
@click.option("--all", "show_all", is_flag=True,
              help="list every active transaction, not only the in-doubt ones")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="seconds to wait for each brick")
@reports_errors
def txns(seeds: str | None, secret_file: str | None, cluster_name: str | None, local: bool,
         local_dir: Path, show_all: bool, as_json: bool, timeout: float) -> None:
    """In-doubt transactions per brick.

    In doubt: held prepared past its deadline, undecided.  --all lists every active one.
    """
    from dds.tools.txns import collect, render

    target = _target(seeds, secret_file, cluster_name, local, local_dir)
    report = run(lambda reactor: collect(reactor, target, timeout, show_all))
    if as_json:
        ui.print_json(report)
    else:
        render(report, ui.out)


@main.command()
@target_options
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
@reports_errors
def repair(seeds: str | None, secret_file: str | None, cluster_name: str | None,
           local: bool, local_dir: Path, txns_only: bool, only_steps: tuple[str, ...],
           dry_run: bool, prefer: str | None, before_deadline: bool, as_json: bool,
           timeout: float) -> None:
    """Repair step by step: in-doubt transactions, map divergence, half-done
    reorganizations, key space coverage (partitions restored from quarantine).

    Exit status 1 when a step left something unrepaired (or refused to choose) or a brick
    could not be reached.
    """
    from dds.tools import repair as r

    target = _target(seeds, secret_file, cluster_name, local, local_dir)
    options = r.Options(dry_run=dry_run, before_deadline=before_deadline, timeout=timeout,
                        prefer=prefer)
    only = {"txns"} if txns_only else (set(only_steps) or None)
    report = run(lambda reactor: r.repair(reactor, target, options, only, ui.say))
    if as_json:
        ui.print_json(report)
    else:
        r.render(report, ui.out)
    if not report["ok"]:
        sys.exit(1)


# -- jobs and cancel (journaled operations, DESIGN §8) ----------------------------------------

@main.command()
@target_options
@click.option("--all", "show_all", is_flag=True,
              help="also list finished jobs (kept for 7 days, the last 1000)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="seconds to wait for each brick")
@reports_errors
def jobs(seeds: str | None, secret_file: str | None, cluster_name: str | None, local: bool,
         local_dir: Path, show_all: bool, as_json: bool, timeout: float) -> None:
    """Running and unfinished multi-step operations (moves, splits, merges, brick changes),
    from the journals of every brick."""
    from dds.tools.jobs import collect, render

    target = _target(seeds, secret_file, cluster_name, local, local_dir)
    report = run(lambda reactor: collect(reactor, target, timeout, show_all))
    if as_json:
        ui.print_json(report)
    else:
        render(report, ui.out)


@main.command()
@target_options
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="seconds to wait for each brick")
@reports_errors
def cancel(seeds: str | None, secret_file: str | None, cluster_name: str | None,
           local: bool, local_dir: Path, job: str, as_json: bool, timeout: float) -> None:
    """Ask for JOB to stop: the tool running it stops after its current step and rolls it
    back (or `dds-admin repair` does, if no tool runs it any more).

    Exit status 1 for an unknown or finished job, or when no brick took the request.
    """
    from dds.tools import jobs as j

    target = _target(seeds, secret_file, cluster_name, local, local_dir)
    report = run(lambda reactor: j.cancel(reactor, target, job, timeout))
    if as_json:
        ui.print_json(report)
    else:
        j.render_cancel(report, ui.out)


# -- move, split and merge (DESIGN §8; tools/move.py, tools/split.py, tools/reorg.py) ------

def _reorg_options(fn: F) -> F:
    fn = click.option("--json", "as_json", is_flag=True,
                      help="print one JSON object at the end instead of a progress bar")(fn)
    fn = click.option("--dry-run", is_flag=True,
                      help="print the plan (partitions, groups, bricks, size); change "
                           "nothing")(fn)
    return fn


def _run_reorg(kind: str, unit: str, job: Callable[..., Any]) -> None:
    """Run ``job(reactor, say, progress)`` with a progress view, print its report."""
    from dds.tools import reorg

    ctx = click.get_current_context()
    as_json, dry_run = ctx.params["as_json"], ctx.params["dry_run"]
    what = {"move": "copying", "split": "building: rows routed",
            "merge": "building: rows routed"}[kind]
    view: reorg.View = reorg.QuietView() if as_json else reorg.ProgressView(ui.err, unit,
                                                                           what)
    try:
        result = run(lambda reactor: job(reactor, view.step,
                                         None if as_json or dry_run else view.progress))
    finally:
        view.end()
    if as_json:
        ui.print_json(result)
    else:
        reorg.render(result, ui.out)


@main.command()
@target_options
@click.argument("partition")
@click.option("--to", "to_rg", required=True, metavar="RG", help="the replica group to move it to")
@click.option("--rate", "rate_mb_s", type=click.IntRange(0, 100_000), default=None,
              metavar="MB/S", help="bandwidth limit of each copy (0: none) [default: the "
              "source brick's brick.move_rate_mb_s, 40]")
@_reorg_options
@reports_errors
def move(seeds: str | None, secret_file: str | None, cluster_name: str | None, local: bool,
         local_dir: Path, partition: str, to_rg: str, rate_mb_s: int | None,
         as_json: bool, dry_run: bool) -> None:
    """Move PARTITION to replica group RG, online: copied while writes go on, writes paused
    only for the cut-over.  Journaled: `dds-admin jobs` shows it, `dds-admin cancel` stops
    it, `dds-admin repair` finishes or rolls back one whose tool was killed."""
    from dds.tools import move as mv

    target = _target(seeds, secret_file, cluster_name, local, local_dir)
    _run_reorg("move", "bytes", lambda reactor, say, progress: mv.move(
        reactor, target, partition, to_rg, say, progress, rate_mb_s=rate_mb_s,
        dry_run=dry_run, measure=True))


def _reshape(kind: str, target: Target, partition: str) -> None:
    from dds.tools import split as sp

    dry_run = click.get_current_context().params["dry_run"]
    _run_reorg(kind, "rows", lambda reactor, say, progress: sp.reshape(
        reactor, target, kind, partition, say, progress, dry_run=dry_run, measure=True))


@main.command()
@target_options
@click.argument("partition")
@_reorg_options
@reports_errors
def split(seeds: str | None, secret_file: str | None, cluster_name: str | None,
          local: bool, local_dir: Path, partition: str, as_json: bool,
          dry_run: bool) -> None:
    """Split PARTITION into its two children, in place in its replica group, online: each
    member builds them from its own replica while writes go on; writes to PARTITION pause
    only for the cut-over.  Journaled: `dds-admin jobs` shows it, `dds-admin cancel` stops
    it, `dds-admin repair` finishes or rolls back one whose tool was killed."""
    _reshape("split", _target(seeds, secret_file, cluster_name, local, local_dir),
             partition)


@main.command()
@target_options
@click.argument("partition")
@_reorg_options
@reports_errors
def merge(seeds: str | None, secret_file: str | None, cluster_name: str | None,
          local: bool, local_dir: Path, partition: str, as_json: bool,
          dry_run: bool) -> None:
    """Merge PARTITION with its sibling (or, given a parent, its two children) into their
    parent, in place: both must be active in one replica group.  Online and journaled like
    `split`."""
    _reshape("merge", _target(seeds, secret_file, cluster_name, local, local_dir),
             partition)


# -- scrub -------------------------------------------------------------------------------------

@main.command()
@target_options
@click.argument("partition", required=False)
@click.option("--buckets", type=click.IntRange(1, 65536), default=64, show_default=True,
              help="key-hash ranges each replica is summarized in")
@click.option("--fix", is_flag=True,
              help="re-copy a replica that differs from a majority that agrees (the "
                   "brick re-syncs its RG, as `dds-admin recover` does), then check again")
@click.option("--json", "as_json", is_flag=True,
              help="print one JSON object at the end instead of a progress bar")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
              help="seconds allowed for one brick to summarize one replica")
@reports_errors
def scrub(seeds: str | None, secret_file: str | None, cluster_name: str | None,
          local: bool, local_dir: Path, partition: str | None, buckets: int, fix: bool,
          as_json: bool, timeout: float) -> None:
    """Compare the replicas of PARTITION (default: every partition) by checksums over
    key ranges and report the keys that differ.

    Buckets that differ are checked again after a short pause (a write may be in flight).
    Exit status 0 when all replicas agree (or were fixed), 1 otherwise.
    """
    from dds.tools import scrub as s

    target = _target(seeds, secret_file, cluster_name, local, local_dir)
    options = s.Options(partition=partition, buckets=buckets, fix=fix, timeout=timeout)
    view: s.View = s.QuietView() if as_json else s.ProgressView(ui.err)
    try:
        report = run(lambda reactor: s.scrub(reactor, target, options, view))
    finally:
        view.end()
    if as_json:
        ui.print_json(report)
    else:
        s.render(report, ui.out)
    if report["errors"]:
        _fail(report["errors"])
    if not report["ok"]:
        sys.exit(1)


# -- add-brick, remove-brick, rebalance (DESIGN §8; tools/membership.py) ---------------------

def _membership_options(fn: F) -> F:
    fn = click.option("--timeout", type=click.FloatRange(min=1.0), default=3600.0,
                      show_default=True,
                      help="seconds one change may take (its new member's copy, mostly)")(fn)
    fn = click.option("--json", "as_json", is_flag=True,
                      help="print one JSON object at the end instead of progress bars")(fn)
    fn = click.option("--parallel", type=click.IntRange(1, 64), default=2,
                      show_default=True,
                      help="changes in flight at once (one per replica group)")(fn)
    fn = click.option("--dry-run", is_flag=True, help="print the plan; change nothing")(fn)
    return fn


def _run_membership(command: Callable[..., Any], target: Target, as_json: bool,
                    dry_run: bool, parallel: int, timeout: float,
                    rate_mb_s: int | None = None, **kwargs: Any) -> None:
    from dds.tools import membership as m

    options = m.Options(parallel=parallel, timeout=timeout, dry_run=dry_run,
                        rate_mb_s=rate_mb_s)
    view: m.View = m.QuietView() if as_json else m.ProgressView(ui.err)
    say = (lambda text: None) if as_json else ui.say
    try:
        report = run(lambda reactor: command(reactor, target, options=options, view=view,
                                             say=say, **kwargs))
    finally:
        view.end()
    if as_json:
        ui.print_json(report)
    else:
        m.render_report(report, ui.out)
    if report["errors"]:
        _fail(report["errors"])
    if not report["ok"]:
        sys.exit(1)


@main.command("add-brick")
@target_options
@click.argument("address", metavar="HOST:PORT")
@click.option("--id", "brick_id", default=None,
              help="the brick's id (checked against the one it gives in the handshake)")
@click.option("--host", "host", default=None,
              help="its failure domain [default: the address's host]")
@click.option("--rebalance/--no-rebalance", default=True, show_default=True,
              help="give it replicas now (--no-rebalance only registers it; a later "
                   "`dds-admin rebalance` does)")
@_membership_options
@reports_errors
def add_brick(seeds: str | None, secret_file: str | None, cluster_name: str | None,
              local: bool, local_dir: Path, address: str, brick_id: str | None,
              host: str | None, rebalance: bool, dry_run: bool, parallel: int,
              as_json: bool, timeout: float) -> None:
    """Add the brick running at HOST:PORT (started with the cluster's secret and name)
    to the map, then make it a member of replica groups in place of busier bricks until
    partitions per brick are level.  Journaled: `dds-admin repair` settles it if killed."""
    from dds.tools import membership as m

    _run_membership(m.add_brick, _target(seeds, secret_file, cluster_name, local,
                                         local_dir), as_json, dry_run, parallel, timeout,
                    address=address, brick_id=brick_id, host=host, rebalance=rebalance)


@main.command("remove-brick")
@target_options
@click.argument("bricks", metavar="BRICK...", nargs=-1, required=True)
@click.option("--drain/--no-drain", default=True, show_default=True,
              help="replace it in each replica group by another brick before it leaves "
                   "(--no-drain just removes it: its groups keep one replica less)")
@click.option("--force", is_flag=True,
              help="remove it even where a group would fall below a majority of its "
                   "replicas or no brick on another host can replace it")
@_membership_options
@reports_errors
def remove_brick(seeds: str | None, secret_file: str | None, cluster_name: str | None,
                 local: bool, local_dir: Path, bricks: tuple[str, ...], drain: bool,
                 force: bool, dry_run: bool, parallel: int, as_json: bool,
                 timeout: float) -> None:
    """Take BRICK (one or more) out of every replica group, online.  Refused when a
    group would fall below a majority of its replicas, or would need two replicas on one
    host, unless --force.  Afterwards the brick holds nothing and can be stopped."""
    from dds.tools import membership as m

    _run_membership(m.remove_brick, _target(seeds, secret_file, cluster_name, local,
                                            local_dir), as_json, dry_run, parallel,
                    timeout, bricks=list(dict.fromkeys(bricks)), drain=drain, force=force)


@main.command("forget-brick")
@target_options
@click.argument("bricks", metavar="BRICK...", nargs=-1, required=True)
@click.option("--dry-run", is_flag=True, help="check only; change nothing")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="seconds to wait for each brick")
@reports_errors
def forget_brick(seeds: str | None, secret_file: str | None, cluster_name: str | None,
                 local: bool, local_dir: Path, bricks: tuple[str, ...], dry_run: bool,
                 as_json: bool, timeout: float) -> None:
    """Forget BRICK (one or more) for good: a brick that remove-brick retired and that is
    stopped disappears from status, repair, jobs and placement.  Refused, with nothing
    changed, while it is in a replica group, not retired, or still answers."""
    from dds.tools import forget as fg

    target = _target(seeds, secret_file, cluster_name, local, local_dir)
    say = (lambda text: None) if as_json else ui.say
    report = run(lambda reactor: fg.forget_bricks(
        reactor, target, list(dict.fromkeys(bricks)), dry_run=dry_run, timeout=timeout,
        say=say))
    if as_json:
        ui.print_json(report)
    else:
        fg.render(report, ui.out)


@main.command()
@target_options
@_membership_options
@click.option("--rate", "rate_mb_s", type=click.IntRange(0, 100_000), default=None,
              metavar="MB/S", help="bandwidth limit of each partition copy of a move (0: "
              "none) [default: the source brick's brick.move_rate_mb_s]; a member "
              "replacement re-syncs at the source brick's setting")
@reports_errors
def rebalance(seeds: str | None, secret_file: str | None, cluster_name: str | None,
              local: bool, local_dir: Path, dry_run: bool, parallel: int, as_json: bool,
              timeout: float, rate_mb_s: int | None) -> None:
    """Level partitions per brick (within ±1 of the mean where member choice allows it,
    never two replicas of a group on one host, fewest bytes copied) and fill groups
    below the replication factor.  --dry-run prints the plan."""
    from dds.tools import membership as m

    _run_membership(m.rebalance, _target(seeds, secret_file, cluster_name, local,
                                         local_dir), as_json, dry_run, parallel, timeout,
                    rate_mb_s=rate_mb_s)


# -- bench -------------------------------------------------------------------------------------

@main.group(invoke_without_command=True)
@target_options
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
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@reports_errors
@click.pass_context
def bench(ctx: click.Context, seeds: str | None, secret_file: str | None,
          cluster_name: str | None, local: bool, local_dir: Path, seconds: float, keys: int,
          value_size: int, concurrency: int, clients: int, with_tls: bool, rounds: int,
          as_json: bool) -> None:
    """Throughput, latency and CPU per operation, next to the echo floor.

    `bench --tls` compares a plain and a TLS cluster; `bench recovery` measures a
    partition re-copy, `bench move` a partition move, each on throwaway clusters;
    `bench contention` increments hot keys with compare_and_put."""
    if ctx.invoked_subcommand is not None:
        return
    from dds.tools import bench as b
    from dds.tools.status import collect

    params = b.BenchParams(seconds, keys, value_size, concurrency, clients)
    if with_tls:
        from dds.tools import benchtls
        tls_result = run(lambda reactor: benchtls.bench_tls(reactor, params,
                                                            rounds=rounds))
        if as_json:
            ui.print_json(tls_result)
        else:
            benchtls.render_tls(tls_result, ui.out)
        return

    target = _target(seeds, secret_file, cluster_name, local, local_dir)
    report = run(lambda reactor: collect(reactor, target))
    result = b.bench(target, params, report)
    if as_json:
        ui.print_json(result)
    else:
        b.render(result, ui.out)


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
    from dds.tools import benchcontention as bc

    g = ctx.parent.params if ctx.parent is not None else {}
    target = _target(g.get("seeds"), g.get("secret_file"), g.get("cluster_name"),
                     bool(g.get("local")), g.get("local_dir") or Path(".dds-local"))
    result = bc.bench_contention(target, bc.ContentionParams(seconds, loops, clients))
    if as_json:
        ui.print_json(result)
    else:
        bc.render(result, ui.out)
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
    from dds.tools import benchrecovery as br

    result = br.bench_recovery(br.RecoveryParams(
        keys=keys, value_bytes=value_bytes, clients=clients, workers=workers,
        lease_ms=lease_ms, baseline_s=baseline_s, dir=work_dir, keep=keep))
    if as_json:
        ui.print_json(result)
    else:
        br.render(result, ui.out)


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
    from dds.tools import benchmove as bm

    result = bm.bench_move(bm.MoveParams(
        keys=keys, value_bytes=value_bytes, clients=clients, workers=workers,
        lease_ms=lease_ms, baseline_s=baseline_s, dir=work_dir, keep=keep,
        rate_mb_s=rate_mb_s))
    if as_json:
        ui.print_json(result)
    else:
        bm.render(result, ui.out)


# -- local ---------------------------------------------------------------------------------------

@main.group()
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
@reports_errors
def local_up(local_dir: Path, bricks: int | None, replication: int | None,
             partitions: int | None, durability: str | None, tls: bool | None) -> None:
    """Start a local cluster (or say that one is running) and initialize it."""
    from dds.tools import local as loc

    if partitions is not None and partitions & (partitions - 1):
        raise click.BadParameter(f"must be a power of two, got {partitions}",
                                 param_hint="--partitions")
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
                                                    "tls": tls or None})
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
    ui.out.print(f"connect: seeds [bold]{seeds}[/bold], cluster 'dds', {how}\n"
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
    _status(resolve_target(None, None, True, local_dir, None), as_json, timeout)


from dds.tools.certs import certs; main.add_command(certs)  # noqa: E402,E702
if __name__ == "__main__":
    main()
