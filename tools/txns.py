"""``dds-admin txns``: the transactions each brick holds, and which of them are in doubt.

A transaction is **in doubt** on a brick when the brick holds it prepared (it voted YES)
past its deadline: its coordinator has given up on it, and termination (DESIGN §4) has not
decided it yet, usually because another member of the group could not be asked.  The
bricks answer the ``txns`` request with every active transaction; this module keeps the
in-doubt ones (or all of them, ``--all``).  :func:`collect` builds the report (what
``--json`` prints); :func:`render` draws it, a table per brick.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dds.config import format_address
from dds.messages import Txns
from dds.tools.cluster import Answer, Target, ask, describe_error, fetch_map, gather
from dds.tools.keytext import cut, key_text

__all__ = ["collect", "render", "key_text", "txid_text", "is_in_doubt", "brick_txns",
           "cut"]

def txid_text(txid: list[int] | tuple[int, int]) -> str:
    """``library id:counter``, as the bricks' log lines print the pair."""
    return f"{txid[0]}:{txid[1]}"


def is_in_doubt(txn: dict[str, Any]) -> bool:
    return txn["state"] == "prepared" and bool(txn["deadline_passed"])


def _entry(t: dict[str, Any]) -> dict[str, Any]:
    """One transaction of a brick's reply, made JSON-friendly (the key as text and hex)."""
    key: bytes = t["key"]
    return {
        "txid": list(t["txid"]), "txid_text": txid_text(t["txid"]), "pid": t["pid"],
        "key": key_text(key), "key_hex": key.hex(), "op": t["op"], "state": t["state"],
        "age_s": round(float(t["age_s"]), 3),
        "deadline_s": None if t["deadline_s"] is None else round(float(t["deadline_s"]), 3),
        "due_in_s": None if t["due_in_s"] is None else round(float(t["due_in_s"]), 3),
        "deadline_passed": bool(t["deadline_passed"]), "in_doubt": is_in_doubt(t),
        "new_version": t["new_version"],
    }


async def _txns_of(reactor: Any, host: str, port: int, target: Target,
                   timeout: float) -> Answer:
    return await ask(reactor, host, port, target, Txns(), timeout)


async def brick_txns(reactor: Any, target: Target, timeout: float = 5.0
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every brick of the map with every transaction it holds:
    ``({"cluster", "seed"}, [{"id", "address", "up", "error"?, "txns": [...]}, ...])``."""
    cmap, seed = await fetch_map(reactor, target, timeout)
    addresses = [(b.id, b.address, b.port)
                 for b in sorted(cmap.bricks.values(), key=lambda r: (len(r.id), r.id))]
    replies = await gather(_txns_of(reactor, h, p, target, timeout) for _b, h, p in addresses)
    bricks: list[dict[str, Any]] = []
    for (bid, host, port), r in zip(addresses, replies):
        entry: dict[str, Any] = {"id": bid, "address": format_address(host, port), "up": False,
                                 "txns": [],
                                 "retired": cmap.bricks[bid].host.startswith("retired:")}
        if isinstance(r, BaseException):
            entry["error"] = describe_error(r)
        elif r.peer != bid:
            entry["error"] = f"answers as {r.peer!r}"
        else:
            entry["up"] = True
            entry["txns"] = [_entry(t) for t in r.reply.get("txns", [])]
        bricks.append(entry)
    cluster = cmap.cluster
    return {"cluster": cluster.name if cluster else None, "seed": seed}, bricks


async def collect(reactor: Any, target: Target, timeout: float = 5.0,
                  show_all: bool = False) -> dict[str, Any]:
    """The ``txns`` report: per brick, its in-doubt transactions (every active one with
    ``show_all``), and the totals."""
    head, bricks = await brick_txns(reactor, target, timeout)
    for b in bricks:
        b["active"] = len(b["txns"])
        b["in_doubt"] = sum(1 for t in b["txns"] if t["in_doubt"])
        if not show_all:
            b["txns"] = [t for t in b["txns"] if t["in_doubt"]]
    return {
        **head, "all": show_all, "bricks": bricks,
        "active": sum(b["active"] for b in bricks),
        "in_doubt": sum(b["in_doubt"] for b in bricks),
        "unreachable": [b["id"] for b in bricks if not b["up"]],
    }


def _age(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


def _deadline(t: dict[str, Any]) -> str:
    due = t["due_in_s"]
    if due is None:
        return "-"
    return f"passed {_age(-due)} ago" if t["deadline_passed"] else f"in {_age(due)}"


def render(report: dict[str, Any], console: Console) -> None:
    for b in report["bricks"]:
        if not b["up"]:
            console.print(f"[red]{b['id']} ({b['address']}): not reachable: "
                          f"{escape(b.get('error', ''))}[/red]")
            continue
        if not b["txns"]:
            continue
        t = Table(title=f"{b['id']} ({b['address']})", title_justify="left")
        for col in ("txid", "partition", "key", "op", "state", "age", "deadline"):
            t.add_column(col, justify="right" if col == "age" else "left")
        for x in b["txns"]:
            state = "[red]prepared, in doubt[/red]" if x["in_doubt"] else x["state"]
            t.add_row(x["txid_text"], x["pid"], escape(cut(x["key"])), x["op"], state,
                      _age(x["age_s"]), _deadline(x))
        console.print(t)
    n, active = report["in_doubt"], report["active"]
    holders = sum(1 for b in report["bricks"] if b.get("in_doubt"))
    if n:
        console.print(f"[bold red]{n} in-doubt transaction(s) on {holders} brick(s)"
                      f"[/bold red]; `dds-admin repair` resolves them by the termination "
                      f"rule")
    elif active:
        console.print(f"no in-doubt transactions ({active} active, within their deadline)")
    else:
        console.print("no in-doubt transactions" + (" (none active)" if report["all"] else ""))
    if report["unreachable"]:
        console.print(f"[red]{len(report['unreachable'])} brick(s) not reachable, not "
                      f"listed: {', '.join(report['unreachable'])}[/red]")
