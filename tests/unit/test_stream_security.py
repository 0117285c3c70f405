"""What a stranger can get out of a brick's stream port (dds.bricks.copy.stream, DESIGN §10):
a bounded worker pool (more connections are told "busy" at once, and cost no thread),
a hello that must be done within a time limit however slowly it trickles, and, in TLS
mode, TLS with a brick's certificate of the cluster CA.  Real sockets, real threads, a
throwaway CA; every wait is on a condition with a deadline."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import xxhash
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import provider

from dds.bricks.copy.stream import (AUTH, BLOCK, BUSY, MAGIC, TIMEOUT, TOKEN_BYTES, StreamError,
                               StreamServer, receive)

TOKEN = os.urandom(TOKEN_BYTES)
#: Far above any wait a test expects, far below a hung test.
PATIENCE_S = 10.0


def wait_until(cond: Callable[[], bool], timeout: float = PATIENCE_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {cond}")
        time.sleep(0.005)


@attrs.define
class Served:
    server: StreamServer
    refused: Counter[str]
    path: Path
    size: int

    def take(self, token: bytes = TOKEN, ssl_context: ssl.SSLContext | None = None
             ) -> bytes:
        out = bytearray(self.size)

        def write(offset: int, data: Any, checksum: int) -> None:
            assert xxhash.xxh64_intdigest(data) == checksum
            out[offset:offset + len(data)] = data
        receive("127.0.0.1", self.server.port, token, 7, "p1.0", self.size, write,
                ssl_context=ssl_context)
        return bytes(out)


def serve(tmp_path: Path, size: int = BLOCK + 100, **kwargs: Any) -> Served:
    """A server on loopback with one file registered for session 7."""
    refused: Counter[str] = Counter()
    lock = threading.Lock()

    def count(reason: str) -> None:           # called from the server's threads here
        with lock:
            refused[reason] += 1
    server = StreamServer("127.0.0.1", 0, lambda f, *a: f(*a), on_refused=count, **kwargs)
    path = tmp_path / "snap"
    data = os.urandom(size)
    path.write_bytes(data)
    blocks = tuple(xxhash.xxh64_intdigest(data[i:i + BLOCK]) for i in range(0, size, BLOCK))
    server.register(7, TOKEN, "p1.0", path, size, blocks, 0.0)
    return Served(server, refused, path, size)


@pytest.fixture
def servers() -> Iterator[list[StreamServer]]:
    made: list[StreamServer] = []
    yield made
    for s in made:
        s.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Blocks until the peer closes (True) or the socket times out (False), dropping
    whatever the peer sent first."""
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


# -- the hello's time limit ------------------------------------------------------------

def test_a_connection_that_sends_no_hello_is_closed_within_the_limit(
        tmp_path: Path, servers: list[StreamServer]) -> None:
    s = serve(tmp_path, hello_timeout=0.5)
    servers.append(s.server)
    with connect(s.server.port) as sock:
        started = time.monotonic()
        assert closed_by_peer(sock)
        assert 0.4 <= time.monotonic() - started < 3.0
    wait_until(lambda: s.refused[TIMEOUT] == 1)


def test_a_hello_trickled_a_byte_at_a_time_is_closed_within_the_limit(
        tmp_path: Path, servers: list[StreamServer]) -> None:
    """A per-read timeout would restart at every byte; the deadline holds for the
    whole hello."""
    s = serve(tmp_path, hello_timeout=0.5)
    servers.append(s.server)
    # The longest hello there is (a pid of 255 bytes): 15 s at this pace.
    hello = MAGIC + bytes(16) + b"\xff" + bytes(255 + 32)
    with connect(s.server.port) as sock:
        started = time.monotonic()
        closed_at: list[float] = []

        def reader() -> None:
            if closed_by_peer(sock):
                closed_at.append(time.monotonic())
        t = threading.Thread(target=reader)
        t.start()
        for byte in hello:
            if closed_at:
                break
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)              # the trickle itself, not a wait for a result
        t.join(PATIENCE_S)
        assert closed_at and closed_at[0] - started < 2.0
    wait_until(lambda: s.refused[TIMEOUT] == 1)


def test_a_tls_handshake_that_stalls_is_closed_within_the_limit(
        tmp_path: Path, servers: list[StreamServer]) -> None:
    ca = CA.make("dds")
    s = serve(tmp_path, hello_timeout=0.5, ssl_context=ca.server_context(tmp_path))
    servers.append(s.server)
    with connect(s.server.port) as sock:
        sock.sendall(b"\x16\x03\x01")         # the start of a TLS record, then nothing
        started = time.monotonic()
        assert closed_by_peer(sock)
        assert time.monotonic() - started < 3.0
    wait_until(lambda: s.refused[TIMEOUT] == 1)


# -- the worker pool ---------------------------------------------------------------------

def test_connections_beyond_the_pool_are_refused_at_once_and_it_serves_again_after(
        tmp_path: Path, servers: list[StreamServer]) -> None:
    s = serve(tmp_path, max_workers=2, hello_timeout=60.0)
    servers.append(s.server)
    stalled = [connect(s.server.port) for _ in range(2)]
    wait_until(lambda: s.server.in_flight == 2)
    started = time.monotonic()
    with pytest.raises(StreamError, match="busy"):
        s.take()
    assert time.monotonic() - started < 2.0       # not after some timeout
    assert s.refused[BUSY] == 1
    for sock in stalled:
        sock.close()
    wait_until(lambda: s.server.in_flight == 0)
    assert s.take() == s.path.read_bytes()


def test_a_flood_of_connections_costs_no_thread_each(tmp_path: Path,
                                                     servers: list[StreamServer]) -> None:
    s = serve(tmp_path, max_workers=4, hello_timeout=60.0)
    servers.append(s.server)
    threads_before = threading.active_count()
    flood = []
    try:
        for _ in range(500):
            flood.append(connect(s.server.port))
        wait_until(lambda: s.refused[BUSY] == 496)
        assert threading.active_count() <= threads_before
        assert s.server.in_flight == 4
        # Each refused one was told why before the close.
        for sock in flood[4:]:
            sock.sendall(MAGIC)
            assert sock.recv(100).startswith(MAGIC + b"\1")
    finally:
        for sock in flood:
            sock.close()
    wait_until(lambda: s.server.in_flight == 0)
    assert s.take() == s.path.read_bytes()


def test_refusals_are_reported_by_reason(tmp_path: Path,
                                         servers: list[StreamServer]) -> None:
    s = serve(tmp_path)
    servers.append(s.server)
    with pytest.raises(StreamError, match="authentication failed"):
        s.take(token=bytes(TOKEN_BYTES))
    wait_until(lambda: s.refused == Counter({AUTH: 1}))


def test_refusals_are_logged_at_a_bounded_rate(tmp_path: Path,
                                              servers: list[StreamServer]) -> None:
    s = serve(tmp_path)
    servers.append(s.server)
    lines: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if "refused a snapshot stream" in str(event.get("line", "")):
            lines.append(str(event["line"]))
    globalLogPublisher.addObserver(observe)
    try:
        for _ in range(30):
            with pytest.raises(StreamError, match="authentication failed"):
                s.take(token=bytes(TOKEN_BYTES))
        wait_until(lambda: s.refused[AUTH] == 30)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(lines) == 10
    assert all("127.0.0.1" in line and "a wrong token" in line for line in lines)


# -- TLS -----------------------------------------------------------------------------------

@attrs.frozen
class CA:
    """A throwaway cluster CA (EC P-256), issuing certificates as the cluster's does:
    CN=id, O=cluster, OU=role."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, cluster: str) -> CA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"CA {cluster}"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster)])
        cert = (_builder(name, name, key)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def issue(self, tmp_path: Path, role: str, name: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cluster = self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                str(cluster.value))])
        cert = (_builder(subject, self.cert.subject, key)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                               critical=True)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path

    def context(self, tmp_path: Path, role: str, name: str, *, server: bool
                ) -> ssl.SSLContext:
        """What dds.tls.ssl_context makes: TLS 1.2+, a certificate both ways, this CA
        the only trust root, no host name check."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(
            cadata=self.cert.public_bytes(serialization.Encoding.PEM).decode())
        ctx.load_cert_chain(*map(str, self.issue(tmp_path, role, name)))
        return ctx

    def server_context(self, tmp_path: Path) -> ssl.SSLContext:
        return self.context(tmp_path, "brick", "b1", server=True)

    def client_context(self, tmp_path: Path, role: str = "brick") -> ssl.SSLContext:
        return self.context(tmp_path, role, f"{role}2", server=False)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
             ) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.make("dds")


def test_over_tls_a_stream_delivers_the_file(ca: CA, tmp_path: Path,
                                             servers: list[StreamServer]) -> None:
    s = serve(tmp_path, size=2 * BLOCK + 7, ssl_context=ca.server_context(tmp_path))
    servers.append(s.server)
    assert s.take(ssl_context=ca.client_context(tmp_path)) == s.path.read_bytes()
    assert s.refused == Counter()


def test_over_tls_a_wrong_token_is_still_refused(ca: CA, tmp_path: Path,
                                                 servers: list[StreamServer]) -> None:
    s = serve(tmp_path, ssl_context=ca.server_context(tmp_path))
    servers.append(s.server)
    with pytest.raises(StreamError, match="authentication failed"):
        s.take(token=bytes(TOKEN_BYTES), ssl_context=ca.client_context(tmp_path))


def test_a_plain_client_to_a_tls_stream_server_is_told_tls_is_required(
        ca: CA, tmp_path: Path, servers: list[StreamServer]) -> None:
    s = serve(tmp_path, ssl_context=ca.server_context(tmp_path), hello_timeout=60.0)
    servers.append(s.server)
    started = time.monotonic()
    with pytest.raises(StreamError, match="this snapshot stream server requires TLS"):
        s.take()
    assert time.monotonic() - started < 2.0       # told, not timed out
    wait_until(lambda: s.refused == Counter({AUTH: 1}))


def test_a_tls_client_to_a_plain_stream_server_fails_the_handshake_clearly(
        ca: CA, tmp_path: Path, servers: list[StreamServer]) -> None:
    s = serve(tmp_path)
    servers.append(s.server)
    with pytest.raises(StreamError, match=r"TLS handshake with 127\.0\.0\.1:\d+ failed"):
        s.take(ssl_context=ca.client_context(tmp_path))


def test_a_certificate_for_another_role_than_brick_is_refused(
        ca: CA, tmp_path: Path, servers: list[StreamServer]) -> None:
    s = serve(tmp_path, ssl_context=ca.server_context(tmp_path))
    servers.append(s.server)
    with pytest.raises(StreamError, match="authentication failed: a stream is for bricks"):
        s.take(ssl_context=ca.client_context(tmp_path, role="client"))
    wait_until(lambda: s.refused == Counter({AUTH: 1}))


def test_a_certificate_of_another_ca_fails_the_handshake(
        ca: CA, tmp_path: Path, servers: list[StreamServer]) -> None:
    s = serve(tmp_path, ssl_context=ca.server_context(tmp_path))
    servers.append(s.server)
    stranger = CA.make("dds")
    with pytest.raises(StreamError, match="TLS handshake"):
        s.take(ssl_context=stranger.client_context(tmp_path))
    wait_until(lambda: s.refused == Counter({AUTH: 1}))
