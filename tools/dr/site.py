"""Where the DR site is and how to reach it: its URL (``dds://HOST:PORT[,...]/CLUSTER``,
kept in the primary's DR record) and the admin credentials for it, given on the command
line the way a cluster target's are, each option prefixed ``--site-``."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

import attrs
import click

from dds.auth import Credentials
from dds.config import ConfigError, format_address, parse_address

from dds.tools.cluster import Target, read_secret, resolve_target
from dds.tools.runner import AdminError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["SiteURL", "parse_site_url", "site_options", "SiteOptions", "site_target", "url_of"]

_URL = re.compile(r"^dds://(?P<seeds>[^/]+)/(?P<cluster>[A-Za-z0-9_.-]{1,64})$")


@attrs.frozen
class SiteURL:
    """A cluster's seeds and name, as one text."""

    seeds: tuple[tuple[str, int], ...]
    cluster: str

    def text(self) -> str:
        return f"dds://{','.join(format_address(h, p) for h, p in self.seeds)}/{self.cluster}"


def parse_site_url(text: str) -> SiteURL:
    """``dds://HOST:PORT[,HOST:PORT...]/CLUSTER``, or ``AdminError`` saying what is wrong."""
    m = _URL.match(text.strip())
    if m is None:
        raise AdminError(f"--site {text!r}: expected dds://HOST:PORT[,HOST:PORT...]/CLUSTER")
    try:
        seeds = tuple(parse_address(s.strip()) for s in m["seeds"].split(",") if s.strip())
    except ConfigError as e:
        raise AdminError(f"--site {text!r}: {e.message}") from None
    if not seeds:
        raise AdminError(f"--site {text!r}: no HOST:PORT given")
    return SiteURL(seeds, m["cluster"])


@attrs.frozen
class SiteOptions:
    """The ``--site-*`` credential options as given."""

    secret_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    dir: Path | None = None

    @property
    def given(self) -> bool:
        return any((self.secret_file, self.ca_file, self.cert_file, self.key_file,
                    self.dir))


_NAMES = ("site_secret_file", "site_ca_file", "site_cert_file", "site_key_file", "site_dir")


def site_options(fn: F) -> F:
    """``--site-secret-file`` or ``--site-ca-file/--site-cert-file/--site-key-file`` or
    ``--site-dir``: the command gets ``site=SiteOptions(...)`` instead."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = [kwargs.pop(n) for n in _NAMES]
        return fn(*args, site=SiteOptions(*given), **kwargs)
    for name, text in reversed((
            ("--site-secret-file", "file holding the DR site's admin secret"),
            ("--site-ca-file", "TLS: the DR site's cluster CA certificate"),
            ("--site-cert-file", "TLS: an admin certificate of the DR site"),
            ("--site-key-file", "TLS: its private key"))):
        wrapper = click.option(name, type=click.Path(dir_okay=False), default=None,
                               help=text)(wrapper)
    wrapper = click.option("--site-dir", type=click.Path(path_type=Path), default=None,
                           help="the DR site is a local cluster in this directory (`dds-admin "
                                "local up --dir`): its seeds, name and credentials")(wrapper)
    return wrapper  # type: ignore[return-value]


def site_target(url: SiteURL | None, options: SiteOptions) -> Target:
    """The DR site as a target: seeds and name from ``url`` (or the local cluster of
    ``--site-dir``), admin credentials from the ``--site-*`` options."""
    local: Target | None = None
    if options.dir is not None:
        local = resolve_target(None, None, True, options.dir, None)
    if url is None:
        if local is None:
            raise AdminError("the DR site is unknown: give --site dds://HOST:PORT/CLUSTER "
                             "(or --site-dir)")
        return local
    ca, cert, key = options.ca_file, options.cert_file, options.key_file
    if ca or cert or key:
        if not (ca and cert and key):
            raise AdminError("TLS to the DR site needs --site-ca-file, --site-cert-file "
                             "and --site-key-file")
        from dds.tls import load_tls_files
        try:
            files = load_tls_files(ca, cert, key, cluster=url.cluster, role="admin")
        except ConfigError as e:
            raise AdminError(e.message) from None
        creds = Credentials("admin", {}, files)
    elif options.secret_file:
        creds = Credentials.shared("admin", read_secret(options.secret_file))
    elif local is not None:
        creds = local.credentials
    else:
        raise AdminError("no credentials for the DR site: give --site-secret-file, "
                         "--site-ca-file/--site-cert-file/--site-key-file or --site-dir")
    return Target(url.seeds, creds, url.cluster, options.dir)


def url_of(target: Target) -> SiteURL:
    """The URL naming a target (a local cluster given by ``--site-dir``)."""
    return SiteURL(target.seeds, target.cluster)
