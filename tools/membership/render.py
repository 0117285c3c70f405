"""A membership report (plan, outcomes) drawn for people."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

from dds.tools.membership.plan import Change

__all__ = ["render_plan", "render_report"]


def render_plan(report: Mapping[str, Any], console: Console) -> None:
    """The plan: its changes, then the load of every brick before and after."""
    plan = report["plan"]
    changes = report["changes"]
    if changes:
        if report["dry_run"]:
            console.print("dry run: nothing is changed")
        t = Table(title=f"{report['kind']} plan", title_justify="left")
        for col in ("#", "group", "change", "partitions", "bytes"):
            t.add_column(col, justify="right" if col in ("#", "partitions", "bytes")
                         else "left")
        if "outcome" in changes[0]:
            t.add_column("outcome")
        for i, c in enumerate(changes, 1):
            change = Change.from_json(c)
            text = {"replace": f"{c['old']} → {c['new']}", "add": f"+ {c['new']}",
                    "remove": f"− {c['old']}",
                    "move": f"move {c.get('pid')} to {c.get('to_rg')}",
                    "create": "new group: " + " ".join(c.get("members", []))
                    }[change.kind]
            row = [str(i), escape(c["rg"]), escape(text), str(c["partitions"]),
                   decimal(int(c["bytes"])) if change.kind in ("replace", "add", "move")
                   else "-"]
            if "outcome" in c:
                colour = "green" if c["outcome"] == "done" else "yellow"
                row.append(f"[{colour}]{escape(c['outcome'])}[/{colour}]")
            t.add_row(*row)
        console.print(t)
    else:
        console.print("nothing to change: the layout is as level as member choice makes "
                      "it" if not plan["problems"] else "no change can be planned")
    before, after = plan["loads_before"], plan["loads_after"]
    if before or after:
        t = Table(title="partitions per brick", title_justify="left")
        for col in ("brick", "before", "after"):
            t.add_column(col, justify="left" if col == "brick" else "right")
        lo, hi = plan["mean"] - 1, plan["mean"] + 1
        for b in sorted({*before, *after}, key=lambda b: (len(b), b)):
            a = after.get(b, 0)
            colour = "green" if lo - 1e-9 <= a <= hi + 1e-9 or a == 0 and b not in after \
                else "yellow"
            t.add_row(b, str(before.get(b, 0)), f"[{colour}]{a}[/{colour}]")
        console.print(t)
    console.print(f"mean {plan['mean']:.2f} partitions per brick, target {plan['target']}")
    console.print(f"{len(changes)} change(s), {decimal(plan['bytes'])} to copy"
                  + ("" if plan["reached"] else " (target not reachable: see notes)"))
    if report.get("rate_mb_s") is not None:
        rate = report["rate_mb_s"]
        console.print("copy rate of each move: " + (f"at most {rate} MB/s" if rate
                                                    else "unlimited"))
    for note in plan["notes"]:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    for problem in plan["problems"]:
        console.print(f"[red]refused:[/red] {escape(problem)}", soft_wrap=True)


def render_report(report: Mapping[str, Any], console: Console) -> None:
    render_plan(report, console)
    if report["dry_run"] or report["job"] is None:
        return
    done = sum(1 for c in report["changes"] if c.get("outcome") == "done")
    line = (f"job {report['job']}: {done} of {len(report['changes'])} change(s) done, "
            f"{decimal(report['copied_bytes'])} copied in {report['seconds']:.1f}s")
    if report.get("retired"):
        line += f"; retired {', '.join(report['retired'])} (stop them)"
    if report["cancelled"]:
        line += " — cancelled"
    console.print(f"[green]{line}[/green]" if report["ok"] else line)
