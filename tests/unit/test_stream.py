"""Snapshot streams (dds.bricks.stream): a registered file goes to an authenticated
client block by block, checked; anything else is refused.  Real sockets on loopback and
real threads; ``call_from_thread`` is a plain call here (nothing shared is touched)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import xxhash

from dds.bricks.stream import BLOCK, StreamError, StreamServer, receive

SECRET = b"s3cret"


@pytest.fixture
def server() -> Iterator[StreamServer]:
    sent: list[tuple[int, int]] = []
    s = StreamServer("127.0.0.1", SECRET, lambda f, *a: f(*a),
                     on_sent=lambda sid, n: sent.append((sid, n)))
    yield s
    s.close()


def _file(tmp_path: Path, size: int) -> tuple[Path, tuple[int, ...]]:
    path = tmp_path / "snap"
    data = os.urandom(size)
    path.write_bytes(data)
    blocks = tuple(xxhash.xxh64_intdigest(data[i:i + BLOCK]) for i in range(0, size, BLOCK))
    return path, blocks


def _take(server: StreamServer, session: int, pid: str, size: int,
          secret: bytes = SECRET) -> bytes:
    out = bytearray(size)

    def write(offset: int, data: Any, checksum: int) -> None:
        assert xxhash.xxh64_intdigest(data) == checksum
        out[offset:offset + len(data)] = data
    n = receive("127.0.0.1", server.port, secret, session, pid, size, write)
    assert n == size
    return bytes(out)


def test_a_registered_snapshot_streams_whole_and_checked(server: StreamServer,
                                                         tmp_path: Path) -> None:
    size = 2 * BLOCK + 12345
    path, blocks = _file(tmp_path, size)
    server.register(7, "p1.0", path, size, blocks, 0.0)
    assert _take(server, 7, "p1.0", size) == path.read_bytes()


def test_a_wrong_secret_or_an_unknown_session_is_refused(server: StreamServer,
                                                         tmp_path: Path) -> None:
    path, blocks = _file(tmp_path, 1000)
    server.register(7, "p1.0", path, 1000, blocks, 0.0)
    with pytest.raises(StreamError, match="authentication failed"):
        _take(server, 7, "p1.0", 1000, secret=b"wrong")
    with pytest.raises(StreamError, match="no snapshot of p1.1"):
        _take(server, 7, "p1.1", 1000)
    server.unregister(7)
    with pytest.raises(StreamError, match="no snapshot of p1.0 in copy session 7"):
        _take(server, 7, "p1.0", 1000)


def test_a_block_that_does_not_match_its_checksum_stops_the_stream(
        server: StreamServer, tmp_path: Path) -> None:
    size = BLOCK + 10
    path, blocks = _file(tmp_path, size)
    server.register(7, "p1.0", path, size, (blocks[0] ^ 1, blocks[1]), 0.0)

    def write(offset: int, data: Any, checksum: int) -> None:
        if xxhash.xxh64_intdigest(data) != checksum:
            raise StreamError(f"checksum mismatch at {offset}")
    with pytest.raises(StreamError, match="checksum mismatch at 0"):
        receive("127.0.0.1", server.port, SECRET, 7, "p1.0", size, write)
