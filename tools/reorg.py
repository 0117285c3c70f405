"""What ``move``, ``split`` and ``merge`` have in common for the operator: the report
(``--json``), its rendering, the size of what a job works on, and the progress display.

One report for the three, so that the same thing has the same name (``fence_s``, the
write pause, on all three):

- ``kind`` (``move``, ``split``, ``merge``), ``job`` (null with ``--dry-run``),
  ``dry_run``, ``result`` (``planned`` with ``--dry-run``, ``done`` once finished);
- ``pid`` (the argument), ``sources`` and ``targets``: partition ids before and after
  (a move: the same one), ``from_rg`` and ``to_rg`` (split, merge: the same group),
  ``from_bricks`` and ``to_bricks``: the active members that hold them before and after;
- ``bytes``: key + value bytes of the sources, as one active member reports them
  (``range_checksums``, one bucket: a scan in the brick's thread pool; null when no
  member answered); ``seconds`` (the whole job) and ``fence_s`` (how long writes to the
  partition were paused; 0 with ``--dry-run``).

Each command adds its own fields (a move: ``source``, ``target_bricks``,
``copied_bytes``, ``rate_mb_s``; split and merge: ``members``, ``leader``, ``left_out``,
``rows``, ``keys``, ``state``, ``warnings``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress,
                           SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

from dds.errors import DDSError
from dds.messages import Message, RangeChecksums
from dds.tools.runner import AdminError

__all__ = ["View", "QuietView", "ProgressView", "report", "measure", "render"]

#: Seconds one member may take to scan a partition for its size.
SIZE_TIMEOUT_S = 120.0
#: Off a terminal, a progress line each time this fraction more is done.
LINE_EVERY = 0.25


class Caller(Protocol):
    async def send(self, brick: str, msg: Message,
                   timeout: float = ...) -> dict[str, Any]: ...


async def measure(editor: Caller, pids: Iterable[str], members: Iterable[str]) -> int | None:
    """Key + value bytes of ``pids`` from the first of ``members`` that answers for all
    of them; None when none does (the report says so rather than guess)."""
    pids = list(pids)
    for brick in members:
        try:
            total = 0
            for pid in pids:
                reply = await editor.send(brick, RangeChecksums(pid=pid, buckets=1),
                                          SIZE_TIMEOUT_S)
                total += int(reply.get("bytes", 0))
            return total
        except (DDSError, AdminError):
            continue
    return None


def report(kind: str, *, job: str | None, pid: str, sources: list[str], targets: list[str],
           from_rg: str, to_rg: str, from_bricks: list[str], to_bricks: list[str],
           data_bytes: int | None, seconds: float = 0.0, fence_s: float = 0.0,
           **extra: Any) -> dict[str, Any]:
    """The fields every reorganization reports (module docstring), then ``extra``."""
    dry_run = job is None
    return {"kind": kind, "job": job, "dry_run": dry_run,
            "result": "planned" if dry_run else "done", "pid": pid,
            "sources": list(sources), "targets": list(targets), "from_rg": from_rg,
            "to_rg": to_rg, "from_bricks": list(from_bricks), "to_bricks": list(to_bricks),
            "bytes": data_bytes, "seconds": round(seconds, 3), "fence_s": round(fence_s, 3),
            **extra}


def _size(n: int | None) -> str:
    return "size unknown" if n is None else f"{decimal(n)} of keys and values"


def render(result: dict[str, Any], console: Console) -> None:
    """One line for people: the plan (``--dry-run``) or what was done."""
    r = result
    src, dst = " + ".join(r["sources"]), " + ".join(r["targets"])
    what = (f"{r['pid']} from {r['from_rg']} to {r['to_rg']}" if r["kind"] == "move"
            else f"{src} into {dst} in {r['from_rg']}")
    if r["dry_run"]:
        verb = {"move": "would move", "split": "would split", "merge": "would merge"}[r["kind"]]
        how = (f"copied from {r.get('source')} to {', '.join(r['to_bricks'])}"
               if r["kind"] == "move" else
               f"built by {', '.join(r['from_bricks'])}, nothing copied between bricks")
        console.print(f"{verb} {escape(what)} ({_size(r['bytes'])}; {escape(how)}); "
                      f"writes to it pause for the cut-over only. Nothing was changed "
                      f"(--dry-run).", soft_wrap=True)
        return
    verb = {"move": "moved", "split": "split", "merge": "merged"}[r["kind"]]
    detail = ""
    if r["kind"] == "move":
        detail = f", {r.get('copied_bytes', 0):,} bytes copied"
    elif r.get("keys"):
        detail = " (" + ", ".join(f"{t}: {n:,} keys"
                                  for t, n in sorted(r["keys"].items())) + ")"
    console.print(f"{verb} {escape(what)}{escape(detail)} in {r['seconds']:.2f}s, writes "
                  f"paused {r['fence_s']:.3f}s (job {escape(str(r['job']))})",
                  soft_wrap=True)


# -- progress --------------------------------------------------------------------------------

class View(Protocol):
    """Where a job's progress goes: its steps, and how much of its copy (bytes, a move)
    or build (rows, a split or merge) is done."""

    def step(self, text: str) -> None: ...

    def progress(self, done: int, total: int) -> None: ...

    def end(self) -> None: ...


class QuietView:
    """Nothing (``--json``: stdout gets the one final object)."""

    def step(self, text: str) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        pass

    def end(self) -> None:
        pass


class ProgressView:
    """As ``recover``'s: on a terminal a live bar (bytes, rate and time left for a move's
    copy; rows for a build) under the step lines; elsewhere plain lines only, a step per
    line and the progress every quarter, so a log shows how the job went."""

    def __init__(self, console: Console, unit: str, what: str) -> None:
        self.console = console
        self.unit = unit
        self.what = what
        self.live = console.is_terminal
        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
        columns += ([DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
                    if unit == "bytes" else [MofNCompleteColumn(), TimeElapsedColumn()])
        self.bar = Progress(*columns, console=console, transient=True,
                            disable=not self.live)
        self.task: TaskID | None = None
        self.shown = -1.0

    def step(self, text: str) -> None:
        self.console.print(f"[dim]{escape(text)}[/dim]", soft_wrap=True)

    def progress(self, done: int, total: int) -> None:
        if total <= 0 and done <= 0:        # the targets held it already: no copy
            if self.shown < 1.0:
                self.shown = 1.0
                self.step(f"{self.what}: nothing to copy")
            return
        total = max(total, done)
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(self.what, total=total)
        self.bar.update(self.task, completed=done, total=total)
        if not self.live:
            fraction = done / total
            mark = int(fraction / LINE_EVERY) * LINE_EVERY
            if mark > self.shown:
                self.shown = mark
                amount = (f"{decimal(done)}/{decimal(total)}" if self.unit == "bytes"
                          else f"{done:,}/{total:,} {self.unit}")
                self.step(f"{self.what}: {100 * fraction:.0f}% ({amount})")

    def end(self) -> None:
        if self.task is not None:
            self.bar.stop()
            self.task = None
