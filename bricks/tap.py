"""twistd plugin face: ``twistd -n dds-brick --config conf/brick.toml``.

The brick logs as its ``[log]`` section says under twistd too: twistd starts logging
after it made the service, with the observer the application carries if it has one
(``twisted.application.app.AppLogger.start``), so the service puts the brick's observer
(``dds.logs.make_observer``) on the application when it is given it as a parent.  What
twistd's own options say about logging (``--logfile``, ``--syslog``) is then unused:
``log.file`` decides.  SIGHUP reopens the log file, as under ``dds-brick``.  A bad
configuration, or a log file that cannot be opened, is one line on stderr and exit
status 2, as for ``dds-brick``.

The plugin module is ``plugin/twisted/plugins/dds_brick.py``; ``setup.py`` installs it
into ``twisted/plugins`` (and, for an editable install, puts its directory on the path),
so twistd finds it from any directory.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.application.service import IService, MultiService, ServiceMaker
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from dds.config import BrickConfig, ConfigError, load_brick_config
from dds.logs import LineObserver, make_observer
from dds.version import VERSION

log = Logger()


class Options(usage.Options):
    optParameters = [["config", "c", None, "brick configuration file (TOML)"]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required")


class LoggedBrick(MultiService):
    """The brick's service, bringing its log observer to the twistd application."""

    def __init__(self, brick: IService, config: BrickConfig, observer: ILogObserver,
                 lines: LineObserver, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.observer = observer
        self.lines = lines
        self.reactor = reactor
        brick.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized):       # twistd's application
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        """The brick starts once the reactor runs, as under ``dds-brick``: twistd starts
        the application before ``reactor.run`` installs its SIGTERM handler, and a brick
        that announced itself (``ready.json``, systemd's READY) must stop cleanly on
        SIGTERM from then on."""
        signal.signal(signal.SIGHUP, lambda _sig, _frame: self.reactor.callFromThread(
            self._reopen))
        log.info("brick {brick} (dds {version}) runs under twistd on {reactor_name}",
                 brick=self.config.brick.id, version=VERSION,
                 reactor_name=type(self.reactor).__name__)
        self.reactor.callWhenRunning(self._start)

    def _start(self) -> None:
        if not self.running:
            MultiService.startService(self)

    def _reopen(self) -> None:
        try:
            self.lines.reopen()
        except OSError as e:
            log.error("could not reopen the log file {path}: {error}", path=self.lines.path,
                      error=e.strerror or str(e))
        else:
            log.info("reopened the log file {path}", path=self.lines.path)


def _exit(message: str) -> SystemExit:
    print(f"dds-brick: {message}", file=sys.stderr)
    return SystemExit(2)


def makeService(options: Any) -> IService:
    from twisted.internet import reactor

    from dds.bricks.service import BrickService, private_files

    try:
        config = load_brick_config(options["config"])
    except ConfigError as e:
        raise _exit(e.message) from None
    private_files()
    try:
        observer, lines = make_observer(config.log.level, config.log.format,
                                        str(config.log_file) if config.log_file else None,
                                        node=config.brick.id)
    except OSError as e:
        raise _exit(f"{config.source}: log.file: cannot open {str(config.log_file)!r}: "
                    f"{e.strerror or e}") from None
    return LoggedBrick(BrickService(config, reactor), config, observer, lines, reactor)


serviceMaker = ServiceMaker("dds-brick", "dds.bricks.tap", "A DDS storage brick", "dds-brick")
