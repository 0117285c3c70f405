"""The library's change cursor (``lib/changes.py``): what it accepts before any I/O and
how it reads a brick's reply."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from dds.errors import InvalidRequest, ProtocolError
from dds.lib.changes import ChangeCursor


def _cursor(position: str | None = None, **kw: Any) -> ChangeCursor:
    return ChangeCursor(SimpleNamespace(timeout=5.0), "p2.1", position,  # type: ignore[arg-type]
                        **kw)


def test_a_page_reply_becomes_changes_and_moves_the_position() -> None:
    cursor = _cursor()
    page = cursor._took({"changes": [[b"k", None, 3, "pos1"]], "position": "pos2",
                         "more": True, "translated": "exact"}, "b1")
    assert [(c.key, c.value, c.version, c.position) for c in page.changes] == [
        (b"k", None, 3, "pos1")]
    assert page.more and cursor.position == "pos2" and cursor.brick == "b1"


def test_a_malformed_reply_is_a_protocol_error_naming_the_brick() -> None:
    with pytest.raises(ProtocolError, match="from b2 is malformed"):
        _cursor()._took({"changes": [[b"k", 5, "3", "pos"]], "position": "p"}, "b2")
    with pytest.raises(ProtocolError, match="from b2 is malformed"):
        _cursor()._took({"changes": [[b"k"]]}, "b2")


def test_an_ended_reply_keeps_the_position_and_names_the_successors() -> None:
    cursor = _cursor("now")
    page = cursor._took({"changes": [], "position": "now", "ended": True,
                         "successors": ["p3.1", "p3.5"]}, "b1")
    assert page.ended and page.successors == ("p3.1", "p3.5")
    assert cursor.ended == ("p3.1", "p3.5") and cursor.position == "now"


def test_a_damaged_start_position_is_refused_before_any_io() -> None:
    with pytest.raises(InvalidRequest, match="change position"):
        _cursor("AAAAAAAA")
