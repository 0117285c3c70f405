"""Who a connection speaks for: roles and the credentials that prove them (DESIGN §10).

Every connection carries one **role**: ``brick`` (peer traffic), ``admin`` (what
``dds-admin`` does) or ``client`` (the library).  A brick holds the credentials of all
three so it can check whoever connects; an admin host or a service holds only its own, so
a stolen client credential grants no admin or peer power.

Two ways to prove a role: a shared secret per role (the HMAC handshake of ``dds.rpc``), or
mutual TLS with a certificate that names the cluster, the role and the id (``dds.tls``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from dds.errors import ConfigError

if TYPE_CHECKING:
    from dds.tls import TLSFiles

__all__ = ["ROLES", "MIN_SECRET_BYTES", "Credentials", "check_secret", "read_secret_file",
           "secret_env", "file_mode_problem"]

ROLES = ("brick", "admin", "client")
#: A shorter shared secret is refused: it would be guessable offline from one handshake.
MIN_SECRET_BYTES = 32


def secret_env(role: str) -> str:
    """The environment variable that may hold ``role``'s secret: DDS_CLIENT_SECRET, …"""
    return f"DDS_{role.upper()}_SECRET"


@attrs.frozen
class Credentials:
    """What one side presents (``role``) and, for a brick, what it can verify.

    ``secrets`` maps a role to its shared secret: one entry on an admin host or in a
    service, all three on a brick.  ``tls`` is set in TLS mode, where the certificate
    proves the role and the secrets are unused."""

    role: str = attrs.field(validator=attrs.validators.in_(ROLES))
    secrets: Mapping[str, bytes] = attrs.field(factory=dict, repr=False)
    tls: TLSFiles | None = attrs.field(default=None, repr=False)

    @classmethod
    def shared(cls, role: str, secret: bytes | str) -> Credentials:
        """One role's credentials in shared-secret mode (the library, ``dds-admin``)."""
        raw = secret.encode() if isinstance(secret, str) else secret
        return cls(role, {role: raw})

    def secret(self, role: str) -> bytes | None:
        return self.secrets.get(role)

    @property
    def mode(self) -> str:
        return "tls" if self.tls is not None else "secret"


def check_secret(secret: bytes, what: str) -> bytes:
    """``secret`` if it is long enough; ConfigError naming ``what`` otherwise."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"{what}: a shared secret must be at least {MIN_SECRET_BYTES} bytes,"
                          f" got {len(secret)} (make one with: "
                          f"python3 -c 'import secrets; print(secrets.token_hex(32))')")
    return secret


def file_mode_problem(path: Path, st: Any = None) -> str | None:
    """Why a secret or key file is unsafe to use (readable or writable by group or
    others), or None."""
    st = st if st is not None else path.stat()
    if st.st_mode & 0o077:
        return (f"{str(path)!r} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
    return None


def read_secret_file(path: Path, what: str) -> bytes:
    """A secret from a file: it must exist, be private to its owner (no group or other
    access) and hold at least ``MIN_SECRET_BYTES`` bytes once stripped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {str(path)!r}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        problem = file_mode_problem(path, os.fstat(f.fileno()))
        if problem is not None:
            raise ConfigError(f"{what}: {problem}")
        secret = f.read(1 << 16).strip()
    if not secret:
        raise ConfigError(f"{what}: {str(path)!r} is empty")
    return check_secret(secret, f"{what} ({str(path)!r})")


def secrets_from(env: Mapping[str, str], files: Mapping[str, Path | None],
                 where: Mapping[str, str]) -> dict[str, bytes]:
    """Each role's secret: its environment variable, else its file.  ``where[role]`` names
    the setting in errors."""
    out: dict[str, bytes] = {}
    for role, path in files.items():
        name = secret_env(role)
        if env.get(name):
            out[role] = check_secret(env[name].encode("utf-8"), name)
        elif path is not None:
            out[role] = read_secret_file(path, where[role])
    return out
