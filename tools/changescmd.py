"""The click command ``changes``: a partition's change stream on a terminal (DESIGN §12),
registered on ``dds-admin`` by ``tools/admin.py``."""

from __future__ import annotations

import json
from typing import Any

import click

from dds.tools.cli import cluster_target, fail, reports_errors
from dds.tools.cluster import Target
from dds.tools.runner import pause, run

__all__ = ["changes"]

#: Seconds between two polls at the end of the stream with ``--follow``.
FOLLOW_POLL_S = 0.5


def _line(change: Any, as_json: bool) -> str:
    if as_json:
        return json.dumps({"key": change.key.hex(),
                           "value": None if change.value is None else change.value.hex(),
                           "version": change.version, "position": change.position})
    value = "(removed)" if change.value is None else repr(change.value[:60])
    return f"{change.key!r} v{change.version} = {value}  @ {change.position}"


def _end(position: str, ended: tuple[str, ...] | None, as_json: bool) -> str:
    if as_json:
        return json.dumps({"position": position, "ended": ended is not None,
                           "successors": list(ended or ())})
    if ended is not None:
        return (f"ended: the partition split or merged into {', '.join(ended)}; read them "
                f"--from {position}")
    return f"position: {position}"


async def _stream(reactor: Any, target: Target, partition: str, start: str,
                  follow: bool, as_json: bool) -> None:
    from dds.lib import DDSClient

    client = await DDSClient.connect(
        reactor, [f"{h}:{p}" for h, p in target.seeds], cluster=target.cluster,
        credentials=target.credentials, role="admin", metrics_registry=None)
    try:
        cursor = client.changes(partition, start)
        while True:
            page = await cursor.next_page()
            for change in page.changes:
                click.echo(_line(change, as_json))
            if page.ended or not (follow or page.more):
                click.echo(_end(cursor.position, cursor.ended, as_json))
                return
            if not page.changes:
                await pause(reactor, FOLLOW_POLL_S)
    finally:
        await client.close()


@click.command()
@cluster_target
@click.argument("partition")
@click.option("--from", "start", default="beginning", show_default=True,
              help="a position printed earlier, 'beginning' or 'now'")
@click.option("--follow", is_flag=True,
              help="keep polling for new changes until interrupted (Ctrl-C)")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON object per line (key and value in hex), the last one the "
                   "position to go on from")
@reports_errors
def changes(target: Target, partition: str, start: str, follow: bool,
            as_json: bool) -> None:
    """Print the committed changes of PARTITION after a position, each with the position
    to resume after it; the last line is the position reached.  Delivery is at least
    once (a change may come twice after a brick failed) and compacted (a key written
    twice between two reads comes once, at its newest version)."""
    from dds.errors import DDSError

    try:
        run(lambda reactor: _stream(reactor, target, partition, start, follow, as_json))
    except DDSError as e:
        fail([f"changes of {partition}: {e.message}"])
