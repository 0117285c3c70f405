"""twistd plugin face: ``twistd -n dds-brick --config conf/brick.toml``."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, ServiceMaker
from twisted.python import usage

from dds.config import load_brick_config


class Options(usage.Options):
    optParameters = [["config", "c", None, "brick configuration file (TOML)"]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required")


def makeService(options: Any) -> IService:
    from twisted.internet import reactor

    from dds.bricks.service import BrickService

    return BrickService(load_brick_config(options["config"]), reactor)


serviceMaker = ServiceMaker("dds-brick", "dds.bricks.tap", "A DDS storage brick", "dds-brick")
