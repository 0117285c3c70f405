"""twistd plugin: ``twistd -n dds-brick --config conf/brick.toml`` (``dds.bricks.tap``).

This directory holds only ``twisted/plugins`` (no ``__init__.py``: Twisted's plugin
package gathers every ``twisted/plugins`` directory on the path).  ``setup.py``
installs this file into ``twisted/plugins``, or, for an editable install, puts
``plugin/`` on the path with a ``.pth`` file: never the repository root, whose
``tools``, ``lib`` and ``tests`` folders must not become top-level packages.
"""
from dds.bricks.tap import serviceMaker  # noqa: F401
