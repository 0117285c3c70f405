"""Where the progress of ``dds-admin scrub`` goes: nothing (``--json``), or bars and a
line per finding on stderr."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

from dds.tools import recover as recover_mod
from dds.tools.scrub.compare import PartitionResult, finding

__all__ = ["View", "QuietView", "ProgressView"]


class View(Protocol):
    """Where progress goes while the command works."""

    def begin(self, title: str, count: int) -> None: ...

    def phase(self, pid: str, text: str) -> None: ...

    def done(self, result: PartitionResult) -> None: ...

    def end(self) -> None: ...

    def note(self, text: str) -> None: ...

    def fix_view(self, brick: str) -> recover_mod.View: ...


class QuietView:
    """No progress at all (``--json``: stdout gets the one final object, nothing else)."""

    def begin(self, title: str, count: int) -> None:
        pass

    def phase(self, pid: str, text: str) -> None:
        pass

    def done(self, result: PartitionResult) -> None:
        pass

    def end(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def fix_view(self, brick: str) -> recover_mod.View:
        return recover_mod.QuietView()


class ProgressView:
    """On a terminal: an overall bar (bytes checked, rate, time left, estimated from the
    partitions done so far) and a line per partition being scrubbed, with its phase.
    Everywhere: a line per partition whose replicas differ or could not be compared, so
    a log that is not a terminal still shows the findings as they come."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.total: TaskID | None = None
        self.tasks: dict[str, TaskID] = {}
        self.count = self.finished = self.checked_bytes = 0
        self.title = ""

    def begin(self, title: str, count: int) -> None:
        self.end()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(),
                                 TimeRemainingColumn(), console=self.console,
                                 disable=not self.console.is_terminal)
        self.title, self.count, self.finished, self.checked_bytes = title, count, 0, 0
        self.tasks = {}
        self.total = self.progress.add_task(self._total_text(), total=None)
        self.progress.start()

    def _total_text(self) -> str:
        return f"{self.title}: {self.finished}/{self.count} partitions"

    def phase(self, pid: str, text: str) -> None:
        if self.progress is None:
            return
        task = self.tasks.get(pid)
        if task is None:
            task = self.tasks[pid] = self.progress.add_task("", total=None)
        self.progress.update(task, description=f"  {pid} {text}")

    def done(self, result: PartitionResult) -> None:
        if self.progress is not None and self.total is not None:
            task = self.tasks.pop(result.pid, None)
            if task is not None:
                self.progress.remove_task(task)
            self.finished += 1
            self.checked_bytes += result.bytes
            left = self.count - self.finished
            estimate = self.checked_bytes + (self.checked_bytes // self.finished) * left
            self.progress.update(self.total, completed=self.checked_bytes,
                                 total=max(estimate, 1) if left else
                                 max(self.checked_bytes, 1),
                                 description=self._total_text())
            if not left:
                self.progress.update(self.total, completed=max(self.checked_bytes, 1))
        line = finding(result)
        if result.state != "clean" and line:
            colour = "red" if result.state == "error" or result.majority is None else "yellow"
            self.console.print(f"[{colour}]{escape(line)}[/{colour}]")

    def end(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{escape(text)}[/dim]")

    def fix_view(self, brick: str) -> recover_mod.View:
        return recover_mod.ProgressView(self.console, brick)

