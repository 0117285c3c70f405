"""Credentials on disk for clusters the admin tool starts itself (``local up``, the
benchmarks): one shared secret per role, or a cluster CA with a certificate per party.

Layout under a directory ``D``::

    D/secrets/brick, D/secrets/admin, D/secrets/client    (mode 0600, in a 0700 folder)
    D/tls/ca.crt, ca.key, <id>.crt, <id>.key, admin.*, client.*   (TLS mode)

A brick's configuration names them in its ``[auth]`` section (``auth_toml``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from dds.auth import ROLES, Credentials, read_secret_file, secret_env

__all__ = ["write_role_secrets", "role_secrets", "role_env", "auth_toml", "write_tls",
           "client_credentials", "tls_dir", "secrets_dir"]


def secrets_dir(root: Path) -> Path:
    return root / "secrets"


def tls_dir(root: Path) -> Path:
    return root / "tls"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_role_secrets(root: Path) -> dict[str, Path]:
    """A fresh 32-byte secret per role, unless the files exist (a restart keeps them)."""
    folder = secrets_dir(root)
    _private_dir(folder)
    out = {}
    for role in ROLES:
        path = folder / role
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        out[role] = path
    return out


def role_secrets(root: Path) -> dict[str, bytes]:
    return {role: read_secret_file(secrets_dir(root) / role, f"{role} secret")
            for role in ROLES}


def role_env(root: Path) -> dict[str, str]:
    """The secrets as environment variables (DDS_BRICK_SECRET, …) for child processes."""
    return {secret_env(role): secret.decode() for role, secret in role_secrets(root).items()}


def write_tls(root: Path, cluster: str, brick_ids: list[str]) -> Path:
    """A cluster CA and certificates for every brick, ``admin`` and ``client``, unless
    the CA exists (a restart keeps them; missing brick certificates are issued)."""
    from dds import tls
    folder = tls_dir(root)
    _private_dir(folder)
    ca_key_path, ca_path = folder / "ca.key", folder / "ca.crt"
    if not ca_path.exists():
        ca_key, ca_cert = tls.make_ca(cluster, 3650)
        tls.write_key(ca_key_path, ca_key, False)
        tls.write_cert(ca_path, ca_cert, False)
    signer, ca_cert = tls.load_ca(ca_key_path, ca_path)
    wanted = [("brick", b) for b in brick_ids] + [("admin", "admin"), ("client", "client")]
    for role, name in wanted:
        if (folder / f"{name}.crt").exists():
            continue
        key, cert = tls.issue(signer, ca_cert, cluster, role, name, 825)
        tls.write_key(folder / f"{name}.key", key, True)
        tls.write_cert(folder / f"{name}.crt", cert, True)
    return folder


def auth_toml(root: Path, brick_id: str, use_tls: bool) -> str:
    """The ``[auth]`` section of a brick configuration under ``root``."""
    if use_tls:
        folder = tls_dir(root)
        return (f'[auth]\nmode = "tls"\nca_file = "{folder / "ca.crt"}"\n'
                f'cert_file = "{folder / f"{brick_id}.crt"}"\n'
                f'key_file = "{folder / f"{brick_id}.key"}"\n')
    folder = secrets_dir(root)
    return ("[auth]\n" + "".join(f'{role}_secret_file = "{folder / role}"\n'
                                 for role in ROLES))


def client_credentials(root: Path, cluster: str, role: str = "client") -> Credentials:
    """What a library or admin of the cluster under ``root`` connects with."""
    folder = tls_dir(root)
    if (folder / f"{role}.crt").exists():
        from dds.tls import load_tls_files
        return Credentials(role, {}, load_tls_files(folder / "ca.crt", folder / f"{role}.crt",
                                                    folder / f"{role}.key", cluster=cluster,
                                                    role=role))
    return Credentials.shared(role, read_secret_file(secrets_dir(root) / role,
                                                     f"{role} secret"))
