"""dds.logs: JSON lines with an ISO 8601 time, and a log file reopened after logrotate
moved it away."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from twisted.logger import LogLevel

from dds.logs import LineObserver, iso_time


def _event(text: str) -> dict[str, object]:
    return {"log_format": text, "log_level": LogLevel.info, "log_time": 1796640000.25,
            "log_namespace": "test"}


def test_a_json_line_carries_its_time_in_iso_8601_utc() -> None:
    out = io.StringIO()
    LineObserver(out, "json", "b1")(_event("hello"))
    line = json.loads(out.getvalue())
    assert line["time"] == iso_time(1796640000.25) == "2026-12-07T10:40:00.250000Z"
    assert line["t"] == 1796640000.25 and line["msg"] == "hello"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["time"])


def test_reopen_writes_to_a_new_file_of_the_same_name(tmp_path: Path) -> None:
    path = tmp_path / "brick.log"
    lines = LineObserver(path.open("a"), "json", "b1", path=str(path))
    lines(_event("before"))
    path.rename(tmp_path / "brick.log.1")           # what logrotate does
    lines(_event("still to the moved file"))
    lines.reopen()
    lines(_event("after"))
    moved = (tmp_path / "brick.log.1").read_text().splitlines()
    fresh = path.read_text().splitlines()
    assert [json.loads(x)["msg"] for x in moved] == ["before", "still to the moved file"]
    assert [json.loads(x)["msg"] for x in fresh] == ["after"]


def test_a_failed_reopen_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "brick.log"
    path.parent.mkdir()
    lines = LineObserver(path.open("a"), "json", "b1", path=str(path))
    path.unlink()
    path.parent.rmdir()
    try:
        lines.reopen()
    except OSError:
        pass
    else:
        raise AssertionError("reopen of a path in a removed directory succeeded")
    lines(_event("kept"))     # no exception: the old file is still open
