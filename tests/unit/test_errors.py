"""Errors rebuilt from the wire: a peer's error body of any shape becomes a DDSError, never
an exception of Python's own (which would escape as a critical traceback)."""

from __future__ import annotations

from typing import Any

import pytest

from dds.errors import (DDSError, PermissionDenied, ProtocolError, StaleMap, from_wire)


def test_a_known_code_rebuilds_its_class_with_message_and_data() -> None:
    error = from_wire(StaleMap("behind", ["rg", "rg0", 3]).to_wire())
    assert isinstance(error, StaleMap)
    assert (error.message, error.data) == ("behind", ["rg", "rg0", 3])


def test_permission_denied_crosses_the_wire_as_itself() -> None:
    error = from_wire(PermissionDenied("permission denied: 'status'").to_wire())
    assert isinstance(error, PermissionDenied) and not error.retryable


@pytest.mark.parametrize("body", [
    {"code": []}, {"code": {}}, {"code": 7}, {"code": None}, {"code": b"stale_map"},
    {"code": "stale_map", "msg": ["not", "text"]}, {},
])
def test_an_error_body_of_any_shape_becomes_a_dds_error(body: dict[str, Any]) -> None:
    error = from_wire(body)
    assert isinstance(error, DDSError)


@pytest.mark.parametrize("body", [[], "err", 3, None, b"x"])
def test_an_error_that_is_not_a_map_is_a_protocol_error(body: Any) -> None:
    assert isinstance(from_wire(body), ProtocolError)
