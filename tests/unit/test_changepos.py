"""Change stream position tokens (``dds/changepos.py``)."""

from __future__ import annotations

import base64

import pytest

from dds.changepos import Position, check_text, decode
from dds.errors import InvalidRequest
from dds.partition import PartitionId

POS = Position(PartitionId(3, 5), "ab" * 16, 123456, 1765000000.25)


def test_a_position_round_trips_through_its_text() -> None:
    assert decode(POS.encode()) == POS


def test_the_words_beginning_and_now_are_positions() -> None:
    assert check_text("beginning") == "beginning"
    assert check_text("now") == "now"


def _raw(text: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def test_a_flipped_bit_is_refused_as_a_checksum_mismatch() -> None:
    raw = _raw(POS.encode())
    raw[20] ^= 0x01
    with pytest.raises(InvalidRequest, match="checksum mismatch"):
        decode(_text(raw))


def test_an_edited_lsn_without_the_checksum_is_refused() -> None:
    forged = Position(POS.pid, POS.lineage, POS.lsn + 1000, POS.safe_time).encode()
    raw, original = _raw(forged), _raw(POS.encode())
    raw[-8:] = original[-8:]        # the lsn changed, the checksum is the old one
    with pytest.raises(InvalidRequest, match="checksum"):
        decode(_text(raw))


def test_a_truncated_token_is_refused_naming_its_length() -> None:
    with pytest.raises(InvalidRequest, match="bytes, expected"):
        decode(POS.encode()[:-6])


def test_text_that_is_not_base64_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="not base64|bytes, expected"):
        decode("not a token!!")


def test_an_overlong_text_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidRequest, match="too long"):
        decode("A" * 1000)
