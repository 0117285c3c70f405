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
from dds.bricks.server import Brick

READY_FILE = "ready.json"


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
        self.brick = Brick(cfg, self.reactor)
        self.port = self.reactor.listenTCP(cfg.brick.port, self.brick.factory(),
                                           interface=cfg.brick.host)
        rpc_port: int = self.port.getHost().port  # type: ignore[union-attr]
        http_port = None
        if cfg.brick.http_port >= 0:
            self.http_port = self.reactor.listenTCP(
                cfg.brick.http_port, make_site(self.brick.metrics, self.health),
                interface=cfg.brick.host)
            http_port = self.http_port.getHost().port  # type: ignore[union-attr]
        self.brick.port = rpc_port
        self.brick.start()
        ready = cfg.data_dir / READY_FILE
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps({"id": cfg.brick.id, "host": cfg.brick.host,
                                   "port": rpc_port, "http_port": http_port,
                                   "pid": os.getpid()}))
        os.replace(tmp, ready)
        self.log.info("brick {brick} serving on {host}:{port} (http {http_port}), "
                      "durability {durability}", brick=cfg.brick.id, host=cfg.brick.host,
                      port=rpc_port, http_port=http_port, durability=cfg.brick.durability)

    def health(self) -> dict[str, object]:
        b = self.brick
        ok = b is not None and not b._stopping and len(b.maps.map) > 0
        return {"ok": ok, "brick": self.config.brick.id,
                "map_records": len(b.maps.map) if b else 0,
                "reactor": type(self.reactor).__name__}

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.log.info("brick {brick} stopping", brick=self.config.brick.id)
        for port in (self.port, self.http_port):
            if port is not None:
                stopping = port.stopListening()
                if stopping is not None:
                    await stopping
        if self.brick is not None:
            await self.brick.stop()
        (self.config.data_dir / READY_FILE).unlink(missing_ok=True)
