"""What the benches' tables share when they render a result (``--json`` prints the
result itself, through :func:`dds.tools.ui.show`)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

__all__ = ["cpu_text", "met", "num", "table"]


def table(*columns: str, title: str | None = None) -> Table:
    """A table of figures: the first column names the rows (left), the others are
    numbers (right)."""
    t = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    return t


def met(ok: bool) -> str:
    """A target's verdict, coloured."""
    return "[green]yes[/green]" if ok else "[red]no[/red]"


def num(value: Any, fmt: str) -> str:
    """``value`` formatted, or ``-`` when there is none."""
    return "-" if value is None else format(value, fmt)


def cpu_text(cpu_s: dict[str, float]) -> str:
    """CPU seconds per process, ``b1 1.2, b2 0.8``."""
    return ", ".join(f"{b} {s:.1f}" for b, s in sorted(cpu_s.items()))
