"""Mutual TLS (DESIGN §10): a cluster CA, certificates naming cluster, role and id.

Every party presents a certificate issued by the cluster CA; each side verifies the
other's chain against that CA alone (never the system's trust store), during the
handshake.  Host names are not checked: bricks are reached by addresses, and who the peer
is comes from its certificate (``O=<cluster>, OU=<role>, CN=<id>``) once the handshake is
done (:func:`peer_identity`).  Keys are EC P-256: handshakes stay cheap.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import ssl
import stat
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet.ssl import (Certificate, CertificateOptions, TLSVersion,
                                  trustRootFromCertificates)

from dds.errors import AuthenticationFailed, ConfigError

__all__ = ["ROLES", "Identity", "TLSPaths", "TLSFiles", "identity_of", "load_tls_files",
           "load_ca", "server_options", "client_options", "peer_identity", "ssl_context",
           "ssl_peer_identity", "seconds_to_expiry", "make_ca", "issue", "write_key",
           "write_cert", "describe", "NAME_RE"]

ROLES = ("brick", "admin", "client")
#: Keys we make are EC P-256; RSA keys of an operator's own PKI are accepted too.
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
StrPath = str | os.PathLike[str]

#: Longest piece of a certificate field quoted in an error: the peer chose it.
_QUOTE_MAX = 64
#: A PEM file larger than this is not one of ours.
_MAX_PEM_BYTES = 1 << 20
#: Validity starts this much before "now", so a peer whose clock is a little behind
#: accepts a fresh certificate.
_BACKDATE = datetime.timedelta(minutes=5)
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _quote(value: str) -> str:
    """``value`` quoted for an error message, cut short: it may come from an attacker."""
    return repr(value[:_QUOTE_MAX]) + "..." if len(value) > _QUOTE_MAX else repr(value)


def _utcnow(now: datetime.datetime | None) -> datetime.datetime:
    if now is None:
        return datetime.datetime.now(datetime.timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


@attrs.frozen
class Identity:
    """Who a certificate speaks for."""

    cluster: str
    role: str
    id: str
    #: When the certificate stops being valid (timezone-aware, UTC).
    not_after: datetime.datetime

    def __str__(self) -> str:
        return f"{self.role} {self.id!r} of cluster {self.cluster!r}"


def _values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [v if isinstance(v, str) else v.decode("utf-8", "replace")
            for v in (a.value for a in name.get_attributes_for_oid(oid))]


def _one(name: x509.Name, oid: x509.ObjectIdentifier, what: str) -> str | None:
    """The single value of ``oid`` in ``name``; two would make the identity ambiguous."""
    values = _values(name, oid)
    if len(values) > 1:
        raise AuthenticationFailed(f"certificate subject has more than one {what}")
    return values[0] if values else None


def identity_of(cert: x509.Certificate) -> Identity:
    """The cluster (O), role (OU) and id (CN) a certificate names; AuthenticationFailed
    saying what is missing or wrong."""
    subject = cert.subject
    role = _one(subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU")
    if not role:
        raise AuthenticationFailed("certificate subject has no OU (the role)")
    if role not in ROLES:
        raise AuthenticationFailed(f"certificate names unknown role {_quote(role)} "
                                   f"(known: {', '.join(ROLES)})")
    cn = _one(subject, NameOID.COMMON_NAME, "CN")
    if not cn:
        raise AuthenticationFailed("certificate subject has no CN (the id)")
    cluster = _one(subject, NameOID.ORGANIZATION_NAME, "O")
    if not cluster:
        raise AuthenticationFailed("certificate subject has no O (the cluster)")
    return Identity(cluster, role, cn, cert.not_valid_after_utc)


# -- loading -------------------------------------------------------------------------------

@attrs.frozen
class TLSPaths:
    """Where the files were read from: the stdlib ``ssl`` module loads keys only by path."""

    ca: Path
    cert: Path
    key: Path


@attrs.frozen
class TLSFiles:
    """A checked set: the cluster CA, our certificate (issued by it) and its key."""

    ca: x509.Certificate
    cert: x509.Certificate
    key: PrivateKey = attrs.field(repr=False)
    identity: Identity
    paths: TLSPaths


def _read(path: Path, private: bool) -> bytes:
    """A file's bytes; for a private key, refused unless only its owner can access it."""
    try:
        with open(path, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if private and mode & 0o077:
                raise ConfigError(f"{str(path)!r}: private key is readable by others "
                                  f"(mode {mode:04o}); chmod 600 it")
            data = f.read(_MAX_PEM_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{str(path)!r}: cannot read: {e.strerror or e}") from None
    if len(data) > _MAX_PEM_BYTES:
        raise ConfigError(f"{str(path)!r}: too large to be a PEM file")
    return data


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path, private=False))
    except ValueError:
        raise ConfigError(f"{str(path)!r}: not a PEM certificate") from None


def _load_key(path: Path) -> PrivateKey:
    data = _read(path, private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{str(path)!r}: the private key is encrypted; DDS needs it "
                          f"unencrypted (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{str(path)!r}: not a PEM private key") from None
    if not isinstance(key, PrivateKey):
        raise ConfigError(f"{str(path)!r}: unsupported key type {type(key).__name__} "
                          f"(use EC or RSA)")
    return key


def _same_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _check_ca(ca: x509.Certificate, path: Path) -> None:
    if not _is_ca(ca):
        raise ConfigError(f"{str(path)!r}: not a CA certificate (basicConstraints CA is "
                          f"not set)")


def _check_dates(cert: x509.Certificate, path: Path, now: datetime.datetime) -> None:
    if now > cert.not_valid_after_utc:
        raise ConfigError(f"{str(path)!r}: certificate expired on "
                          f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if now < cert.not_valid_before_utc:
        raise ConfigError(f"{str(path)!r}: certificate is not valid before "
                          f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")


def load_ca(key_file: StrPath, cert_file: StrPath) -> tuple[PrivateKey, x509.Certificate]:
    """A CA's key and certificate (to issue with), checked to belong together."""
    key_path, cert_path = Path(key_file), Path(cert_file)
    cert = _load_cert(cert_path)
    _check_ca(cert, cert_path)
    key = _load_key(key_path)
    if not _same_key(key, cert):
        raise ConfigError(f"{str(key_path)!r}: private key does not match the CA "
                          f"certificate {str(cert_path)!r}")
    return key, cert


def load_tls_files(ca_file: StrPath, cert_file: StrPath, key_file: StrPath, *,
                   cluster: str, role: str | None = None,
                   now: datetime.datetime | None = None) -> TLSFiles:
    """Read and check a CA, a certificate and its key; ConfigError naming the file and
    the problem.  Checked here so that a bad file stops the start, not every handshake."""
    paths = TLSPaths(Path(ca_file), Path(cert_file), Path(key_file))
    at = _utcnow(now)
    ca = _load_cert(paths.ca)
    cert = _load_cert(paths.cert)
    key = _load_key(paths.key)
    _check_ca(ca, paths.ca)
    _check_dates(ca, paths.ca, at)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"{str(paths.cert)!r}: certificate is not signed by the CA in "
                          f"{str(paths.ca)!r}") from None
    _check_dates(cert, paths.cert, at)
    try:
        identity = identity_of(cert)
    except AuthenticationFailed as e:
        raise ConfigError(f"{str(paths.cert)!r}: {e.message}") from None
    if identity.cluster != cluster:
        raise ConfigError(f"{str(paths.cert)!r}: certificate names cluster "
                          f"{_quote(identity.cluster)}, this is cluster {cluster!r}")
    if role is not None and identity.role != role:
        raise ConfigError(f"{str(paths.cert)!r}: certificate is for role "
                          f"{identity.role!r}, expected {role!r}")
    if not _same_key(key, cert):
        raise ConfigError(f"{str(paths.key)!r}: private key does not match the "
                          f"certificate {str(paths.cert)!r}")
    return TLSFiles(ca, cert, key, identity, paths)


def seconds_to_expiry(files: TLSFiles, now: datetime.datetime | None = None) -> float:
    """Seconds until this party can no longer authenticate: the earlier of its
    certificate's and the CA's expiry (negative once past)."""
    end = min(files.cert.not_valid_after_utc, files.ca.not_valid_after_utc)
    return (end - _utcnow(now)).total_seconds()


# -- Twisted -------------------------------------------------------------------------------

def _options(files: TLSFiles) -> CertificateOptions:
    """Present our certificate; require the peer's and verify it against the cluster CA
    only (a trust root implies verify=True and requireCertificate=True)."""
    ca = Certificate(crypto.X509.from_cryptography(files.ca))
    # Twisted hands key and certificate to pyOpenSSL as they are, and pyOpenSSL deprecates
    # its own X509/PKey there: pass the cryptography objects (Twisted's hints lag).
    return CertificateOptions(
        privateKey=files.key,  # type: ignore[arg-type]
        certificate=files.cert,  # type: ignore[arg-type]
        trustRoot=trustRootFromCertificates([ca]),
        raiseMinimumTo=TLSVersion.TLSv1_2)


def server_options(files: TLSFiles) -> CertificateOptions:
    """For ``listenSSL``/``SSL4ServerEndpoint``: a client without a certificate from the
    cluster CA fails the handshake."""
    return _options(files)


def client_options(files: TLSFiles) -> CertificateOptions:
    """For ``connectSSL``/``SSL4ClientEndpoint``: a server without a certificate from the
    cluster CA fails the handshake.  No host name check (see the module docstring)."""
    return _options(files)


def _peer_check(cert: x509.Certificate, cluster: str | None) -> Identity:
    identity = identity_of(cert)
    if cluster is not None and identity.cluster != cluster:
        raise AuthenticationFailed(f"peer certificate names cluster "
                                   f"{_quote(identity.cluster)}, this is cluster {cluster!r}")
    return identity


def peer_identity(transport: object, *, cluster: str | None = None) -> Identity:
    """Who the peer of a TLS transport is (after the handshake); with ``cluster``, also
    refuse a certificate naming another cluster."""
    get = getattr(transport, "getPeerCertificate", None)
    peer = get() if get is not None else None
    if peer is None:
        raise AuthenticationFailed("the peer presented no TLS certificate")
    cert = peer if isinstance(peer, x509.Certificate) else peer.to_cryptography()
    return _peer_check(cert, cluster)


# -- stdlib ssl (the blocking copy-stream threads) -----------------------------------------

def ssl_context(files: TLSFiles, *, server: bool) -> ssl.SSLContext:
    """The same policy as the Twisted options for the stdlib: TLS 1.2+, a certificate
    required both ways, the cluster CA the only trust root, no host name check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(
        cadata=files.ca.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    ctx.load_cert_chain(str(files.paths.cert), str(files.paths.key))
    return ctx


def ssl_peer_identity(sslsock: ssl.SSLSocket, *, cluster: str | None = None) -> Identity:
    """:func:`peer_identity` for a stdlib TLS socket."""
    der = sslsock.getpeercert(binary_form=True)
    if not der:
        raise AuthenticationFailed("the peer presented no TLS certificate")
    return _peer_check(x509.load_der_x509_certificate(der), cluster)


# -- creating (dds-admin certs) ------------------------------------------------------------

def _key_usage(*, sign: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(sign, False, False, False, False, ca, ca, False, False)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             days: int, now: datetime.datetime | None) -> x509.CertificateBuilder:
    """What every certificate of ours has: a random serial, a validity backdated a little,
    the key identifier."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    at = _utcnow(now)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(at - _BACKDATE).not_valid_after(at + datetime.timedelta(days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False))


def make_ca(cluster: str, days: int, *, now: datetime.datetime | None = None
            ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed cluster CA: it may sign certificates, not other CAs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"DDS cluster CA {cluster}"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster)])
    cert = (_builder(name, name, key, days, now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca_key: PrivateKey, ca_cert: x509.Certificate, cluster: str, role: str,
          name: str, days: int, *, now: datetime.datetime | None = None
          ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and a certificate for ``role`` ``name`` of ``cluster``, signed by the
    CA.  Only bricks may serve (extended key usage): a client or admin certificate cannot
    pose as a brick."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"name must match {NAME_RE.pattern}, got {_quote(name)}")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster)])
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role == "brick":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    uri = x509.UniformResourceIdentifier(f"dds://{cluster}/{role}/{name}")
    cert = (_builder(subject, ca_cert.subject, key, days, now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(sign=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName([uri]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write_new(path: StrPath, data: bytes, mode: int, force: bool) -> None:
    """Write a file created with ``mode`` (so a key is never readable by others, not even
    for a moment).  Without ``force`` an existing file raises FileExistsError; with it the
    file is replaced atomically, so the new one gets ``mode`` too."""
    target = Path(path)
    dest = target.with_name(f".{target.name}.{os.getpid()}.tmp") if force else target
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(dest, target)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def write_key(path: StrPath, key: PrivateKey, force: bool) -> None:
    """A private key as unencrypted PKCS#8 PEM, mode 0600."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    _write_new(path, data, 0o600, force)


def write_cert(path: StrPath, cert: x509.Certificate, force: bool) -> None:
    """A certificate as PEM, mode 0644 (it is public)."""
    _write_new(path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)


def describe(cert: x509.Certificate, now: datetime.datetime | None = None) -> dict[str, Any]:
    """What ``dds-admin certs show`` reports, JSON-ready.  Works for the CA too, whose
    role is "ca"; fields a certificate lacks are None."""
    at = _utcnow(now)
    subject, is_ca = cert.subject, _is_ca(cert)

    def field(oid: x509.ObjectIdentifier) -> str | None:
        return next(iter(_values(subject, oid)), None)

    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    left = (cert.not_valid_after_utc - at).total_seconds() / 86400
    return {
        "subject": subject.rfc4514_string(),
        "cluster": field(NameOID.ORGANIZATION_NAME),
        "role": "ca" if is_ca else field(NameOID.ORGANIZATIONAL_UNIT_NAME),
        "id": None if is_ca else field(NameOID.COMMON_NAME),
        "ca": is_ca,
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": round(left, 2),
        "serial": f"{cert.serial_number:x}",
        "sha256": ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)).upper(),
    }
