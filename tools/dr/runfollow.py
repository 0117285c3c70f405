"""``dds-admin dr follow`` (and the follower ``dr attach`` runs): the follower as a
process, around ``follow.py``: the two clusters' clients (admin role on both), the
checks that the primary is attached to this DR site and the site follows it, structured
logs, ``/metrics`` and ``/healthz`` on ``--metrics-port``, a progress line on a terminal,
and a clean stop on SIGINT/SIGTERM (the checkpoint is written on the way out)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import attrs
import click
from rich.markup import escape

from dds.tools import ui
from dds.tools.cli import cluster_target, fail, reports_errors
from dds.tools.cluster import Target
from dds.tools.dr.site import SiteOptions, parse_site_url, site_options, site_target
from dds.tools.runner import AdminError, run

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["FollowOptions", "FollowerRefused", "follow", "follower_options", "run_follower",
           "run_or_exit"]

#: Seconds between two progress lines when stderr is not a terminal (the log gets one).
LOG_PROGRESS_S = 30.0
#: The exit status of a follower that stops for a refusal no restart can cure (the site
#: was promoted, the primary detached, a request refused for good): the systemd unit
#: does not restart it (``RestartPreventExitStatus``).
REFUSED_EXIT = 2


class FollowerRefused(AdminError):
    """The follower may not run, or may not go on, between these two clusters."""


@attrs.frozen
class FollowOptions:
    state: Path
    metrics_port: int | None
    metrics_host: str
    poll_ms: int
    parallel: int
    log_file: str | None
    log_level: str


_NAMES = ("state", "metrics_port", "metrics_host", "poll_ms", "parallel", "log_file",
          "log_level")


def follower_options(fn: F) -> F:
    """The follower's options; the command gets ``follower=FollowOptions(...)``."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, follower=FollowOptions(*(kwargs.pop(n) for n in _NAMES)), **kwargs)
    for option in reversed([
        click.option("--state", type=click.Path(dir_okay=False, path_type=Path),
                     default=Path("dr-follower.json"), show_default=True,
                     help="the follower's checkpoint file (where it resumes)"),
        click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
                     help="serve /metrics and /healthz on this port (0: any free one)"),
        click.option("--metrics-host", default="127.0.0.1", show_default=True,
                     help="address the metrics port listens on"),
        click.option("--poll-ms", type=click.IntRange(10, 60000), default=250,
                     show_default=True, help="pause at the end of a partition's stream"),
        click.option("--parallel", type=click.IntRange(1, 1024), default=16,
                     show_default=True, help="pages read and applied at once"),
        click.option("--log-file", type=click.Path(dir_okay=False), default=None,
                     help="JSON log lines to this file (default: text on stderr)"),
        click.option("--log-level", type=click.Choice(["debug", "info", "warn", "error"]),
                     default="info", show_default=True),
    ]):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


class _ConsoleLines:
    """A text stream for the log observer that prints through the terminal console, so
    log lines and the progress line do not garble each other."""

    def write(self, text: str) -> None:
        for line in text.rstrip("\n").split("\n"):
            ui.err.print(line, markup=False, highlight=False, soft_wrap=True)

    def flush(self) -> None:
        pass


def _start_logging(options: FollowOptions) -> None:
    """The brick's log observer (``dds.logs``: level, format, Twisted's chatter left
    out): JSON lines to ``--log-file``, else text lines through the terminal console."""
    from twisted.logger import globalLogBeginner

    from dds.logs import make_observer
    try:
        observer, lines = make_observer(options.log_level, "json" if options.log_file
                                        else "text", options.log_file, "dr-follower")
    except OSError as e:
        raise AdminError(f"--log-file {options.log_file}: {e.strerror or e}") from None
    if not options.log_file:
        lines.out = _ConsoleLines()                                 # type: ignore[assignment]
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False,
                                     discardBuffer=True)


async def _clients(reactor: Any, primary: Target, site: Target) -> tuple[Any, Any]:
    from dds.lib import DDSClient

    async def connect(t: Target) -> Any:
        return await DDSClient.connect(
            reactor, [f"{h}:{p}" for h, p in t.seeds], cluster=t.cluster,
            credentials=t.credentials, role="admin", metrics_registry=None, timeout=30.0,
            refresh_interval=5.0)
    return await connect(primary), await connect(site)


def check_pair(primary: Any, site: Any) -> str | None:
    """Why the follower may not run between these two maps (None: it may)."""
    prec, srec = primary.dr, site.dr
    if prec is None or not prec.attached:
        return ("the primary has no DR site attached (its DR record "
                f"{'is missing' if prec is None else 'names no site'}): run `dds-admin "
                "dr attach` first")
    if srec is None or srec.mode != "follower":
        return ("the DR site does not follow a primary ("
                + ("no DR record" if srec is None else
                   f"it is a primary, epoch {srec.epoch}") + "): it was promoted or never "
                "attached; nothing was applied")
    return None


async def run_follower(reactor: Any, primary_t: Target, site_t: Target,
                       options: FollowOptions) -> dict[str, Any]:
    """Follow until interrupted, or until the follower cannot go on (``AdminError``)."""
    from twisted.internet.error import CannotListenError

    from dds.bricks.http import make_site
    from dds.metricdefs import DR_FOLLOWER
    from dds.metrics import Metrics
    from dds.tools.dr.follow import Follower, FollowerSettings, FollowerStopped

    primary, site = await _clients(reactor, primary_t, site_t)
    try:
        problem = check_pair(primary.map, site.map)
        if problem is not None:
            raise FollowerRefused(problem)
        if site.map.dr.primary != primary.cluster:
            raise FollowerRefused(f"the DR site follows {site.map.dr.primary!r}, not "
                                  f"{primary.cluster!r}")
        metrics = Metrics(DR_FOLLOWER, None, process=True)
        follower = Follower(primary, site, options.state, metrics, FollowerSettings(
            poll_s=options.poll_ms / 1000.0, parallel=options.parallel))
        listening = None
        if options.metrics_port is not None:
            def health() -> dict[str, object]:
                return {"ok": not follower.stopping, **follower.summary()}
            try:
                listening = reactor.listenTCP(options.metrics_port,
                                              make_site(metrics, health, reactor),
                                              interface=options.metrics_host)
            except CannotListenError as e:
                raise AdminError(f"--metrics-port {options.metrics_port}: cannot listen "
                                 f"on {options.metrics_host}: {e.socketError}") from None
            port = listening.getHost().port
            follower.log.info("metrics on http://{host}:{port}/metrics",
                              host=options.metrics_host, port=port)
        reactor.addSystemEventTrigger("before", "shutdown", _on_shutdown, follower)
        ticker = _Progress(reactor, follower, primary, site, ui.err.is_terminal)
        try:
            await follower.run()
        except FollowerStopped as e:
            raise FollowerRefused(f"the DR follower stopped: {e}") from None
        finally:
            ticker.stop()
            if listening is not None:
                listening.stopListening()
        return follower.summary()
    finally:
        await primary.close()
        await site.close()


def _on_shutdown(follower: Any) -> None:
    """SIGINT or SIGTERM: write the checkpoint now (the pages in flight are applied
    again after a restart, idempotent by version)."""
    follower.stopping = True
    try:
        follower.save()
    except OSError as e:
        follower.log.error("checkpoint not written: {error}", error=str(e))


class _Progress:
    """A progress line (on a terminal) or a log line every ``LOG_PROGRESS_S``; stops the
    follower when either cluster's DR record no longer allows it (the maps are
    refreshed every few seconds by their clients)."""

    def __init__(self, reactor: Any, follower: Any, primary: Any, site: Any,
                 terminal: bool) -> None:
        from twisted.internet.task import LoopingCall

        self.follower = follower
        self.primary = primary
        self.site = site
        self.status = ui.err.status("starting the DR follower") if terminal else None
        if self.status is not None:
            self.status.start()
        self.every = 1.0 if terminal else LOG_PROGRESS_S
        self.call = LoopingCall(self.tick)
        self.call.clock = reactor
        self.call.start(1.0, now=False)
        self.last = 0.0
        self.clock = reactor

    def tick(self) -> None:
        from dds.tools.dr.sitewriter import FollowerStopped
        problem = check_pair(self.primary.map, self.site.map)
        if problem is not None:
            self.follower._fail(FollowerStopped(problem))
            return
        now = self.clock.seconds()
        if now - self.last < self.every:
            return
        self.last = now
        s = self.follower.summary()
        text = (f"following {s['partitions']} partitions: {s['rows']} rows in {s['pages']} "
                f"pages, lag p50 {s['lag_p50_s']:.2f}s p99 {s['lag_p99_s']:.2f}s, "
                f"{s['errors']} errors")
        if self.status is not None:
            self.status.update(text)
        else:
            self.follower.log.info("progress: {text}", text=text, **s)

    def stop(self) -> None:
        if self.call.running:
            self.call.stop()
        if self.status is not None:
            self.status.stop()


@click.command("follow")
@cluster_target
@click.option("--site", "url", default=None, metavar="dds://HOST:PORT[,...]/CLUSTER",
              help="the DR site (default: the one the primary's DR record names)")
@site_options
@follower_options
@reports_errors
def follow(target: Target, url: str | None, site: SiteOptions,
           follower: FollowOptions) -> None:
    """Run the DR follower: apply the primary's change stream (the cluster this command
    is run against) to its DR site, and report the DR site's progress back (the tags of
    write replies).  Runs until interrupted; resumes from --state.  Exits 2 when it may
    not go on (the site was promoted, the primary detached), 1 on other errors."""
    _start_logging(follower)

    async def go(reactor: Any) -> dict[str, Any]:
        site_t = await resolve_site(reactor, target, url, site)
        return await run_follower(reactor, target, site_t, follower)
    run_or_exit(go)


def run_or_exit(go: Any) -> Any:
    """``run(go)``; an error as ``error:`` lines, exit status 2 for a refusal."""
    try:
        return run(go)
    except FollowerRefused as e:
        for line in e.lines:
            ui.err.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
        sys.exit(REFUSED_EXIT)
    except AdminError as e:
        fail(e.lines)


async def resolve_site(reactor: Any, primary_t: Target, url: str | None,
                       site: SiteOptions) -> Target:
    """The DR site: ``--site``/``--site-dir``, else the URL the primary's DR record
    names (with the ``--site-*`` credentials)."""
    if url:
        return site_target(parse_site_url(url), site)
    if site.dir is not None and not (site.secret_file or site.ca_file):
        return site_target(None, site)
    from dds.tools.cluster import fetch_map
    cmap, _ = await fetch_map(reactor, primary_t)
    rec = cmap.dr
    if rec is None or not rec.attached:
        raise AdminError("the primary has no DR site attached: run `dds-admin dr attach "
                         "--site URL` first, or give --site")
    return site_target(parse_site_url(rec.site), site)
