"""What every ``dds-admin`` command shares on the command line: failures printed as
``error:`` lines (exit status 1), and the cluster target, declared and resolved once.

A command that talks to a running cluster is decorated with :func:`cluster_target`: it
takes ``--seeds host:port,...`` with ``--secret-file`` (the admin role's secret, or
DDS_ADMIN_SECRET) or ``--ca-file/--cert-file/--key-file`` (TLS), or ``--local`` /
nothing, which uses the local cluster in ``--dir`` (default ``./.dds-local``); the
command itself receives the resolved :class:`~dds.tools.cluster.Target` as ``target``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.markup import escape

from dds.config import ConfigError

from dds.tools import ui
from dds.tools.cluster import DEFAULT_LOCAL_DIR, Target, resolve_target
from dds.tools.runner import AdminError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["fail", "reports_errors", "tls_options", "tls_from_context", "cluster_target",
           "cluster_target_resolver", "target_of"]

#: The target options' parameter names, taken out of the command's keyword arguments.
_TARGET_PARAMS = ("seeds", "secret_file", "cluster_name", "local", "local_dir")


def fail(lines: list[str]) -> NoReturn:
    """``error: <line>`` for each line on stderr, exit status 1."""
    for line in lines:
        ui.err.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
    sys.exit(1)


def reports_errors(fn: F) -> F:
    """An :class:`AdminError` or :class:`ConfigError` becomes ``error:`` lines and exit
    status 1; an interrupt, ``interrupted`` and 130."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AdminError as e:
            fail(e.lines)
        except ConfigError as e:
            fail([e.message])
        except KeyboardInterrupt:
            ui.err.print("interrupted")
            sys.exit(130)
    return wrapper  # type: ignore[return-value]


def _remember_tls(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """The TLS options are read by :func:`tls_from_context` from the context, not passed
    to each command: every command takes them the same way."""
    if value:
        ctx.meta.setdefault("dds_tls", {})[param.name] = value


def tls_from_context() -> tuple[str, str, str] | None:
    """The ``(ca, cert, key)`` files given, None without TLS; all three or none."""
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get("dds_tls", {}) if ctx is not None else {}
    if not given:
        return None
    missing = [f"--{n.replace('_', '-')}" for n in ("ca_file", "cert_file", "key_file")
               if n not in given]
    if missing:
        raise AdminError(f"TLS needs --ca-file, --cert-file and --key-file; missing "
                         f"{', '.join(missing)}")
    return given["ca_file"], given["cert_file"], given["key_file"]


def tls_options(fn: F) -> F:
    """``--ca-file/--cert-file/--key-file`` (or DDS_CA_FILE, …): connect with mutual TLS
    as the admin role."""
    for name, env, text in (("key-file", "DDS_KEY_FILE", "this admin's private key"),
                            ("cert-file", "DDS_CERT_FILE", "this admin's certificate "
                             "(dds-admin certs issue --role admin)"),
                            ("ca-file", "DDS_CA_FILE", "the cluster CA certificate")):
        fn = click.option(f"--{name}", envvar=env, type=click.Path(dir_okay=False),
                          expose_value=False, callback=_remember_tls, is_eager=True,
                          help=f"TLS: {text} (or {env})")(fn)
    return fn


def _target_options(fn: F) -> F:
    """``--seeds/--secret-file/--cluster`` (or TLS files) or ``--local/--dir``."""
    fn = click.option("--dir", "local_dir", type=click.Path(path_type=Path),
                      default=DEFAULT_LOCAL_DIR, show_default=True,
                      help="local cluster directory (used without --seeds)")(fn)
    fn = click.option("--local", is_flag=True,
                      help="use the local cluster in --dir (the default without --seeds)")(fn)
    fn = click.option("--cluster", "cluster_name", default=None,
                      help="cluster name for the handshake (default: dds, or the local "
                           "cluster's)")(fn)
    fn = click.option("--secret-file", type=click.Path(dir_okay=False), default=None,
                      help="file holding the admin role's shared secret (or set "
                           "DDS_ADMIN_SECRET)")(fn)
    fn = click.option("--seeds", default=None, metavar="HOST:PORT,...",
                      help="bricks to fetch the map from")(fn)
    return tls_options(fn)


def target_of(params: Mapping[str, Any]) -> Target:
    """The target that parsed target options name (a command's ``ctx.params``): how a
    subcommand uses its group's options (``bench --seeds ... contention``)."""
    return resolve_target(params.get("seeds"), params.get("secret_file"),
                          bool(params.get("local")),
                          params.get("local_dir") or DEFAULT_LOCAL_DIR,
                          params.get("cluster_name"), tls_from_context())


def _resolver(kwargs: dict[str, Any]) -> Callable[[], Target]:
    """Takes the target options out of ``kwargs``; resolves them when called."""
    given = {n: kwargs.pop(n) for n in _TARGET_PARAMS}
    return lambda: target_of(given)


def cluster_target(fn: F) -> F:
    """The cluster-target options; the command is called with ``target=`` (the resolved
    :class:`Target`) instead of them.  A target that cannot be resolved is an
    ``error:`` line (exit status 1) before the command runs."""
    @reports_errors
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        resolve = _resolver(kwargs)
        return fn(*args, target=resolve(), **kwargs)
    return _target_options(wrapper)  # type: ignore[return-value]


def cluster_target_resolver(fn: F) -> F:
    """:func:`cluster_target` for a command that may not need the cluster: it is called
    with ``resolve_target=``, a function returning the :class:`Target` (resolved, and
    failing, only when called)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, resolve_target=_resolver(kwargs), **kwargs)
    return _target_options(wrapper)  # type: ignore[return-value]
