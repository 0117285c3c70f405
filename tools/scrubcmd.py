"""The click command ``scrub`` (``tools/scrub/``), registered on ``dds-admin`` by
``tools/admin.py``."""

from __future__ import annotations

import sys

import click

from dds.tools import ui
from dds.tools.cli import cluster_target, fail
from dds.tools.cluster import Target
from dds.tools.runner import run

__all__ = ["scrub"]


@click.command()
@cluster_target
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
def scrub(target: Target, partition: str | None, buckets: int, fix: bool, as_json: bool,
          timeout: float) -> None:
    """Compare the replicas of PARTITION (default: every partition) by checksums over
    key ranges and report the keys that differ.

    Buckets that differ are checked again after a short pause (a write may be in flight).
    Exit status 0 when all replicas agree (or were fixed), 1 otherwise.
    """
    from dds.tools import scrub as s

    options = s.Options(partition=partition, buckets=buckets, fix=fix, timeout=timeout)
    view: s.View = s.QuietView() if as_json else s.ProgressView(ui.err)
    try:
        report = run(lambda reactor: s.scrub(reactor, target, options, view))
    finally:
        view.end()
    ui.show(report, s.render, as_json)
    if report["errors"]:
        fail(report["errors"])
    if not report["ok"]:
        sys.exit(1)
