"""The click commands ``move``, ``split`` and ``merge`` (DESIGN §8; the jobs are in
``tools/move.py`` and ``tools/split.py``, what they share in ``tools/reorg.py``),
registered on ``dds-admin`` by ``tools/admin.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from dds.tools import ui
from dds.tools.cli import cluster_target
from dds.tools.cluster import Target
from dds.tools.runner import run

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["move", "split", "merge"]


def _reorg_options(fn: F) -> F:
    fn = click.option("--json", "as_json", is_flag=True,
                      help="print one JSON object at the end instead of a progress bar")(fn)
    fn = click.option("--dry-run", is_flag=True,
                      help="print the plan (partitions, groups, bricks, size); change "
                           "nothing")(fn)
    return fn


def _run_reorg(kind: str, unit: str, as_json: bool, dry_run: bool,
               job: Callable[..., Any]) -> None:
    """Run ``job(reactor, say, progress)`` with a progress view, print its report."""
    from dds.tools import reorg

    what = {"move": "copying", "split": "building: rows routed",
            "merge": "building: rows routed"}[kind]
    view: reorg.View = reorg.QuietView() if as_json else reorg.ProgressView(ui.err, unit,
                                                                           what)
    try:
        result = run(lambda reactor: job(reactor, view.step,
                                         None if as_json or dry_run else view.progress))
    finally:
        view.end()
    ui.show(result, reorg.render, as_json)


@click.command()
@cluster_target
@click.argument("partition")
@click.option("--to", "to_rg", required=True, metavar="RG", help="the replica group to move it to")
@click.option("--rate", "rate_mb_s", type=click.IntRange(0, 100_000), default=None,
              metavar="MB/S", help="bandwidth limit of each copy (0: none) [default: the "
              "source brick's brick.move_rate_mb_s, 40]")
@_reorg_options
def move(target: Target, partition: str, to_rg: str, rate_mb_s: int | None, as_json: bool,
         dry_run: bool) -> None:
    """Move PARTITION to replica group RG, online: copied while writes go on, writes paused
    only for the cut-over.  Journaled: `dds-admin jobs` shows it, `dds-admin cancel` stops
    it, `dds-admin repair` finishes or rolls back one whose tool was killed."""
    from dds.tools import move as mv

    _run_reorg("move", "bytes", as_json, dry_run, lambda reactor, say, progress: mv.move(
        reactor, target, partition, to_rg, say, progress, rate_mb_s=rate_mb_s,
        dry_run=dry_run, measure=True))


def _reshape(kind: str, target: Target, partition: str, as_json: bool,
             dry_run: bool) -> None:
    from dds.tools import split as sp

    _run_reorg(kind, "rows", as_json, dry_run, lambda reactor, say, progress: sp.reshape(
        reactor, target, kind, partition, say, progress, dry_run=dry_run, measure=True))


@click.command()
@cluster_target
@click.argument("partition")
@_reorg_options
def split(target: Target, partition: str, as_json: bool, dry_run: bool) -> None:
    """Split PARTITION into its two children, in place in its replica group, online: each
    member builds them from its own replica while writes go on; writes to PARTITION pause
    only for the cut-over.  Journaled: `dds-admin jobs` shows it, `dds-admin cancel` stops
    it, `dds-admin repair` finishes or rolls back one whose tool was killed."""
    _reshape("split", target, partition, as_json, dry_run)


@click.command()
@cluster_target
@click.argument("partition")
@_reorg_options
def merge(target: Target, partition: str, as_json: bool, dry_run: bool) -> None:
    """Merge PARTITION with its sibling (or, given a parent, its two children) into their
    parent, in place: both must be active in one replica group.  Online and journaled like
    `split`."""
    _reshape("merge", target, partition, as_json, dry_run)
