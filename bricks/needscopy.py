"""Needs-copy markers: replicas here that must not be trusted until a copy replaced them.

A marker (``quarantine/<pid>.needs-copy``, holding the reason) is made durable before the
evidence that called for it can disappear: before an unreadable file is moved aside, and
before a damaged transaction log is retired at start.  Without it, a brick restarted in
between would take its replica for a good one, and when no other member of the RG serves
it (a whole-RG restart) it would serve what it holds without copying (DESIGN §7).  The
damage component (``bricks/damage.py``) reads the markers at start and has the RG
re-copied; the copy removes them.

Its own module, with no brick imports, because the storage makes markers too (in its
log replay, before any component exists) and the components import the storage.
"""

from __future__ import annotations

import os
from pathlib import Path

from dds.bricks.partstore import PID_RE

__all__ = ["MARKER", "QUARANTINE_DIR", "mark", "marked"]

#: Where set-aside files and markers live, under the data directory.
QUARANTINE_DIR = "quarantine"
MARKER = ".needs-copy"
#: The reason of a marker written before markers held one.
UNREADABLE = "its file was unreadable"


def mark(qdir: Path, pid: str, why: str = UNREADABLE) -> None:
    """The needs-copy marker of ``pid`` with its reason, durable with its directory."""
    qdir.mkdir(parents=True, exist_ok=True)
    marker = qdir / (pid + MARKER)
    with open(marker, "wb") as f:
        f.write(why.encode("utf-8", "replace")[:1000])
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(qdir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def marked(data_dir: Path) -> dict[str, str]:
    """Partitions whose replica here still needs a copy, with why (markers survive
    restarts)."""
    qdir = Path(data_dir) / QUARANTINE_DIR
    if not qdir.is_dir():
        return {}
    out = {}
    for f in qdir.iterdir():
        pid = f.name[: -len(MARKER)]
        if f.name.endswith(MARKER) and PID_RE.match(pid):
            try:
                why = f.read_bytes().decode("utf-8", "replace").strip()
            except OSError:
                why = ""
            out[pid] = why or UNREADABLE
    return out
