"""Positions in a partition's change stream (docs/architecture.md, "Change stream").

A position is opaque to its users: a short base64 text a consumer stores as its
checkpoint and hands back.  Inside, versioned and checksummed: the partition, the
*lineage* of the replica file that produced it, the log position (``lsn``) in that file,
and a *safe time*: every write committed anywhere before it is at or below ``lsn`` in
that file.  Two words are positions too: ``beginning`` (everything the replica holds)
and ``now`` (the current end).

The checksum catches damage and hand-made tokens; it is not a signature (a reader may
start anywhere in a partition it may read anyway).
"""

from __future__ import annotations

import base64
import binascii
import struct

import attrs
import xxhash

from dds.errors import InvalidRequest
from dds.partition import MAX_DEPTH, PartitionId

#: The format's version, the token's first byte.
VERSION = 1
BEGINNING = "beginning"
NOW = "now"
#: Longest position text accepted on the wire.
MAX_TEXT = 128
_BODY = struct.Struct(">BBI16sQQ")     # version, depth, prefix, lineage, lsn, safe ms
_SUM = struct.Struct(">Q")


@attrs.frozen
class Position:
    """A decoded position (``lineage`` is 32 hex digits)."""

    pid: PartitionId
    lineage: str
    lsn: int
    safe_time: float

    def encode(self) -> str:
        body = _BODY.pack(VERSION, self.pid.depth, self.pid.prefix,
                          bytes.fromhex(self.lineage), self.lsn,
                          max(0, int(self.safe_time * 1000)))
        raw = body + _SUM.pack(xxhash.xxh64_intdigest(body))
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(text: str) -> Position:
    """The position ``text`` names; ``InvalidRequest`` naming what is wrong with it."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise InvalidRequest("change position: not a position token (too long or not text)")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"change position {text[:40]!r}: not base64") from None
    if len(raw) != _BODY.size + _SUM.size:
        raise InvalidRequest(f"change position {text[:40]!r}: {len(raw)} bytes, "
                             f"expected {_BODY.size + _SUM.size}")
    body, (check,) = raw[:_BODY.size], _SUM.unpack(raw[_BODY.size:])
    if xxhash.xxh64_intdigest(body) != check:
        raise InvalidRequest(f"change position {text[:40]!r}: checksum mismatch "
                             "(damaged or not made by a brick)")
    version, depth, prefix, lineage, lsn, safe_ms = _BODY.unpack(body)
    if version != VERSION:
        raise InvalidRequest(f"change position: format version {version}, this code "
                             f"reads {VERSION}")
    if depth > MAX_DEPTH or prefix >= (1 << depth) and not (depth == 0 and prefix == 0):
        raise InvalidRequest(f"change position: no partition p{depth}.{prefix}")
    return Position(PartitionId(depth, prefix), lineage.hex(), lsn, safe_ms / 1000.0)


def check_text(text: str) -> str:
    """``text`` if it is ``beginning``, ``now`` or a well-formed token (else
    ``InvalidRequest``): what a caller can check before any I/O."""
    if text not in (BEGINNING, NOW):
        decode(text)
    return text


__all__ = ["BEGINNING", "NOW", "Position", "check_text", "decode"]
