"""The click commands ``backup`` and ``restore`` (issue 17; the work is in
``tools/backup.py`` and ``tools/restore.py``, the format in ``tools/backupfmt.py``),
registered on ``dds-admin`` by ``tools/admin.py``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from dds.tools import ui
from dds.tools.cli import cluster_target, reports_errors, tls_from_context, tls_options
from dds.tools.cluster import DEFAULT_LOCAL_DIR, Target, resolve_target
from dds.tools.runner import run

if TYPE_CHECKING:
    from dds.tools.backup import View

__all__ = ["backup", "restore"]


def _view(as_json: bool, what: str) -> View:
    from dds.tools import reorg
    return reorg.QuietView() if as_json else reorg.ProgressView(ui.err, "bytes", what)


@click.command()
@cluster_target
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="print one JSON object at the end (bytes, seconds, MB/s, partitions) "
                   "instead of a progress bar")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="seconds to wait for each chunk request")
def backup(target: Target, directory: Path, as_json: bool, timeout: float) -> None:
    """Back up every partition of the cluster, online, into DIR (new or empty).

    Each partition is taken at one log position (recorded in DIR/manifest.json, with the
    map and checksums); writes made after a partition's snapshot may or may not be in it.
    The manifest is written last: a backup without one is incomplete.
    """
    from dds.tools import backup as b

    view = _view(as_json, "downloading")
    try:
        report = run(lambda reactor: b.backup(reactor, target, directory, view,
                                              timeout=timeout))
    finally:
        view.end()
    ui.show(report, b.render, as_json)


@click.command()
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="the new cluster's configuration (TOML), as for dds-admin init")
@click.option("--secret-file", type=click.Path(dir_okay=False), default=None,
              help="file holding the admin role's shared secret (or set DDS_ADMIN_SECRET)")
@tls_options
@click.option("--json", "as_json", is_flag=True,
              help="print one JSON object at the end instead of a progress bar")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="seconds to wait for each brick and each chunk request")
@reports_errors
def restore(directory: Path, config_path: str, secret_file: str | None, as_json: bool,
            timeout: float) -> None:
    """Restore the backup in DIR into a new cluster: the bricks of --config, running and
    not yet initialized (any number of them).

    Every file is verified first (nothing changes if one is bad); then the bricks are
    initialized with the backup's partitions, each file is installed on every member of
    its replica group, and every replica's checksum is compared with the backup's.
    """
    from dds.config import load_cluster_config
    from dds.tools import restore as r

    cfg = load_cluster_config(config_path)
    target = resolve_target(",".join(b.address for b in cfg.bricks), secret_file, False,
                            DEFAULT_LOCAL_DIR, cfg.cluster.name, tls_from_context())
    view = _view(as_json, "restoring")
    try:
        report = run(lambda reactor: r.restore(reactor, cfg, target, directory,
                                               view, timeout=timeout))
    finally:
        view.end()
    ui.show(report, r.render, as_json)
