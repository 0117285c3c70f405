"""Processes as the admin tool sees them through ``/proc`` (Linux).

A PID alone does not name a process: after it exits the number can be reused.  The pair
(PID, start time in clock ticks since boot) does, so ``local down`` only ever signals a
process whose start time still matches the one recorded when it was spawned.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import attrs

__all__ = ["ProcStat", "stat", "start_time", "is_running", "cpu_seconds", "signal_if_ours",
           "pids_listening", "CLOCK_TICKS"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@attrs.frozen
class ProcStat:
    state: str
    utime: int
    stime: int
    start_time: int


def stat(pid: int) -> ProcStat | None:
    """Fields of ``/proc/PID/stat``, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    return ProcStat(state=rest[0], utime=int(rest[11]), stime=int(rest[12]),
                    start_time=int(rest[19]))


def start_time(pid: int) -> int | None:
    s = stat(pid)
    return s.start_time if s else None


def is_running(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process started at ``started`` (if given)."""
    s = stat(pid)
    if s is None or s.state in ("Z", "X"):
        return False
    return started is None or s.start_time == started


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far; None if it is gone."""
    s = stat(pid)
    return None if s is None else (s.utime + s.stime) / CLOCK_TICKS


def signal_if_ours(pid: int, started: int, sig: signal.Signals) -> bool:
    """Send ``sig`` only if ``pid`` is still the process started at ``started``."""
    if not is_running(pid, started):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def pids_listening(port: int) -> list[int]:
    """PIDs of local processes (that we may inspect) listening on TCP ``port``."""
    inodes = _listening_inodes(port)
    if not inodes:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                found.append(int(entry.name))
                break
    return found
