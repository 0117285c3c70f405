"""The brick as a Twisted service: listen, serve HTTP, stop cleanly.

Used by both faces, ``dds-brick`` and ``twistd dds-brick``.  On start it writes a small
``ready`` file in its data directory with the ports it actually bound, so that tools
that start bricks with port 0 learn where they listen.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from dds.config import BrickConfig

from dds.bricks.http import make_site
from dds.bricks.sdnotify import notify
from dds.bricks.server import Brick

READY_FILE = "ready.json"


def private_files() -> None:
    """Everything the brick creates from now on (partition files, transaction logs,
    the map, its log file) is its owner's alone: 0600 files, 0700 directories.  Keys
    and values are not for other users of the host."""
    os.umask(0o077)


class BrickService(Service):
    log = Logger()

    def __init__(self, config: BrickConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.brick: Brick | None = None
        self.port: IListeningPort | None = None
        self.http_port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        cfg = self.config
        private_files()
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cfg.data_dir, 0o700)
        self.brick = Brick(cfg, self.reactor)
        self.port = self.reactor.listenTCP(cfg.brick.port, self.brick.factory(),
                                           interface=cfg.listen_host)
        rpc_port: int = self.port.getHost().port  # type: ignore[union-attr]
        http_port = None
        if cfg.brick.http_port >= 0:
            self.http_port = self.reactor.listenTCP(
                cfg.brick.http_port, make_site(self.brick.metrics, self.health),
                interface=cfg.http_host)
            http_port = self.http_port.getHost().port  # type: ignore[union-attr]
        self.brick.port = rpc_port
        self.brick.start()
        ready = cfg.data_dir / READY_FILE
        tmp = ready.with_suffix(".tmp")
        stream = self.brick.copies._stream
        tmp.write_text(json.dumps({"id": cfg.brick.id, "host": cfg.advertise_host,
                                   "port": rpc_port, "http_port": http_port,
                                   "stream_port": stream.port if stream else None,
                                   "pid": os.getpid()}))
        os.replace(tmp, ready)
        self.log.info("brick {brick} serving on {host}:{port} (http {http_port}), "
                      "durability {durability}, auth {auth}", brick=cfg.brick.id,
                      host=cfg.listen_host, auth=cfg.credentials.mode,
                      port=rpc_port, http_port=http_port, durability=cfg.brick.durability)
        notify(f"READY=1\nSTATUS=brick {cfg.brick.id} serving on {cfg.listen_host}:{rpc_port}")

    def health(self) -> dict[str, object]:
        """200 once the brick has a map and serves every RG it is in; 503 before, while
        stopping, and while it re-syncs an RG after a restart (``resyncing``): a rolling
        restart waits for 200 before it restarts the next brick."""
        b = self.brick
        resyncing = sorted(b.recoveries.blocked) if b is not None else []
        ok = (b is not None and not b.data.stopping and len(b.maps.map) > 0
              and not resyncing)
        return {"ok": ok, "brick": self.config.brick.id,
                "map_records": len(b.maps.map) if b else 0, "resyncing": resyncing,
                "reactor": type(self.reactor).__name__}

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.log.info("brick {brick} stopping", brick=self.config.brick.id)
        notify("STOPPING=1")
        for port in (self.port, self.http_port):
            if port is not None:
                stopping = port.stopListening()
                if stopping is not None:
                    await stopping
        if self.brick is not None:
            await self.brick.stop()
        (self.config.data_dir / READY_FILE).unlink(missing_ok=True)
