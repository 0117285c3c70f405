"""The DDS library: ``DDSClient`` (Twisted), ``AsyncDDSClient`` (asyncio) and
``BlockingDDSClient`` (threads).

``BlockingDDSClient`` is imported lazily: it starts a reactor thread on first use, and a
Twisted service must never pay for (or be surprised by) that.  ``AsyncDDSClient`` is lazy
too, so that only asyncio services load Twisted's asyncio reactor module.
"""

from typing import Any

from dds.lib.bounded import LINEARIZABLE, Bounded
from dds.lib.client import DDSClient, GetResult

__all__ = ["DDSClient", "GetResult", "Bounded", "LINEARIZABLE", "BlockingDDSClient",
           "AsyncDDSClient"]


def __getattr__(name: str) -> Any:
    if name == "BlockingDDSClient":
        from dds.lib.blocking import BlockingDDSClient
        return BlockingDDSClient
    if name == "AsyncDDSClient":
        from dds.lib.aio import AsyncDDSClient
        return AsyncDDSClient
    raise AttributeError(name)
