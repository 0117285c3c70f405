"""A scrub report drawn for people: each partition that differs with its keys, the
fixes, and a summary."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

from dds.tools.scrub.compare import MAX_KEYS_KEPT, MAX_KEYS_SHOWN, groups_text
from dds.tools.keytext import cut

__all__ = ["render"]


def _state_cell(state: dict[str, Any] | None) -> str:
    if state is None:
        return "[dim]absent[/dim]"
    if state["tombstone"]:
        return f"v{state['version']} removed"
    return f"v{state['version']} #{state['value_hash'][:8]}"


def _key_note(k: dict[str, Any]) -> str:
    if k["divergent"]:
        return "[red]diverged: same version, different value[/red]"
    absent = [b for b, state in k["replicas"].items() if state is None]
    return f"absent on {' '.join(absent)}" if absent else "versions differ"


def render(report: dict[str, Any], console: Console) -> None:
    """The outcome for people: each partition that differs with its keys, the fixes, and
    a summary."""
    for p in report["partitions"]:
        if p["state"] == "clean":
            continue
        if p["state"] == "error":
            console.print(f"[red]{p['pid']} ({p['rg']}): not compared[/red]")
            continue
        if p["damaged"]:
            console.print(f"[red]{p['pid']} ({p['rg']}): the replica of "
                          f"{' '.join(p['damaged'])} is damaged (unreadable): set aside by "
                          "its brick, which copies it again from the RG[/red]")
            if p["state"] == "damaged":
                if p["fixed"] is not None:
                    console.print("  [green]fixed: the replicas agree now[/green]"
                                  if p["fixed"] else "  [red]not fixed[/red]")
                continue
        note = (f"{len(p['differing_buckets'])} of {report['buckets']} bucket(s) differ "
                f"(seen twice, {report['recheck_pause_s']:g}s apart)")
        who = (f"majority {' '.join(p['majority'])}, minority {' '.join(p['minority'])}"
               if p["majority"] is not None else
               f"[red]no majority[/red] (groups: {escape(groups_text(p['groups']))})")
        console.print(f"[bold]{p['pid']}[/bold] ({p['rg']}: {' '.join(p['members'])}): "
                      f"{p['keys_total']} key(s) differ; {note}; {who}")
        if p["keys"]:
            t = Table(title_justify="left")
            t.add_column("key")
            for m in p["members"]:
                t.add_column(m)
            t.add_column("")
            for k in p["keys"][:MAX_KEYS_SHOWN]:
                t.add_row(escape(cut(k["key"])), *[_state_cell(k["replicas"][m])
                                                     for m in p["members"]],
                          _key_note(k))
            console.print(t)
            if p["keys_total"] > MAX_KEYS_SHOWN:
                console.print(f"  ... and {p['keys_total'] - MAX_KEYS_SHOWN} more key(s) "
                              f"(--json lists up to {MAX_KEYS_KEPT})")
        unlisted = len(p["differing_buckets"]) - len(p["listed_buckets"])
        if unlisted > 0:
            console.print(f"  keys of {unlisted} more differing bucket(s) not listed")
        if p["fixed"] is not None:
            console.print("  [green]fixed: the replicas agree now[/green]" if p["fixed"]
                          else "  [red]not fixed[/red]")
    for f in report["fixes"]:
        if f["refused"]:
            continue
        how = (f"re-copied {decimal(f['bytes'])} from {f.get('source') or '?'} in "
               f"{f['seconds']:.1f}s" if f["ok"] else "re-copy failed")
        console.print(f"{f['rg']}: {f['brick']}: {how}")
    inactive = sorted({(p["rg"], b, state) for p in report["partitions"]
                       for b, state in p["inactive"].items()})
    for rg, brick, state in inactive:
        console.print(f"[yellow]{brick} is {state} in {rg}: its replicas were not "
                      "compared[/yellow]")
    n = report["partitions_checked"]
    settled = report["buckets_settled"]
    if settled:
        console.print(f"[dim]{settled} bucket(s) differed at first and agreed when checked "
                      f"again {report['recheck_pause_s']:g}s later (writes in flight)[/dim]")
    summary = (f"{n} partition(s), {decimal(report['bytes'])} checked in "
               f"{report['seconds']:.1f}s")
    if report["ok"] and not report["partitions_differing"] and \
            not report["partitions_damaged"]:
        console.print(f"[green]all replicas agree: {summary}[/green]")
    elif report["ok"]:
        console.print(f"[green]{report['partitions_fixed']} partition(s) fixed; all "
                      f"replicas agree now: {summary}[/green]")
    else:
        parts = []
        if report["partitions_differing"]:
            parts.append(f"{report['partitions_differing']} partition(s) differ "
                         f"({report['keys_differing']} key(s), {report['keys_divergent']} "
                         "divergent)")
        if report["partitions_damaged"]:
            parts.append(f"{report['partitions_damaged']} partition(s) with a damaged "
                         "replica")
        if report["partitions_unchecked"]:
            parts.append(f"{report['partitions_unchecked']} could not be compared")
        hint = "" if report["fix"] or not (report["partitions_differing"]
                                           or report["partitions_damaged"]) else \
            "; `dds-admin scrub --fix` re-copies a minority replica"
        console.print(f"[red]{'; '.join(parts) or 'not fixed'}: {summary}{hint}[/red]")
