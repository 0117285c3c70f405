"""``dds-admin recover``: make one brick re-sync its replicas now, and watch it finish.

A brick re-syncs by itself after a restart or an exclusion (DESIGN §7); this command is
for the cases it cannot know about: replicas suspected damaged (a disk error, a file
restored from a backup), retrying at once instead of after the backoff, or measuring a
recovery (``--full-lease`` fences writes for the whole copy, as the original DDS did, for
comparison).  It sends ``recover`` to the brick, then polls the brick's ``status`` until
every recovery it started (or found already running) is done *and* the brick is an
active member of the RG again: "done" alone could also mean the brick left the RG.

The outcome is a plain dict (what ``--json`` prints); :func:`render` draws it as a table.
Progress goes through a :class:`View`, so the command logic knows nothing of terminals.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import attrs
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table

from dds.config import format_address
from dds.errors import DDSError
from dds.maps import ClusterMap
from dds.messages import Recover, Status
from dds.records import BrickRecord

from dds.tools.cluster import Target, ask, connect_brick, describe_error, fetch_map
from dds.tools.runner import AdminError, pause

__all__ = ["Options", "View", "ProgressView", "QuietView", "recover", "render", "find_brick"]

#: Seconds allowed for one request (connect, ``recover``, one ``status`` poll).
CALL_TIMEOUT_S = 5.0
#: Interval between two ``status`` polls.
POLL_S = 0.2
#: How long polls may fail in a row before the brick counts as gone (a brick busy
#: copying may miss a poll; one that stopped should not keep the operator waiting).
UNREACHABLE_GRACE_S = 10.0
#: What each RG's line of the outcome carries (from the brick's ``recovery`` entry).
FIELDS = ("phase", "source", "bytes_total", "bytes_done", "copy_s", "fenced_s", "attempts",
          "last_error")


@attrs.frozen
class Options:
    rg: str | None = None
    full_lease: bool = False
    wait: bool = True
    timeout: float = 600.0


class View(Protocol):
    """Where progress goes while the command waits."""

    def update(self, rgs: dict[str, dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class QuietView:
    """No progress at all (``--json``: stdout gets the one final object, nothing else)."""

    def update(self, rgs: dict[str, dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


class ProgressView:
    """A bar per RG (bytes, rate, time left) on a terminal, and a line per phase change
    everywhere, so a log that is not a terminal still shows how the recovery went."""

    def __init__(self, console: Console, brick: str) -> None:
        self.console = console
        self.brick = brick
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(),
                                 TimeRemainingColumn(), console=console,
                                 disable=not console.is_terminal)
        self.tasks: dict[str, TaskID] = {}
        self.seen: dict[str, tuple[Any, Any]] = {}
        self.started = False

    def update(self, rgs: dict[str, dict[str, Any]]) -> None:
        if not self.started:            # not before there is something to show
            self.progress.start()
            self.started = True
        for rg, row in rgs.items():
            phase = row.get("phase") or "starting"
            total, done = int(row.get("bytes_total") or 0), int(row.get("bytes_done") or 0)
            task = self.tasks.get(rg)
            if task is None:
                task = self.tasks[rg] = self.progress.add_task(rg, total=None)
            elif done < self.progress.tasks[task].completed:
                self.progress.reset(task)           # a new attempt: the rate starts over
            if phase == "done":                     # a full bar, also for empty RGs
                total = done = max(total, 1)
            source = f" from {row['source']}" if row.get("source") else ""
            self.progress.update(task, total=total or None, completed=done,
                                 description=f"{rg} {phase}{source}")
            key = (phase, row.get("attempts"))
            if self.seen.get(rg) != key:
                self.seen[rg] = key
                self.console.print(f"[dim]{escape(self.brick)} {escape(rg)}: "
                                   f"{escape(_phase_note(row))}[/dim]")

    def close(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False


def _phase_note(row: dict[str, Any]) -> str:
    phase = row.get("phase") or "starting"
    note = phase + (f" from {row['source']}" if row.get("source") else "")
    if row.get("bytes_total"):
        note += f" ({decimal(int(row['bytes_total']))})"
    if (row.get("attempts") or 0) > 1:
        note += f", attempt {row['attempts']}"
    if phase == "retrying" and row.get("last_error"):
        note += f": {row['last_error']}"
    return note


def find_brick(cmap: ClusterMap, brick_id: str) -> BrickRecord:
    brick = cmap.bricks.get(brick_id)
    if brick is None:
        raise AdminError(f"brick {brick_id!r} is not in the map (bricks: "
                         f"{', '.join(sorted(cmap.bricks)) or 'none'})")
    return brick


def _check_rg(cmap: ClusterMap, brick_id: str, rg: str) -> None:
    """Refused here, because the brick would retry an RG it cannot recover forever."""
    rec = cmap.rgs.get(rg)
    if rec is None:
        raise AdminError(f"no replica group {rg!r} in the map (groups: "
                         f"{', '.join(sorted(cmap.rgs)) or 'none'})")
    if rec.member_state(brick_id) is None:
        raise AdminError(f"brick {brick_id} is not a member of {rg} (members: "
                         f"{', '.join(m.brick for m in rec.members)})")


async def _send_recover(reactor: Any, target: Target, brick: BrickRecord,
                        msg: Recover) -> list[str]:
    """``recover`` to ``brick``, only once its handshake proved it is that brick."""
    where = f"brick {brick.id} at {brick.address}:{brick.port}"
    try:
        conn = await connect_brick(reactor, brick.address, brick.port, target,
                                   CALL_TIMEOUT_S)
    except DDSError as e:
        raise AdminError(f"{where} does not answer: {describe_error(e)}") from None
    try:
        if conn.peer_id != brick.id:
            raise AdminError(f"{where} answers as {conn.peer_id!r}; nothing was sent")
        reply = await conn.send(msg, timeout=CALL_TIMEOUT_S)
    except DDSError as e:
        raise AdminError(f"{where} refused recover: {describe_error(e)}") from None
    finally:
        conn.close()
    return [str(rg) for rg in reply.get("started", [])]


async def _status(reactor: Any, target: Target, brick: BrickRecord) -> dict[str, Any]:
    answer = await ask(reactor, brick.address, brick.port, target, Status(), CALL_TIMEOUT_S)
    if answer.peer != brick.id:
        raise AdminError(f"brick {brick.id} at {brick.address}:{brick.port} now answers "
                         f"as {answer.peer!r}")
    return answer.reply


def _rows(status: dict[str, Any], rgs: list[str]) -> dict[str, dict[str, Any]]:
    """Each watched RG's recovery as the brick reports it, with its member state."""
    rows: dict[str, dict[str, Any]] = {}
    for rg in rgs:
        rec = status.get("recovery", {}).get(rg) or {}
        row = {f: rec.get(f) for f in FIELDS}
        row["member"] = status.get("members", {}).get(rg)
        rows[rg] = row
    return rows


def _finished(row: dict[str, Any]) -> bool:
    return row["phase"] == "done" and row["member"] == "active"


async def recover(reactor: Any, target: Target, brick_id: str, options: Options,
                  view: View) -> dict[str, Any]:
    """Start recovery on ``brick_id`` and, with ``options.wait``, follow it to the end.
    Problems reaching the brick before anything started raise :class:`AdminError`;
    once it runs, the outcome says ``ok`` and lists any ``errors``."""
    began = time.monotonic()
    cmap, _seed = await fetch_map(reactor, target, CALL_TIMEOUT_S)
    brick = find_brick(cmap, brick_id)
    if options.rg is not None:
        _check_rg(cmap, brick_id, options.rg)
    msg = Recover(rg=options.rg, full_lease=True if options.full_lease else None)
    started = await _send_recover(reactor, target, brick, msg)
    report: dict[str, Any] = {
        "brick": brick.id, "address": format_address(brick.address, brick.port), "rg": options.rg,
        "full_lease": options.full_lease, "started": started, "already_running": [],
        "waited": options.wait, "ok": True, "errors": [], "rgs": {}, "seconds": 0.0}
    if not options.wait:
        return report
    try:
        status = await _status(reactor, target, brick)
    except DDSError as e:
        raise AdminError(f"brick {brick.id} does not answer after recover: "
                         f"{describe_error(e)}") from None
    # A recovery already under way (after a restart, say) is not started again, but it is
    # what the operator is waiting for all the same.
    candidates = [options.rg] if options.rg else sorted(status.get("members", {}))
    running = [rg for rg in candidates if rg not in started
               and (status.get("recovery", {}).get(rg) or {}).get("phase") not in (None, "done")]
    report["already_running"] = running
    watched = started + running
    # One that ran when asked (so none was started) may have finished before the
    # status: the re-sync asked for happened (a race seen in a CI run of the suite).
    finished = [rg for rg in candidates if rg not in started
                and (status.get("recovery", {}).get(rg) or {}).get("phase") == "done"]
    if not watched and finished:
        report["already_running"] = finished
        return report
    if not watched:
        if candidates:
            report["ok"] = False
            report["errors"] = [f"brick {brick.id} started no recovery of "
                                f"{', '.join(candidates)} (is it stopping?)"]
        return report
    await _watch(reactor, target, brick, watched, options.timeout, began, status, view,
                 report)
    report["seconds"] = round(time.monotonic() - began, 3)
    return report


async def _watch(reactor: Any, target: Target, brick: BrickRecord, watched: list[str],
                 timeout: float, began: float, status: dict[str, Any], view: View,
                 report: dict[str, Any]) -> None:
    """Poll until every watched RG is done and active, or fail into ``report``."""
    deadline = began + timeout
    answered = time.monotonic()
    while True:
        rows = _rows(status, watched)
        report["rgs"] = rows
        view.update(rows)
        gone = [rg for rg, row in rows.items() if row["phase"] == "done"
                and row["member"] is None]
        if gone:
            report["ok"] = False
            report["errors"] = [f"brick {brick.id} is no longer a member of {rg}"
                                for rg in gone]
            return
        if all(_finished(row) for row in rows.values()):
            return
        now = time.monotonic()
        if now >= deadline:
            report["ok"] = False
            report["errors"] = [f"recovery on brick {brick.id} did not finish within "
                                f"{timeout:g}s"] + [
                f"{rg}: phase {row['phase']}, member {row['member']}, attempt "
                f"{row['attempts']}, last error: {row['last_error'] or 'none'}"
                for rg, row in rows.items() if not _finished(row)]
            return
        await pause(reactor, min(POLL_S, deadline - now))
        try:
            status = await _status(reactor, target, brick)
            answered = time.monotonic()
        except DDSError as e:
            if time.monotonic() - answered > UNREACHABLE_GRACE_S:
                report["ok"] = False
                report["errors"] = [f"brick {brick.id} stopped answering for "
                                    f"{UNREACHABLE_GRACE_S:g}s: {describe_error(e)}"]
                return


def render(report: dict[str, Any], console: Console) -> None:
    """The outcome for people: one line per RG, then a summary."""
    brick = report["brick"]
    if not report["waited"]:
        started = ", ".join(report["started"]) or "nothing"
        console.print(f"brick {brick}: recovery started for {started}; follow it with "
                      f"`dds-admin status`")
        return
    if report["rgs"]:
        t = Table(title=f"recovery of brick {brick}", title_justify="left")
        for col in ("group", "phase", "member", "source", "bytes", "copy s", "fenced s",
                    "attempts"):
            t.add_column(col, justify="right" if col in ("bytes", "copy s", "fenced s",
                                                          "attempts") else "left")
        for rg, row in sorted(report["rgs"].items()):
            done = _finished(row)
            colour = "green" if done else "yellow"
            t.add_row(rg, f"[{colour}]{escape(str(row['phase']))}[/{colour}]",
                      escape(str(row["member"])), escape(str(row["source"] or "-")),
                      decimal(int(row["bytes_total"] or 0)), _seconds(row["copy_s"]),
                      _seconds(row["fenced_s"]), str(row["attempts"] or 0))
        console.print(t)
    if report["already_running"]:
        console.print(f"already running, watched: {', '.join(report['already_running'])}")
    if report["ok"]:
        n = len(report["rgs"])
        console.print(f"[green]brick {brick} re-synced {n} replica group(s) in "
                      f"{report['seconds']:.1f}s[/green]" if n else
                      f"brick {brick} is a member of no replica group: nothing to recover")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
