"""The child's side of the JSON-lines exchange with :class:`dds.tools.children.Child`:
one event a line on stdout, one command a line on stdin, read in a thread so that the
process's reactor keeps running."""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import threads

__all__ = ["emit", "next_command"]


def emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def next_command() -> dict[str, Any] | None:
    """The next command from the bench, or None once stdin is closed."""
    line = await threads.deferToThread(sys.stdin.readline)
    if not line:
        return None
    command: dict[str, Any] = json.loads(line)
    return command
