"""The click group ``dr``: the disaster-recovery site (DESIGN §12), registered on
``dds-admin`` by ``tools/admin.py``.  Each command lives with its subsystem in
``tools/dr/`` and is added here, one line each."""

from __future__ import annotations

import click

__all__ = ["dr"]


@click.group(help="Disaster recovery: a second cluster that follows this one through "
             "the change stream, and its promotion when the primary site is lost.")
def dr() -> None:
    pass


# -- the commands (one line each) ----------------------------------------------------------
from dds.tools.dr.attach import attach, detach  # noqa: E402  (attach, detach)
dr.add_command(attach)
dr.add_command(detach)
from dds.tools.dr.runfollow import follow  # noqa: E402
dr.add_command(follow)
from dds.tools.dr.status import status  # noqa: E402
dr.add_command(status)
from dds.tools.dr.promote import promote  # noqa: E402
dr.add_command(promote)
