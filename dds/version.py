"""The version of DDS, from the installed distribution's metadata (``setup.py``)."""

from __future__ import annotations

from importlib import metadata

__all__ = ["VERSION"]

try:
    VERSION: str = metadata.version("dds")
except metadata.PackageNotFoundError:      # run from a source tree without installing
    VERSION = "0+unknown"
