"""Length-prefixed msgpack frames (DESIGN §10).

A frame is a 4-byte big-endian length followed by a msgpack array
``[type, request_id, body]``.  The decoder enforces the size limit from the length prefix
alone, before buffering the payload, so an oversize frame never costs its size in memory.
"""

from __future__ import annotations

from typing import Any, Iterator

import msgpack

from dds.errors import FrameTooLarge, ProtocolError

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
_HEADER = 4

Envelope = tuple[str, int, Any]


#: One packer for every frame: ``msgpack.packb`` builds a new one per call, which costs
#: more than packing a small reply.  ``pack`` holds the GIL throughout and resets itself
#: on an error, so sharing it is safe.
pack = msgpack.Packer(use_bin_type=True).pack


def encode_frame(mtype: str, request_id: int, body: Any) -> bytes:
    payload = pack([mtype, request_id, body])
    return len(payload).to_bytes(_HEADER, "big") + payload


def decode_payload(payload: bytes | bytearray | memoryview) -> Envelope:
    """Decode and shape-check one frame's payload; ``ProtocolError`` names the problem."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable frame: {e.__class__.__name__}: {e}") from None
    if not isinstance(obj, list) or len(obj) != 3:
        raise ProtocolError("malformed frame: expected [type, request_id, body]")
    mtype, rid, body = obj
    if not isinstance(mtype, str) or not isinstance(rid, int) or isinstance(rid, bool) \
            or rid < 0:
        raise ProtocolError("malformed frame: bad type or request id")
    return mtype, rid, body


class FrameDecoder:
    """Incremental splitter of a byte stream into frame payloads."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield every complete payload now buffered.  Raises ``FrameTooLarge`` as soon
        as a length prefix exceeds the limit (the stream cannot be trusted after that)."""
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        try:
            while end - pos >= _HEADER:
                n = int.from_bytes(buf[pos:pos + _HEADER], "big")
                if n > self.max_frame:
                    raise FrameTooLarge(f"frame of {n} bytes exceeds the limit of "
                                        f"{self.max_frame} bytes")
                if end - pos - _HEADER < n:
                    break
                start = pos + _HEADER
                pos = start + n
                yield bytes(buf[start:pos])
        finally:
            del buf[:pos]

    @property
    def buffered(self) -> int:
        return len(self._buf)
