"""Snapshot streams (dds.bricks.copy.stream): a registered file goes, block by block and
checked, to a client that proves its copy session's token; anything else is refused.
The server binds the address and port it is given.  Real sockets and real threads;
``call_from_thread`` is a plain call here (nothing shared is touched).
(Timeouts, the worker pool and TLS: test_stream_security.py.)"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest
import xxhash

from dds.bricks.copy.stream import BLOCK, TOKEN_BYTES, StreamError, StreamServer, receive

TOKEN = bytes(range(TOKEN_BYTES))


def plain_call(f: Any, *args: Any) -> None:
    f(*args)


@pytest.fixture
def server() -> Iterator[StreamServer]:
    s = StreamServer("127.0.0.1", 0, plain_call)
    yield s
    s.close()


def snapshot_file(tmp_path: Path, size: int) -> tuple[Path, tuple[int, ...]]:
    path = tmp_path / "snap"
    data = os.urandom(size)
    path.write_bytes(data)
    blocks = tuple(xxhash.xxh64_intdigest(data[i:i + BLOCK]) for i in range(0, size, BLOCK))
    return path, blocks


def take(port: int, session: int, pid: str, size: int, token: bytes = TOKEN,
         host: str = "127.0.0.1") -> bytes:
    out = bytearray(size)

    def write(offset: int, data: Any, checksum: int) -> None:
        assert xxhash.xxh64_intdigest(data) == checksum
        out[offset:offset + len(data)] = data
    n = receive(host, port, token, session, pid, size, write)
    assert n == size
    return bytes(out)


def free_port(family: socket.AddressFamily = socket.AF_INET,
              host: str = "127.0.0.1") -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_a_stream_with_the_sessions_token_delivers_the_whole_file_checked(
        server: StreamServer, tmp_path: Path) -> None:
    size = 2 * BLOCK + 12345
    path, blocks = snapshot_file(tmp_path, size)
    server.register(7, TOKEN, "p1.0", path, size, blocks, 0.0)
    assert take(server.port, 7, "p1.0", size) == path.read_bytes()


def test_a_wrong_token_is_refused_as_an_authentication_failure(server: StreamServer,
                                                               tmp_path: Path) -> None:
    path, blocks = snapshot_file(tmp_path, 1000)
    server.register(7, TOKEN, "p1.0", path, 1000, blocks, 0.0)
    with pytest.raises(StreamError, match="^authentication failed$"):
        take(server.port, 7, "p1.0", 1000, token=bytes(TOKEN_BYTES))


def test_another_sessions_token_opens_nothing(server: StreamServer, tmp_path: Path
                                              ) -> None:
    path, blocks = snapshot_file(tmp_path, 1000)
    server.register(7, TOKEN, "p1.0", path, 1000, blocks, 0.0)
    other = os.urandom(TOKEN_BYTES)
    server.register(8, other, "p1.1", path, 1000, blocks, 0.0)
    with pytest.raises(StreamError, match="^authentication failed$"):
        take(server.port, 7, "p1.0", 1000, token=other)


def test_an_unknown_session_is_refused(server: StreamServer, tmp_path: Path) -> None:
    path, blocks = snapshot_file(tmp_path, 1000)
    server.register(7, TOKEN, "p1.0", path, 1000, blocks, 0.0)
    with pytest.raises(StreamError, match="no snapshot of p1.0 in copy session 8"):
        take(server.port, 8, "p1.0", 1000)


def test_a_partition_the_session_does_not_copy_is_refused(server: StreamServer,
                                                          tmp_path: Path) -> None:
    path, blocks = snapshot_file(tmp_path, 1000)
    server.register(7, TOKEN, "p1.0", path, 1000, blocks, 0.0)
    with pytest.raises(StreamError, match="no snapshot of p1.1 in copy session 7"):
        take(server.port, 7, "p1.1", 1000)


def test_an_ended_session_is_refused_even_with_its_token(server: StreamServer,
                                                         tmp_path: Path) -> None:
    path, blocks = snapshot_file(tmp_path, 1000)
    server.register(7, TOKEN, "p1.0", path, 1000, blocks, 0.0)
    server.unregister(7)
    with pytest.raises(StreamError, match="no snapshot of p1.0 in copy session 7"):
        take(server.port, 7, "p1.0", 1000)


def test_a_session_cannot_be_registered_with_a_second_token(server: StreamServer,
                                                            tmp_path: Path) -> None:
    path, blocks = snapshot_file(tmp_path, 10)
    server.register(7, TOKEN, "p1.0", path, 10, blocks, 0.0)
    with pytest.raises(ValueError, match="another stream token"):
        server.register(7, os.urandom(TOKEN_BYTES), "p1.1", path, 10, blocks, 0.0)
    with pytest.raises(ValueError, match="32 bytes"):
        server.register(9, b"short", "p1.0", path, 10, blocks, 0.0)


def test_a_block_that_does_not_match_its_checksum_stops_the_stream(
        server: StreamServer, tmp_path: Path) -> None:
    size = BLOCK + 10
    path, blocks = snapshot_file(tmp_path, size)
    server.register(7, TOKEN, "p1.0", path, size, (blocks[0] ^ 1, blocks[1]), 0.0)

    def write(offset: int, data: Any, checksum: int) -> None:
        if xxhash.xxh64_intdigest(data) != checksum:
            raise StreamError(f"checksum mismatch at {offset}")
    with pytest.raises(StreamError, match="checksum mismatch at 0"):
        receive("127.0.0.1", server.port, TOKEN, 7, "p1.0", size, write)


# -- where the server listens -------------------------------------------------------------

def test_the_server_binds_the_configured_port(tmp_path: Path) -> None:
    port = free_port()
    server = StreamServer("127.0.0.1", port, plain_call)
    try:
        assert server.port == port
        path, blocks = snapshot_file(tmp_path, 100)
        server.register(7, TOKEN, "p1.0", path, 100, blocks, 0.0)
        assert take(port, 7, "p1.0", 100) == path.read_bytes()
    finally:
        server.close()


def test_a_port_already_taken_fails_at_once_naming_the_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port} \(brick\.stream_port\)"):
            StreamServer("127.0.0.1", port, plain_call)


def test_close_frees_the_port_for_the_next_server() -> None:
    first = StreamServer("127.0.0.1", 0, plain_call)
    port = first.port
    first.close()
    second = StreamServer("127.0.0.1", port, plain_call)
    second.close()


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_a_server_on_the_ipv6_loopback_streams(tmp_path: Path) -> None:
    server = StreamServer("::1", 0, plain_call)
    try:
        path, blocks = snapshot_file(tmp_path, BLOCK + 1)
        server.register(7, TOKEN, "p1.0", path, BLOCK + 1, blocks, 0.0)
        assert take(server.port, 7, "p1.0", BLOCK + 1, host="::1") == path.read_bytes()
    finally:
        server.close()


@pytest.mark.skipif(not ipv6_loopback() or not socket.has_dualstack_ipv6(),
                    reason="no dual-stack IPv6 here")
def test_a_server_on_all_ipv6_addresses_takes_ipv4_clients_too(tmp_path: Path) -> None:
    server = StreamServer("::", 0, plain_call)
    try:
        path, blocks = snapshot_file(tmp_path, 100)
        server.register(7, TOKEN, "p1.0", path, 100, blocks, 0.0)
        assert take(server.port, 7, "p1.0", 100, host="127.0.0.1") == path.read_bytes()
        assert take(server.port, 7, "p1.0", 100, host="::1") == path.read_bytes()
    finally:
        server.close()
