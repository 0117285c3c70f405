"""What every dds-admin command shares (``tools/cli.py``, ``tools/ui.py``): the cluster
target declared and resolved once, errors as ``error:`` lines, one way to print a result."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from dds.tools import ui
from dds.tools.cli import cluster_target, cluster_target_resolver
from dds.tools.cluster import Target
from dds.tools.runner import AdminError

SECRET = "s" * 32


def command_seeing_the_target(seen: list[Target]) -> click.Command:
    @click.command()
    @cluster_target
    @click.option("--json", "as_json", is_flag=True)
    def cmd(target: Target, as_json: bool) -> None:
        seen.append(target)
    return cmd


def test_the_command_gets_the_target_the_options_name() -> None:
    seen: list[Target] = []
    result = CliRunner().invoke(command_seeing_the_target(seen),
                                ["--seeds", "10.0.0.1:7000,10.0.0.2:7001", "--cluster", "c1"],
                                env={"DDS_ADMIN_SECRET": SECRET})
    assert result.exit_code == 0, result.output
    assert seen[0].seeds == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert seen[0].cluster == "c1" and seen[0].credentials.role == "admin"


def test_a_target_that_cannot_be_resolved_is_an_error_line_and_status_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[Target] = []
    with pytest.raises(SystemExit) as stop:
        command_seeing_the_target(seen).main(["--dir", str(tmp_path / "none")],
                                             standalone_mode=False)
    assert stop.value.code == 1 and seen == []
    assert f"error: no local cluster in {tmp_path / 'none'}" in capsys.readouterr().err


def test_the_resolver_form_resolves_only_when_asked(tmp_path: Path) -> None:
    calls: list[Callable[[], Target]] = []

    @click.command()
    @cluster_target_resolver
    def cmd(resolve_target: Callable[[], Target]) -> None:
        calls.append(resolve_target)

    result = CliRunner().invoke(cmd, ["--dir", str(tmp_path / "none")])
    assert result.exit_code == 0 and len(calls) == 1
    with pytest.raises(AdminError, match="no local cluster"):
        calls[0]()


def test_show_prints_one_json_object_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    drawn: list[Any] = []
    ui.show({"ok": True, "n": 2}, lambda r, c: drawn.append(r), True)
    assert json.loads(capsys.readouterr().out) == {"ok": True, "n": 2} and drawn == []


def test_show_renders_for_people_without_json() -> None:
    drawn: list[tuple[Any, Console]] = []
    ui.show({"ok": True}, lambda r, c: drawn.append((r, c)), False)
    assert drawn == [({"ok": True}, ui.out)]
