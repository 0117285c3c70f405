"""The click commands ``add-brick``, ``remove-brick`` and ``rebalance`` (DESIGN §8;
``tools/membership/``), registered on ``dds-admin`` by ``tools/admin.py``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from dds.tools import ui
from dds.tools.cli import cluster_target, fail
from dds.tools.cluster import Target
from dds.tools.runner import run

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["add_brick", "remove_brick", "rebalance"]


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
    ui.show(report, m.render_report, as_json)
    if report["errors"]:
        fail(report["errors"])
    if not report["ok"]:
        sys.exit(1)


@click.command("add-brick")
@cluster_target
@click.argument("address", metavar="HOST:PORT")
@click.option("--id", "brick_id", default=None,
              help="the brick's id (checked against the one it gives in the handshake)")
@click.option("--host", "host", default=None,
              help="its failure domain [default: the address's host]")
@click.option("--rebalance/--no-rebalance", default=True, show_default=True,
              help="give it replicas now (--no-rebalance only registers it; a later "
                   "`dds-admin rebalance` does)")
@_membership_options
def add_brick(target: Target, address: str, brick_id: str | None, host: str | None,
              rebalance: bool, dry_run: bool, parallel: int, as_json: bool,
              timeout: float) -> None:
    """Add the brick running at HOST:PORT (started with the cluster's secret and name)
    to the map, then make it a member of replica groups in place of busier bricks until
    partitions per brick are level.  Journaled: `dds-admin repair` settles it if killed."""
    from dds.tools import membership as m

    _run_membership(m.add_brick, target, as_json, dry_run, parallel, timeout,
                    address=address, brick_id=brick_id, host=host, rebalance=rebalance)


@click.command("remove-brick")
@cluster_target
@click.argument("bricks", metavar="BRICK...", nargs=-1, required=True)
@click.option("--drain/--no-drain", default=True, show_default=True,
              help="replace it in each replica group by another brick before it leaves "
                   "(--no-drain just removes it: its groups keep one replica less)")
@click.option("--force", is_flag=True,
              help="remove it even where a group would fall below a majority of its "
                   "replicas or no brick on another host can replace it")
@_membership_options
def remove_brick(target: Target, bricks: tuple[str, ...], drain: bool, force: bool,
                 dry_run: bool, parallel: int, as_json: bool, timeout: float) -> None:
    """Take BRICK (one or more) out of every replica group, online.  Refused when a
    group would fall below a majority of its replicas, or would need two replicas on one
    host, unless --force.  Afterwards the brick holds nothing and can be stopped."""
    from dds.tools import membership as m

    _run_membership(m.remove_brick, target, as_json, dry_run, parallel, timeout,
                    bricks=list(dict.fromkeys(bricks)), drain=drain, force=force)


@click.command()
@cluster_target
@_membership_options
@click.option("--rate", "rate_mb_s", type=click.IntRange(0, 100_000), default=None,
              metavar="MB/S", help="bandwidth limit of each partition copy of a move (0: "
              "none) [default: the source brick's brick.move_rate_mb_s]; a member "
              "replacement re-syncs at the source brick's setting")
def rebalance(target: Target, dry_run: bool, parallel: int, as_json: bool, timeout: float,
              rate_mb_s: int | None) -> None:
    """Level partitions per brick (within ±1 of the mean where member choice allows it,
    never two replicas of a group on one host, fewest bytes copied) and fill groups
    below the replication factor.  --dry-run prints the plan."""
    from dds.tools import membership as m

    _run_membership(m.rebalance, target, as_json, dry_run, parallel, timeout,
                    rate_mb_s=rate_mb_s)
