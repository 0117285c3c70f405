"""Small state files (the map, the record locks) replaced whole by an atomic rename.

How durable the replacement is follows the brick's durability mode (DESIGN §4): in
``fsync`` mode the new file is fsynced before the rename and the directory after it, so
it survives a power cut; in ``disk`` and ``memory`` modes it is written to the kernel and
renamed, which survives any crash of the process, exactly as the brick's data does in
those modes.  An fsync on a busy disk costs 30-130 ms, and these files are written on
the reactor thread while writes wait (docs/performance.md, "Move").
"""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, data: bytes, *, fsync: bool) -> None:
    """Make ``path`` hold exactly ``data``: the old content or the new, never a mix."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX: fsync the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
