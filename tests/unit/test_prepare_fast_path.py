"""The brick's hot path checks a PREPARE body by hand (``bricks/server.py``
``_prepare_body_ok``, no attrs instance per write); ``dds.messages.Prepare`` declares the
same checks.  Nothing but this test ties the two: on generated bodies (as msgpack decodes
them: lists, never tuples), the fast path accepts exactly what ``Prepare`` accepts."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dds.bricks.server import _prepare_body_ok
from dds.messages import OPS, Prepare

FIELDS = [f.name for f in attrs.fields(Prepare)]

_int_edges = st.sampled_from([0, 1, 600_000, 600_001, (1 << 32) - 1, 1 << 32,
                              (1 << 64) - 1, 1 << 64, -1])
_ints = st.one_of(st.integers(0, 1000), st.integers(-(1 << 70), 1 << 70), _int_edges)
_pair = st.lists(st.integers(-(1 << 63), (1 << 64) - 1), min_size=2, max_size=2)
#: Wrong types and shapes (bools aside: see the test at the end).
_junk = st.one_of(st.none(), st.text(max_size=4), st.binary(max_size=4), st.floats(),
                  _ints, st.lists(st.integers(), max_size=3),
                  st.lists(st.text(max_size=2), min_size=2, max_size=2),
                  st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(OPS))
    return {
        "txid": draw(_pair), "ts": draw(_pair), "pid": draw(st.text(max_size=8)),
        "key": draw(st.binary(max_size=8)), "op": op,
        "value": None if op == "remove" else draw(st.binary(max_size=8)) if op != "replay"
        else draw(st.one_of(st.none(), st.binary(max_size=8))),
        "expected_version": draw(st.integers(0, (1 << 64) - 1)) if op == "cas"
        else draw(st.integers(1, (1 << 64) - 1)) if op == "replay" else None,
        "rg": draw(st.text(max_size=8)), "rg_version": draw(st.integers(0, (1 << 64) - 1)),
        "rg_fp": draw(st.integers(0, (1 << 32) - 1)),
        "timeout_ms": draw(st.integers(1, 600_000)),
        "participants": draw(st.lists(st.text(min_size=1, max_size=8), max_size=5,
                                      unique=True)),
    }


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with none, one or a few fields replaced by something else (another
    field's value, an edge integer, a wrong type, another op)."""
    body = draw(valid_bodies())
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        body[name] = draw(st.one_of(_junk, _int_edges, st.sampled_from(OPS + ("get",)),
                                    st.none(), _pair))
    return body


def _attrs_accepts(body: dict[str, Any]) -> bool:
    try:
        Prepare(**body)
    except (TypeError, ValueError):
        return False
    return True


@given(bodies())
def test_the_fast_path_accepts_exactly_what_prepare_accepts(body: dict[str, Any]) -> None:
    assert _prepare_body_ok(body) == _attrs_accepts(body), body


EDGES = [-1, 0, 1, 600_000, 600_001, (1 << 32) - 1, 1 << 32, (1 << 64) - 1,
         1 << 64, 1.0, "1", None]
BASE = {"txid": [1, 2], "ts": [3, 4], "pid": "p0.0", "key": b"k", "op": "cas",
        "value": b"v", "expected_version": 5, "rg": "rg0", "rg_version": 1, "rg_fp": 2,
        "timeout_ms": 100, "participants": ["b1", "b2"]}


@pytest.mark.parametrize("name", ["rg_version", "rg_fp", "timeout_ms",
                                  "expected_version"])
def test_the_fast_path_agrees_with_prepare_at_every_range_edge(name: str) -> None:
    # Generated bodies rarely hit an exact edge: each integer field at each edge here
    # (booleans apart: the last test).
    for edge in EDGES:
        body = dict(BASE, **{name: edge})
        assert _prepare_body_ok(body) == _attrs_accepts(body), (name, edge)


@given(valid_bodies())
def test_every_valid_prepare_takes_the_fast_path(body: dict[str, Any]) -> None:
    assert _attrs_accepts(body) and _prepare_body_ok(body)


def test_a_boolean_for_an_integer_leaves_the_fast_path_for_the_general_one() -> None:
    # The one known difference: attrs' instance_of(int) takes True and False (bool is an
    # int); the fast path's ``type(x) is int`` does not.  Such a body goes down the
    # general path, which decodes it with Prepare as any other: the fast path never
    # accepts what Prepare refuses, it only declines what it need not handle.
    body = {"txid": [1, 2], "ts": [3, 4], "pid": "p0.0", "key": b"k", "op": "put",
            "value": b"v", "expected_version": None, "rg": "rg0", "rg_version": 1,
            "rg_fp": True, "timeout_ms": 100, "participants": ["b1"]}
    assert _attrs_accepts(body) and not _prepare_body_ok(body)


PARTICIPANT_EDGES: list[object] = [
    [], ["b1"], ["b1", "b1"], [""], ["x" * 128], ["x" * 129], [1], "b1", None,
    ["b%d" % i for i in range(16)], ["b%d" % i for i in range(17)]]


def test_the_fast_path_agrees_with_prepare_on_every_participant_list_edge() -> None:
    for edge in PARTICIPANT_EDGES:
        body = dict(BASE, participants=edge)
        assert _prepare_body_ok(body) == _attrs_accepts(body), edge
