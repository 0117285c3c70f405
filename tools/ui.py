"""Terminal output shared by the admin commands: results on stdout, progress and
diagnostics on stderr (so ``--json`` output stays one clean JSON object)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                           TextColumn, TimeElapsedColumn)

R = TypeVar("R")

__all__ = ["out", "err", "progress", "print_json", "show", "say"]

#: Wide when not a terminal, so that piped tables keep whole addresses and fingerprints.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def progress(transient: bool = True) -> Progress:
    """A live progress display on stderr; disabled when stderr is not a terminal (a log
    gets the one-line summaries the commands print instead of redraw debris)."""
    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"),
                    BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=transient, disable=not err.is_terminal)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def show(result: R, render: Callable[[R, Console], None], as_json: bool) -> None:
    """A command's result: one JSON object on stdout with ``--json``, else ``render``
    drawing it for people on stdout.  The one way commands print a result."""
    if as_json:
        print_json(result)
    else:
        render(result, out)


def say(text: str) -> None:
    """A progress note on stderr."""
    err.print(f"[dim]{escape(text)}[/dim]")
