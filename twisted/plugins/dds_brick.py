"""twistd plugin: ``twistd -n dds-brick --config conf/brick.toml``."""
from dds.bricks.tap import serviceMaker  # noqa: F401
