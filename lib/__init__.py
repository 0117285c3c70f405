"""The DDS library: ``DDSClient`` (Twisted) and ``BlockingDDSClient`` (threads).

``BlockingDDSClient`` is imported lazily: it starts a reactor thread on first use, and a
Twisted service must never pay for (or be surprised by) that.
"""

from typing import Any

from dds.lib.client import DDSClient, GetResult

__all__ = ["DDSClient", "GetResult", "BlockingDDSClient"]


def __getattr__(name: str) -> Any:
    if name == "BlockingDDSClient":
        from dds.lib.blocking import BlockingDDSClient
        return BlockingDDSClient
    raise AttributeError(name)
