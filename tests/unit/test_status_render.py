"""``dds-admin status`` tables (``tools/status.render``), drawn from a report dict: what
an operator reads, without a cluster."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from dds.tools.status import partition_ids, render


def _brick(bid: str, up: bool = True, **extra: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"id": bid, "address": f"127.0.0.1:{7400 + int(bid[1:])}",
                         "host": bid, "up": up, "retired": False}
    if up:
        b.update(map_version=7, map_fp=0x1234, partitions=2, prepared=0, uptime_s=3.0)
    b.update(extra)
    return b


def _report(bricks: list[dict[str, Any]], ok: bool = True) -> dict[str, Any]:
    members = [{"brick": b["id"], "state": "active", "up": b["up"], "serving": b["up"],
                "own_state": "active", "lease": "valid", "lease_remaining_s": 1.0,
                "blocked": False, "recovery": None} for b in bricks]
    return {"cluster": "dds", "replication": 3, "partitions": 4, "map_fp": 0x1234,
            "map_version": 7, "seed": "127.0.0.1:7401", "bricks": bricks,
            "rgs": [{"name": "rg0", "version": 3, "fp": 0x99, "members": members,
                     "partitions": 3, "last_exclusion": None,
                     "partition_states": {"p2.1": "active", "p3.0": "active",
                                          "p3.4": "incoming"}}],
            "divergence": [], "warnings": [], "ok": ok, "membership_ok": ok}


def _draw(report: dict[str, Any]) -> str:
    console = Console(record=True, width=250, color_system=None)
    render(report, console)
    return console.export_text()


def _row(text: str, first_cell: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"│ {first_cell} "))
    return [cell.strip() for cell in line.strip("│").split("│")]


def _header(text: str, first: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"┃ {first} "))
    return [cell.strip() for cell in line.strip("┃").split("┃")]


def test_replica_groups_table_lists_partition_ids_with_states() -> None:
    text = _draw(_report([_brick("b1"), _brick("b2"), _brick("b3")]))
    header = _header(text, "group")
    row = _row(text, "rg0")
    ids = row[header.index("partition ids")]
    assert ids == "p2.1 p3.0 p3.4 (incoming)"


def test_a_down_bricks_error_has_its_own_column() -> None:
    down = _brick("b2", up=False, error="connection refused")
    text = _draw(_report([_brick("b1"), down, _brick("b3")], ok=False))
    header = _header(text, "brick")
    row = _row(text, "b2")
    assert row[header.index("error")] == "connection refused"
    assert row[header.index("uptime s")] == "-"
    assert row[header.index("state")] == "down"


def test_unhealthy_report_ends_with_not_healthy() -> None:
    text = _draw(_report([_brick("b1"), _brick("b2", up=False, error="x")], ok=False))
    assert "not healthy (exit status 1)" in text
    assert "all bricks up" not in text


def test_partition_ids_beyond_the_limit_are_counted() -> None:
    states = {f"p6.{i}": "active" for i in range(64)}
    text = partition_ids(states, limit=4)
    assert text.startswith("p6.0 p6.1 p6.2 p6.3 ")
    assert "+60 more" in text


def test_partition_ids_are_sorted_by_depth_then_prefix() -> None:
    states = {"p3.5": "active", "p2.0": "active", "p3.1": "active", "p2.2": "active"}
    assert partition_ids(states) == "p2.0 p2.2 p3.1 p3.5"
