"""Where the progress of a membership job goes: nothing (``--json``), or bars and a line
per event on stderr."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

from dds.tools.membership.plan import Change

__all__ = ["View", "QuietView", "ProgressView"]


class View(Protocol):
    """Where progress goes while a plan runs."""

    def begin(self, title: str, changes: list[Change]) -> None: ...

    def event(self, i: int, change: Change, what: str) -> None: ...

    def copy(self, i: int, change: Change, row: Mapping[str, Any]) -> None: ...

    def end(self) -> None: ...


class QuietView:
    """Nothing (``--json``: stdout gets the one final object)."""

    def begin(self, title: str, changes: list[Change]) -> None:
        pass

    def event(self, i: int, change: Change, what: str) -> None:
        pass

    def copy(self, i: int, change: Change, row: Mapping[str, Any]) -> None:
        pass

    def end(self) -> None:
        pass


class ProgressView:
    """On a terminal: an overall bar (planned bytes, rate, time left) and a bar per copy
    in flight (the new member's recovery: bytes, rate, time left).  Everywhere: a line
    per event of each change, so a log that is not a terminal shows how it went."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.total: TaskID | None = None
        self.tasks: dict[int, TaskID] = {}
        self.changes: list[Change] = []
        self.fraction: dict[int, float] = {}
        self.shown: dict[int, int] = {}
        self.finished = 0
        self.title = ""

    def begin(self, title: str, changes: list[Change]) -> None:
        self.end()
        self.title, self.changes, self.fraction, self.finished = title, changes, {}, 0
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(),
                                 TimeRemainingColumn(), console=self.console,
                                 disable=not self.console.is_terminal)
        planned = sum(c.bytes for c in changes if c.new)
        self.total = self.progress.add_task(self._title(), total=max(planned, 1))
        self.tasks = {}
        self.progress.start()

    def _title(self) -> str:
        return f"{self.title}: {self.finished}/{len(self.changes)} changes"

    def _update_total(self) -> None:
        if self.progress is None or self.total is None:
            return
        done = sum(self.changes[i].bytes * f for i, f in self.fraction.items()
                   if i < len(self.changes))
        self.progress.update(self.total, completed=int(done), description=self._title())

    def event(self, i: int, change: Change, what: str) -> None:
        self.console.print(f"[dim]#{i} {escape(change.text())}: {escape(what)}[/dim]")
        if what in ("done", "rolled back", "failed", "not started"):
            self.finished += 1
            self.fraction[i] = 1.0
            if self.progress is not None and i in self.tasks:
                self.progress.remove_task(self.tasks.pop(i))
            self._update_total()

    def copy(self, i: int, change: Change, row: Mapping[str, Any]) -> None:
        if self.progress is None:
            return
        total, done = int(row.get("bytes_total") or 0), int(row.get("bytes_done") or 0)
        task = self.tasks.get(i)
        if task is None:
            task = self.tasks[i] = self.progress.add_task("", total=None)
        elif done < self.shown.get(i, 0):
            self.progress.reset(task)               # a new attempt: the rate starts over
        self.shown[i] = done
        phase = row.get("phase") or "joining"
        self.progress.update(task, total=total or None, completed=done,
                             description=f"  #{i} {change.rg} → {change.new} {phase}")
        if total:
            self.fraction[i] = min(1.0, done / total) * 0.95
            self._update_total()

    def end(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

