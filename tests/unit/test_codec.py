"""Frame codec: round trips, size limits, malformed payloads."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from dds.codec import FrameDecoder, FrameTooLarge, decode_payload, encode_frame
from dds.errors import ProtocolError

bodies = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.binary(max_size=64)
    | st.text(max_size=32),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=5),
    max_leaves=20)


@given(st.text(min_size=1, max_size=16), st.integers(0, 2 ** 32), bodies,
       st.integers(1, 64))
def test_frames_round_trip_in_any_chunking(mtype: str, rid: int, body: object,
                                           chunk: int) -> None:
    data = encode_frame(mtype, rid, body) * 3
    dec = FrameDecoder()
    out = []
    for i in range(0, len(data), chunk):
        out.extend(dec.feed(data[i:i + chunk]))
    assert [decode_payload(p) for p in out] == [(mtype, rid, body)] * 3
    assert dec.buffered == 0


def test_a_frame_over_the_limit_is_refused_from_its_length_prefix() -> None:
    dec = FrameDecoder(max_frame=100)
    with pytest.raises(FrameTooLarge, match="101 bytes exceeds the limit of 100"):
        list(dec.feed((101).to_bytes(4, "big")))


@pytest.mark.parametrize("payload", [b"\xc1", b"\x93\xa1x", b"\x92\xa1x\x01",
                                     b"\x93\x01\x01\x01", b"\x93\xa1x\xff\x80",
                                     b"\xa5hello"])
def test_malformed_payloads_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(payload)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_anything_but_protocol_errors(data: bytes) -> None:
    dec = FrameDecoder(max_frame=64)
    try:
        for payload in dec.feed(data):
            try:
                decode_payload(payload)
            except ProtocolError:
                pass
    except FrameTooLarge:
        pass
