"""Typed replies (``dds.replies``): a reply of the wrong shape fails where it arrives,
naming the request and the field; extra fields (a newer peer's) are ignored."""

from __future__ import annotations

from typing import Any

import pytest

from dds.errors import DDSError, ProtocolError
from dds.replies import (CopyBeginReply, CopyChunkReply, CopyDeltaReply, CopyFenceReply,
                         RangeChecksumsReply, RGStatusReply, StatusReply)

SNAP = {"pid": "0/1", "size": 4096, "lsn": 12, "checksum": 77}


def _status(**kw: Any) -> dict[str, Any]:
    body = {"id": "b1", "address": "127.0.0.1:7001", "pid": 4242, "map_fp": 5,
            "map_version": 3, "partitions": ["0/1"], "members": {"rg1": "active"},
            "blocked": [], "recovery": {}, "moves_in": {}, "metrics": {"x": 1}}
    body.update(kw)
    return body


def test_a_status_reply_keeps_the_whole_body_for_the_render() -> None:
    reply = StatusReply.from_wire(_status())
    assert (reply.id, reply.map_fp, reply.pid) == ("b1", 5, 4242)
    assert reply.body["metrics"] == {"x": 1}
    assert reply.serves("rg1") and not reply.serves("rg2")


def test_a_status_reply_without_its_id_names_the_missing_field() -> None:
    body = _status()
    del body["id"]
    with pytest.raises(ProtocolError, match="malformed status request reply: no 'id'"):
        StatusReply.from_wire(body)


def test_a_status_reply_from_an_older_brick_without_the_newer_fields_is_read() -> None:
    reply = StatusReply.from_wire({"id": "b1", "map_fp": 5})
    assert reply.moves_in == {} and reply.blocked == [] and not reply.serves("rg1")


def test_a_blocked_rg_is_not_served() -> None:
    assert not StatusReply.from_wire(_status(blocked=["rg1"])).serves("rg1")


def test_a_reply_that_is_not_a_map_is_a_protocol_error_not_a_type_error() -> None:
    with pytest.raises(ProtocolError, match="not a map"):
        RGStatusReply.from_wire(["record"])


def test_a_protocol_error_is_a_dds_error_as_every_failed_call_is() -> None:
    # Callers catch DDSError around a call: a malformed reply is handled the same way.
    with pytest.raises(DDSError):
        CopyChunkReply.from_wire({"data": "not bytes", "checksum": 1})


def test_copy_begin_reply_with_a_malformed_snapshot_names_snapshots() -> None:
    bad = dict(SNAP, size="big")
    with pytest.raises(ProtocolError, match="partition copy \\(begin\\) reply: snapshots"):
        CopyBeginReply.from_wire({"session": 1, "record": [], "snapshots": [bad]})


def test_copy_begin_reply_without_a_usable_stream_offer_uses_chunks() -> None:
    reply = CopyBeginReply.from_wire({"session": 1, "record": [], "snapshots": [SNAP],
                                      "stream": {"port": "x"}})
    assert reply.stream is None and reply.snapshots == [SNAP]


def test_copy_begin_reply_round_trips_through_its_wire_form() -> None:
    body = {"session": 1, "record": ["rg1"], "snapshots": [SNAP],
            "stream": {"port": 7100, "token": b"t" * 16}}
    assert CopyBeginReply.from_wire(body).to_wire() == body


def test_rg_status_reply_of_an_rg_not_in_the_map() -> None:
    reply = RGStatusReply.from_wire({"record": None, "serving": False, "state": None,
                                     "reconciled": False})
    assert reply.record is None and not reply.serving


def test_rg_status_reply_with_a_non_boolean_serving_is_refused() -> None:
    with pytest.raises(ProtocolError, match="serving"):
        RGStatusReply.from_wire({"record": None, "serving": "yes"})


def test_copy_delta_rows_need_their_log_position() -> None:
    CopyDeltaReply.from_wire({"rows": [[b"k", b"v", 1, 9, 123]], "more": False})
    with pytest.raises(ProtocolError, match="rows"):
        CopyDeltaReply.from_wire({"rows": [[b"k", b"v", 1]], "more": False})


def test_copy_fence_lsn_must_map_partitions_to_positions() -> None:
    assert CopyFenceReply.from_wire({"lsn": {"0/1": 4}}).lsn == {"0/1": 4}
    with pytest.raises(ProtocolError, match="lsn"):
        CopyFenceReply.from_wire({"lsn": {"0/1": "4"}})


def test_range_checksums_buckets_are_count_and_checksum_pairs() -> None:
    reply = RangeChecksumsReply.from_wire({"buckets": [[3, 99]], "lsn": 8, "rows": 3})
    assert reply.buckets == [[3, 99]]
    with pytest.raises(ProtocolError, match="buckets"):
        RangeChecksumsReply.from_wire({"buckets": [[3]], "lsn": 8})
