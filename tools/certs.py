"""``dds-admin certs``: the cluster CA and the certificates it issues (DESIGN §10).

``init`` makes a CA for one cluster, ``issue`` a key and certificate naming a role
(brick, admin, client) and an id, ``show`` what a certificate names and how long it has
left.  Private keys are created mode 0600 in directories created 0700, and nothing is
overwritten without ``--force``: replacing a CA silently would orphan every certificate
it issued.  Errors are one ``error:`` line naming the file.
"""

from __future__ import annotations

import datetime
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from cryptography import x509
from rich.markup import escape

from dds import tls
from dds.errors import ConfigError
from dds.tools import ui

__all__ = ["certs", "EXPIRES_SOON_DAYS"]

#: ``show`` warns when a certificate has fewer days left than this.
EXPIRES_SOON_DAYS = 30
#: Cluster names as ``dds.config`` accepts them (``cluster.name``).
CLUSTER_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: ``show``'s exit status for a file that holds no certificate (1 is "expired").
EXIT_NOT_A_CERTIFICATE = 2


def _fail(line: str, code: int = 1) -> NoReturn:
    ui.err.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
    sys.exit(code)


def _when(dt: datetime.datetime) -> str:
    return f"{dt:%Y-%m-%d %H:%M} UTC"


def _private_dir(path: Path) -> None:
    """``path`` as a directory, created 0700 if missing (it will hold private keys)."""
    if path.exists():
        if not path.is_dir():
            _fail(f"{path}: exists and is not a directory")
        return
    try:
        path.mkdir(mode=0o700, parents=True)
        path.chmod(0o700)
    except OSError as e:
        _fail(f"{path}: cannot create the directory: {e.strerror or e}")


def _refuse_existing(paths: list[Path], force: bool, what: str) -> None:
    if force:
        return
    for p in paths:
        if p.exists() or p.is_symlink():
            _fail(f"{p} already exists; {what}")


def _write(key_path: Path, key: tls.PrivateKey, cert_path: Path, cert: x509.Certificate,
           force: bool) -> None:
    for path, write in ((key_path, lambda: tls.write_key(key_path, key, force)),
                        (cert_path, lambda: tls.write_cert(cert_path, cert, force))):
        try:
            write()
        except FileExistsError:
            _fail(f"{path} already exists (created meanwhile?); nothing was replaced")
        except OSError as e:
            _fail(f"{path}: cannot write: {e.strerror or e}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def certs() -> None:
    """Mutual TLS: a cluster CA, and certificates for bricks, admins and clients."""


# -- init ------------------------------------------------------------------------------------

@certs.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cluster", required=True, help="the cluster's name (its [cluster] name)")
@click.option("--days", type=click.IntRange(1, 36500), default=3650, show_default=True,
              help="how long the CA is valid")
@click.option("--force", is_flag=True,
              help="replace a CA already there (every certificate it issued stops being "
                   "trusted)")
def init(directory: Path, cluster: str, days: int, force: bool) -> None:
    """Create a cluster CA in DIRECTORY: ca.key (mode 0600) and ca.crt."""
    if not CLUSTER_RE.fullmatch(cluster):
        raise click.BadParameter(f"must match {CLUSTER_RE.pattern}, got {cluster!r:.80}",
                                 param_hint="--cluster")
    key_path, cert_path = directory / "ca.key", directory / "ca.crt"
    _private_dir(directory)
    _refuse_existing([key_path, cert_path], force,
                     "a CA is there already (--force replaces it, and every certificate it "
                     "issued stops being trusted)")
    key, cert = tls.make_ca(cluster, days)
    _write(key_path, key, cert_path, cert, force)
    ui.out.print(f"created the CA of cluster [bold]{escape(cluster)}[/bold], valid until "
                 f"{_when(cert.not_valid_after_utc)}:\n"
                 f"  {escape(str(key_path))}  private key (mode 0600): keep it off the "
                 f"bricks, ideally offline\n"
                 f"  {escape(str(cert_path))}  certificate: give it to every brick, admin "
                 f"host and service\n"
                 f"next: dds-admin certs issue --role brick <id> --ca-dir "
                 f"{escape(str(directory))}", soft_wrap=True)


# -- issue -----------------------------------------------------------------------------------

def _check_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not tls.NAME_RE.fullmatch(value):
        raise click.BadParameter(f"must match {tls.NAME_RE.pattern} (it becomes file names "
                                 f"and the certificate's id), got {value!r:.80}")
    return value


@certs.command()
@click.option("--role", required=True, type=click.Choice(tls.ROLES),
              help="what the holder may do: brick (peer traffic), admin (dds-admin) or "
                   "client (the library)")
@click.argument("name", callback=_check_name)
@click.option("--ca-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="the directory `certs init` made (ca.key, ca.crt)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="where to write NAME.key and NAME.crt [default: --ca-dir]")
@click.option("--days", type=click.IntRange(1, 36500), default=825, show_default=True,
              help="how long the certificate is valid")
@click.option("--force", is_flag=True, help="replace NAME.key and NAME.crt if they exist")
def issue(role: str, name: str, ca_dir: Path, out_dir: Path | None, days: int,
          force: bool) -> None:
    """Issue a key and a certificate for NAME (a brick id, an admin or a service): the
    cluster is the CA's."""
    out = out_dir if out_dir is not None else ca_dir
    if not (ca_dir / "ca.crt").exists():
        _fail(f"{ca_dir / 'ca.crt'}: no CA there (`dds-admin certs init {ca_dir} --cluster "
              f"NAME` makes one)")
    try:
        ca_key, ca_cert = tls.load_ca(ca_dir / "ca.key", ca_dir / "ca.crt")
    except ConfigError as e:
        _fail(e.message)
    cluster = tls.describe(ca_cert)["cluster"]
    if not cluster:
        _fail(f"{ca_dir / 'ca.crt'}: the CA names no cluster (no O in its subject)")
    now = datetime.datetime.now(datetime.timezone.utc)
    if now > ca_cert.not_valid_after_utc:
        _fail(f"{ca_dir / 'ca.crt'}: the CA expired on {_when(ca_cert.not_valid_after_utc)}")
    key_path, cert_path = out / f"{name}.key", out / f"{name}.crt"
    if out.resolve() == ca_dir.resolve() and name == "ca":
        _fail(f"{key_path}: the name 'ca' would replace the CA's own files; choose another")
    _private_dir(out)
    _refuse_existing([key_path, cert_path], force, "--force replaces it")
    try:
        key, cert = tls.issue(ca_key, ca_cert, cluster, role, name, days, now=now)
    except ValueError as e:
        _fail(str(e))
    _write(key_path, key, cert_path, cert, force)
    ui.out.print(f"issued the [bold]{role}[/bold] certificate [bold]{escape(name)}[/bold] of "
                 f"cluster {escape(cluster)!r}, valid until "
                 f"{_when(cert.not_valid_after_utc)}:\n"
                 f"  {escape(str(key_path))}  private key (mode 0600)\n"
                 f"  {escape(str(cert_path))}  certificate", soft_wrap=True)
    if cert.not_valid_after_utc > ca_cert.not_valid_after_utc:
        ui.err.print(f"[yellow]warning:[/yellow] the CA expires first, on "
                     f"{_when(ca_cert.not_valid_after_utc)}: the certificate stops being "
                     f"trusted then", soft_wrap=True)


# -- show ------------------------------------------------------------------------------------

def _load_for_show(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as e:
        _fail(f"{path}: cannot read: {e.strerror or e}", EXIT_NOT_A_CERTIFICATE)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        hint = " (it holds a private key)" if b"PRIVATE KEY-----" in data else ""
        _fail(f"{path}: not a PEM certificate{hint}", EXIT_NOT_A_CERTIFICATE)


@certs.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def show(file: Path, as_json: bool) -> None:
    """What a certificate names and how long it is valid.  Exit status 0: valid; 1:
    expired (or not valid yet); 2: not a certificate."""
    cert = _load_for_show(file)
    now = datetime.datetime.now(datetime.timezone.utc)
    info: dict[str, Any] = {"file": str(file), **tls.describe(cert, now)}
    info["expired"] = now > cert.not_valid_after_utc
    info["not_yet_valid"] = now < cert.not_valid_before_utc
    info["expires_soon"] = (not info["expired"]
                            and info["days_left"] < EXPIRES_SOON_DAYS)
    if as_json:
        ui.print_json(info)
    else:
        _render(info, cert)
    if info["expired"] or info["not_yet_valid"]:
        sys.exit(1)


def _render(info: dict[str, Any], cert: x509.Certificate) -> None:
    rows = [("subject", info["subject"]), ("cluster", info["cluster"]),
            ("role", info["role"]), ("id", info["id"]), ("issuer", info["issuer"]),
            ("not before", _when(cert.not_valid_before_utc)),
            ("not after", _when(cert.not_valid_after_utc)),
            ("days left", f"{max(0.0, info['days_left']):.0f}"),
            ("serial", info["serial"]), ("sha256", info["sha256"])]
    ui.out.print(escape(info["file"]), soft_wrap=True)
    for label, value in rows:
        ui.out.print(f"  {label:<11} {escape(str(value if value is not None else '-'))}",
                     soft_wrap=True)
    if info["expired"]:
        status = f"[bold red]EXPIRED[/bold red] on {_when(cert.not_valid_after_utc)}"
    elif info["not_yet_valid"]:
        status = (f"[bold red]NOT YET VALID[/bold red]: valid from "
                  f"{_when(cert.not_valid_before_utc)}")
    elif info["expires_soon"]:
        status = (f"[yellow]warning: expires in {info['days_left']:.0f} days[/yellow] "
                  f"(fewer than {EXPIRES_SOON_DAYS}): issue a new one")
    else:
        status = "valid"
    ui.out.print(f"  {'status':<11} {status}", soft_wrap=True)
