"""Errors a user reads name the operation ("get to server timed out after 2s"), never a
wire frame type (``g``, ``copy_begin``): every message class has a ``TITLE``."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import pytest
from twisted.internet.task import Clock

from dds.errors import InternalError, Timeout
from dds.messages import _REGISTRY, GET_COMPACT, Message, title

from tests.protocol.test_rpc import Server, connect
from tests.sim.network import MemoryNetwork


@pytest.fixture
def net() -> MemoryNetwork:
    return MemoryNetwork(Clock())


def test_every_message_type_has_a_title_in_words() -> None:
    assert len(_REGISTRY) > 30
    for mtype, cls in _REGISTRY.items():
        words = title(mtype)
        assert words == cls.TITLE and words, mtype
        assert "_" not in words, (mtype, words)


def test_the_compact_get_is_titled_get() -> None:
    assert title(GET_COMPACT) == "get"
    assert title("get") == "get"


def test_an_unknown_type_is_quoted_not_passed_off_as_an_operation() -> None:
    assert title("zz") == "'zz' request"


def test_a_message_class_without_a_title_is_refused_at_definition() -> None:
    with pytest.raises(TypeError, match="has no TITLE"):
        @attrs.frozen
        class Untitled(Message):
            TYPE: ClassVar[str] = "untitled_for_test"
    assert "untitled_for_test" not in _REGISTRY


def test_a_compact_get_that_times_out_says_get(net: MemoryNetwork) -> None:
    Server(net, hold=True)
    client = net.run(connect(net))
    d = client.call(GET_COMPACT, ["p0.0", "rg0", 1, 1, b"k"], timeout=2.0)
    net.advance(2.0)
    error = net.fail_of(d, timeout=0)
    assert isinstance(error, Timeout)
    assert error.message == "get to server timed out after 2s"


def test_a_prepare_that_times_out_says_write(net: MemoryNetwork) -> None:
    Server(net, hold=True)
    client = net.run(connect(net))
    d = client.call("prepare", {}, timeout=1.5)
    net.advance(1.5)
    error = net.fail_of(d, timeout=0)
    assert error.message.startswith("write (prepare) to server timed out")


def test_an_internal_error_names_the_operation(net: MemoryNetwork) -> None:
    server = Server(net)

    def broken(mtype: str, body: Any, conn: Any) -> Any:
        raise ValueError("boom")
    server.handle = broken  # type: ignore[method-assign]
    client = net.run(connect(net))
    d = client.call("copy_begin", {}, timeout=2.0)
    net.flush()
    error = net.fail_of(d, timeout=0)
    assert isinstance(error, InternalError)
    assert error.message.startswith("partition copy (begin): ValueError: boom"), error.message
