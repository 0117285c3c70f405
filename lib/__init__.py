"""The DDS library: ``DDSClient`` (Twisted) and ``BlockingDDSClient`` (threads)."""

from dds.lib.client import DDSClient, GetResult

__all__ = ["DDSClient", "GetResult"]
