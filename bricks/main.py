"""``dds-brick --config brick.toml``: run one brick in the foreground.

SIGTERM and SIGINT stop the reactor, which stops the service: listening ends, prepared
transactions get a bounded time to finish, storage is flushed, and the process exits 0.
A bad configuration exits 2 with the problem named on stderr, before anything starts.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from pathlib import Path
from typing import Any

from dds.config import ConfigError, describe, load_brick_config, BrickConfig
from dds.logs import start_logging
from dds.version import VERSION
from twisted.logger import Logger

log = Logger()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dds-brick", description="Run a DDS storage brick.")
    p.add_argument("--config", "-c", type=Path, help="brick configuration file (TOML)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting, e.g. --set brick.port=0 (repeatable)")
    p.add_argument("--help-config", action="store_true",
                   help="print every setting with its default and documentation")
    p.add_argument("--version", action="version", version=f"dds-brick {VERSION}")
    return p.parse_args(argv)


def _overrides(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        value: object = raw
        if raw.lstrip("-").isdigit():
            value = int(raw)
        elif raw in ("true", "false"):
            value = raw == "true"
        out[key.strip()] = value
    return out


def freeze_startup_heap() -> None:
    """Move everything alive after start-up (modules, classes, functions, the map) out of
    the cyclic collector's reach.

    A full collection walks every tracked object while the reactor waits: ~80,000 of
    them in a serving brick, 14-50 ms of CPU each time (and two to three times that in
    wall time on a loaded machine), and every put in flight waits for it.  The start-up
    heap is two thirds of those objects and is never garbage; freezing it leaves the
    collector the objects made while serving (docs/performance.md, "Garbage collection").
    """
    gc.collect()
    gc.freeze()


def _reopen(lines: Any) -> None:
    try:
        lines.reopen()
    except OSError as e:
        log.error("could not reopen the log file {path}: {error}", path=lines.path,
                  error=e.strerror or str(e))
    else:
        log.info("reopened the log file {path}", path=lines.path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.help_config:
        print(describe(BrickConfig))
        return 0
    if args.config is None:
        print("dds-brick: --config is required", file=sys.stderr)
        return 2
    try:
        config = load_brick_config(args.config, overrides=_overrides(args.set))
    except ConfigError as e:
        print(f"dds-brick: {e.message}", file=sys.stderr)
        return 2
    try:
        from dds import failpoints  # noqa: F401  (reads DDS_FAILPOINTS, may refuse it)
    except ConfigError as e:
        print(f"dds-brick: {e.message}", file=sys.stderr)
        return 2
    from dds.bricks.reactor import install
    install()
    from twisted.internet import reactor

    from dds.bricks.service import BrickService, private_files

    private_files()
    try:
        lines = start_logging(config.log.level, config.log.format,
                              str(config.log_file) if config.log_file else None,
                              node=config.brick.id)
    except OSError as e:
        print(f"dds-brick: {config.source}: log.file: cannot open {str(config.log_file)!r}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 2
    # logrotate moves the file away and sends SIGHUP: write to a new one by the same name.
    signal.signal(signal.SIGHUP, lambda _sig, _frame: reactor.callFromThread(  # type: ignore[attr-defined]
        _reopen, lines))
    log.info("brick {brick} (dds {version}) runs on {reactor_name}", brick=config.brick.id,
             version=VERSION, reactor_name=type(reactor).__name__)
    service = BrickService(config, reactor)
    exit_code = [0]

    def start() -> None:
        try:
            service.startService()
        except Exception as e:   # e.g. the port is taken: say so and exit non-zero
            log.critical("brick {brick} could not start: {error}", brick=config.brick.id,
                         error=str(e))
            print(f"dds-brick: could not start: {e}", file=sys.stderr)
            exit_code[0] = 1
            reactor.stop()
            return
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        freeze_startup_heap()

    reactor.callWhenRunning(start)
    reactor.run()
    return exit_code[0]


if __name__ == "__main__":
    sys.exit(main())
