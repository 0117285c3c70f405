"""systemd readiness (``Type=notify``): tell the service manager when the brick serves.

systemd passes a datagram socket in ``NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace); ``READY=1`` there means "listening and serving", so units ordered
after the brick start only then, and ``systemctl start`` returns only then.  Without
the variable (not under systemd) nothing is sent.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["notify"]


def notify(state: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send ``state`` (``"READY=1\\nSTATUS=…"``, ``"STOPPING=1"``); whether it was sent."""
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError:
        return False
    return True
