"""dds.tls: identities in certificates, the checks on loading them, and real handshakes
(Twisted and the stdlib) over loopback with certificates made in tmp_path."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion, trustRootFromCertificates
from twisted.internet.ssl import Certificate as TwistedCertificate
from twisted.python.failure import Failure
from zope.interface import implementer

from dds import tls
from dds.errors import AuthenticationFailed, ConfigError

UTC = datetime.timezone.utc


class CA:
    """A cluster CA in a directory, issuing certificates into it."""

    def __init__(self, directory: Path, cluster: str = "dds") -> None:
        directory.mkdir(mode=0o700)
        self.dir, self.cluster = directory, cluster
        self.key, self.cert = tls.make_ca(cluster, 30)
        self.path = directory / "ca.crt"
        tls.write_cert(self.path, self.cert, False)

    def issue(self, role: str, name: str, cluster: str | None = None,
              days: int = 30) -> tuple[Path, Path]:
        key, cert = tls.issue(self.key, self.cert, cluster or self.cluster, role, name, days)
        crt, k = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        tls.write_cert(crt, cert, False)
        tls.write_key(k, key, False)
        return crt, k

    def files(self, role: str, name: str) -> tls.TLSFiles:
        crt, k = self.issue(role, name)
        return tls.load_tls_files(self.path, crt, k, cluster=self.cluster, role=role)


def trusting(files: tls.TLSFiles, ca: CA) -> tls.TLSFiles:
    """``files`` presenting their own certificate but trusting ``ca``: a party whose
    certificate comes from a CA the other side does not trust."""
    return attrs.evolve(files, ca=ca.cert)


def self_signed(subject: list[x509.NameAttribute]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(x509.Name(subject))
            .issuer_name(x509.Name(subject)).public_key(key.public_key())
            .serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path / "ca")


@pytest.fixture
def other_ca(tmp_path: Path) -> CA:
    return CA(tmp_path / "other")


# -- identities ---------------------------------------------------------------------------

def test_an_issued_certificate_names_its_cluster_role_and_id(ca: CA) -> None:
    _, cert = tls.issue(ca.key, ca.cert, "dds", "admin", "ops-1", 30)
    assert tls.identity_of(cert) == tls.Identity("dds", "admin", "ops-1",
                                                 cert.not_valid_after_utc)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "dds://dds/admin/ops-1"]


@pytest.mark.parametrize("subject,problem", [
    ([(NameOID.COMMON_NAME, "b0"), (NameOID.ORGANIZATION_NAME, "dds")], "no OU"),
    ([(NameOID.ORGANIZATIONAL_UNIT_NAME, "brick"), (NameOID.ORGANIZATION_NAME, "dds")],
     "no CN"),
    ([(NameOID.COMMON_NAME, "b0"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "brick")], "no O"),
    ([(NameOID.COMMON_NAME, "b0"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "root"),
      (NameOID.ORGANIZATION_NAME, "dds")], "unknown role 'root'"),
])
def test_identity_of_says_what_the_subject_lacks(subject: list[tuple[Any, str]],
                                                 problem: str) -> None:
    cert = self_signed([x509.NameAttribute(oid, v) for oid, v in subject])
    with pytest.raises(AuthenticationFailed, match=problem):
        tls.identity_of(cert)


def test_identity_errors_quote_at_most_64_characters_of_a_field() -> None:
    cert = self_signed([x509.NameAttribute(NameOID.COMMON_NAME, "b0"),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x" * 5000),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dds")])
    with pytest.raises(AuthenticationFailed) as e:
        tls.identity_of(cert)
    assert "x" * 64 in e.value.message and "x" * 65 not in e.value.message


def test_peer_identity_refuses_a_transport_without_a_peer_certificate() -> None:
    class NoCert:
        def getPeerCertificate(self) -> None:
            return None

    with pytest.raises(AuthenticationFailed, match="no TLS certificate"):
        tls.peer_identity(NoCert())


# -- loading ------------------------------------------------------------------------------

def test_load_tls_files_accepts_a_matching_set(ca: CA) -> None:
    files = ca.files("brick", "b0")
    assert (files.identity.cluster, files.identity.role, files.identity.id) == (
        "dds", "brick", "b0")
    assert files.paths == tls.TLSPaths(ca.path, ca.dir / "b0.crt", ca.dir / "b0.key")


def test_a_key_readable_by_others_is_refused(ca: CA) -> None:
    crt, key = ca.issue("brick", "b0")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"b0.key.*readable by others \(mode 0644\); "
                                          r"chmod 600 it"):
        tls.load_tls_files(ca.path, crt, key, cluster="dds")


def test_a_certificate_from_another_ca_is_refused(ca: CA, other_ca: CA) -> None:
    crt, key = other_ca.issue("brick", "b0")
    with pytest.raises(ConfigError, match="b0.crt.*not signed by the CA in .*ca/ca.crt"):
        tls.load_tls_files(ca.path, crt, key, cluster="dds")


def test_an_expired_certificate_is_refused_naming_the_expiry_date(ca: CA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "b0"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "brick"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dds")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime.datetime(2020, 3, 1, 12, 0, tzinfo=UTC))
            .sign(ca.key, hashes.SHA256()))
    tls.write_cert(ca.dir / "old.crt", cert, False)
    tls.write_key(ca.dir / "old.key", key, False)
    with pytest.raises(ConfigError, match="old.crt.*expired on 2020-03-01 12:00 UTC"):
        tls.load_tls_files(ca.path, ca.dir / "old.crt", ca.dir / "old.key", cluster="dds")


def test_a_certificate_for_another_cluster_is_refused(tmp_path: Path) -> None:
    theirs = CA(tmp_path / "theirs", cluster="other")
    crt, key = theirs.issue("brick", "b0")
    with pytest.raises(ConfigError, match="certificate names cluster 'other', this is "
                                          "cluster 'dds'"):
        tls.load_tls_files(theirs.path, crt, key, cluster="dds")


def test_a_certificate_for_another_role_is_refused(ca: CA) -> None:
    crt, key = ca.issue("client", "app")
    with pytest.raises(ConfigError, match="app.crt.*role 'client', expected 'brick'"):
        tls.load_tls_files(ca.path, crt, key, cluster="dds", role="brick")


def test_a_key_of_another_certificate_is_refused(ca: CA) -> None:
    crt, _ = ca.issue("brick", "b0")
    _, other_key = ca.issue("brick", "b1")
    with pytest.raises(ConfigError, match="b1.key.*does not match the certificate"):
        tls.load_tls_files(ca.path, crt, other_key, cluster="dds")


def test_a_file_that_is_not_pem_is_refused_by_name(ca: CA) -> None:
    crt, key = ca.issue("brick", "b0")
    crt.write_text("hello\n")
    with pytest.raises(ConfigError, match="b0.crt.*not a PEM certificate"):
        tls.load_tls_files(ca.path, crt, key, cluster="dds")


def test_a_missing_file_is_refused_by_name(ca: CA) -> None:
    crt, _ = ca.issue("brick", "b0")
    with pytest.raises(ConfigError, match="nope.key.*cannot read"):
        tls.load_tls_files(ca.path, crt, ca.dir / "nope.key", cluster="dds")


def test_seconds_to_expiry_counts_to_the_earlier_of_certificate_and_ca(ca: CA) -> None:
    crt, key = ca.issue("brick", "b0", days=90)       # outlives the 30-day CA
    files = tls.load_tls_files(ca.path, crt, key, cluster="dds")
    now = datetime.datetime.now(UTC)
    assert tls.seconds_to_expiry(files, now) == pytest.approx(
        (ca.cert.not_valid_after_utc - now).total_seconds())


# -- writing ------------------------------------------------------------------------------

def test_write_key_refuses_an_existing_file_without_force(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    tls.write_key(tmp_path / "k.key", key, False)
    with pytest.raises(FileExistsError):
        tls.write_key(tmp_path / "k.key", key, False)


def test_write_key_with_force_replaces_a_readable_file_by_a_private_one(tmp_path: Path
                                                                         ) -> None:
    path = tmp_path / "k.key"
    path.write_text("old")
    path.chmod(0o644)
    tls.write_key(path, ec.generate_private_key(ec.SECP256R1()), True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert os.listdir(tmp_path) == ["k.key"]


# -- Twisted handshakes -------------------------------------------------------------------

@implementer(IHandshakeListener)
class Party(Protocol):
    """Records who the peer is once the handshake is done, says hello, and (on the
    client side) hangs up when greeted."""

    def __init__(self, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.identity: tls.Identity | None = None
        self.received = b""
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def handshakeCompleted(self) -> None:
        self.identity = tls.peer_identity(self.transport, cluster="dds")
        assert self.transport is not None
        self.transport.write(b"hello")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.hang_up and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.lost.callback(None)


async def handshake(server_opts: CertificateOptions, client_opts: CertificateOptions
                    ) -> tuple[Party, Failure, Party, Failure]:
    """One connection over loopback; both parties and why each connection ended."""
    server, client = Party(hang_up=False), Party(hang_up=True)
    r: Any = reactor
    port = r.listenSSL(0, Factory.forProtocol(lambda: server), server_opts,
                       interface="127.0.0.1")
    try:
        factory = ClientFactory.forProtocol(lambda: client)
        r.connectSSL("127.0.0.1", port.getHost().port, factory, client_opts)
        await client.lost.addTimeout(10, r)
        await server.lost.addTimeout(10, r)
    finally:
        await port.stopListening()
    assert server.reason is not None and client.reason is not None
    return server, server.reason, client, client.reason


@pytest_twisted.ensureDeferred
async def test_a_twisted_handshake_tells_each_side_the_others_role_and_id(ca: CA) -> None:
    server, _, client, _ = await handshake(tls.server_options(ca.files("brick", "b0")),
                                           tls.client_options(ca.files("admin", "ops")))
    assert server.identity is not None and client.identity is not None
    assert (server.identity.role, server.identity.id) == ("admin", "ops")
    assert (client.identity.role, client.identity.id) == ("brick", "b0")
    assert server.received == client.received == b"hello"


@pytest_twisted.ensureDeferred
async def test_the_server_refuses_a_client_certificate_from_another_ca(ca: CA,
                                                                       other_ca: CA) -> None:
    impostor = trusting(other_ca.files("client", "app"), ca)
    server, server_reason, client, _ = await handshake(
        tls.server_options(ca.files("brick", "b0")), tls.client_options(impostor))
    assert server.identity is None and server.received == b""
    assert server_reason.check(SSL.Error)
    assert client.received == b""


@pytest_twisted.ensureDeferred
async def test_the_server_refuses_a_client_without_a_certificate(ca: CA) -> None:
    anonymous = CertificateOptions(
        trustRoot=trustRootFromCertificates([TwistedCertificate.loadPEM(
            ca.path.read_bytes())]), raiseMinimumTo=TLSVersion.TLSv1_2)
    server, server_reason, client, _ = await handshake(
        tls.server_options(ca.files("brick", "b0")), anonymous)
    assert server.identity is None and server.received == b""
    assert server_reason.check(SSL.Error)
    assert client.received == b""


@pytest_twisted.ensureDeferred
async def test_the_client_refuses_a_server_certificate_from_another_ca(ca: CA,
                                                                       other_ca: CA) -> None:
    impostor = trusting(other_ca.files("brick", "b0"), ca)
    server, _, client, client_reason = await handshake(
        tls.server_options(impostor), tls.client_options(ca.files("admin", "ops")))
    assert client.identity is None and client.received == b""
    assert client_reason.check(SSL.Error)
    assert server.identity is None and server.received == b""


@pytest_twisted.ensureDeferred
async def test_the_client_refuses_a_client_certificate_posing_as_a_brick(ca: CA) -> None:
    server, _, client, client_reason = await handshake(
        tls.server_options(ca.files("client", "app")),
        tls.client_options(ca.files("admin", "ops")))
    assert client.identity is None and client.received == b""
    assert client_reason.check(SSL.Error)


# -- stdlib ssl -----------------------------------------------------------------------------

def stdlib_pair(server_files: tls.TLSFiles, client_files: tls.TLSFiles
                ) -> dict[str, tls.Identity | Exception]:
    """A handshake and one byte each way over a socketpair, each side in a thread: what
    each side learned of the other, or why it failed."""
    results: dict[str, tls.Identity | Exception] = {}
    a, b = socket.socketpair()

    def side(name: str, sock: socket.socket, files: tls.TLSFiles, server: bool) -> None:
        sock.settimeout(10)
        try:
            ctx = tls.ssl_context(files, server=server)
            with ctx.wrap_socket(sock, server_side=server) as s:
                s.sendall(b"x")
                if s.recv(1) != b"x":
                    raise ConnectionError("closed early")
                results[name] = tls.ssl_peer_identity(s, cluster="dds")
        except (OSError, AuthenticationFailed) as e:    # ssl.SSLError is an OSError
            results[name] = e

    threads = [threading.Thread(target=side, args=("server", a, server_files, True)),
               threading.Thread(target=side, args=("client", b, client_files, False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return results


def test_a_stdlib_handshake_tells_each_side_the_others_role_and_id(ca: CA) -> None:
    server, client = ca.files("brick", "b0"), ca.files("brick", "b1")
    assert stdlib_pair(server, client) == {"server": client.identity,
                                           "client": server.identity}


def test_a_stdlib_server_refuses_a_client_certificate_from_another_ca(ca: CA,
                                                                      other_ca: CA) -> None:
    impostor = trusting(other_ca.files("brick", "b1"), ca)
    results = stdlib_pair(ca.files("brick", "b0"), impostor)
    assert isinstance(results["server"], ssl.SSLError)
    assert not isinstance(results["client"], tls.Identity)
