"""Helper processes that speak JSON lines: one command per line on stdin, events on
stdout.  Used by ``dds-admin bench`` for the floor pair and the load workers.

A thread per child reads its stdout into one shared queue, so the parent waits on the
queue (with a deadline) for whichever child speaks next; end of output is posted as an
``exit`` event.  The last lines of each child's stderr are kept for error messages.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, IO

from dds.tools.runner import AdminError, wait_for

__all__ = ["Child", "Events"]

Events = queue.Queue[tuple["Child", dict[str, Any]]]


class Child:
    def __init__(self, name: str, module: str, args: Iterable[str], events: Events,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.events = events
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            env={**os.environ, **(env or {})})
        self.pid = self.proc.pid
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._read_stdout, args=(self.proc.stdout,),
                         daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(self.proc.stderr,),
                         daemon=True).start()

    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                self.stderr_tail.append(line.rstrip())
                continue
            self.events.put((self, event))
        self.events.put((self, {"event": "exit"}))

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self.stderr_tail.append(line.rstrip())

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def failure(self, what: str) -> AdminError:
        tail = [f"  {line[:300]}" for line in list(self.stderr_tail)[-8:]]
        return AdminError(f"{self.name} (pid {self.pid}) {what}", *tail)

    def stop(self, timeout: float = 5.0) -> None:
        """Close stdin (the polite way to end), then terminate/kill after deadlines."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        if wait_for(lambda: self.proc.poll() is not None, timeout):
            return
        self.proc.terminate()
        if not wait_for(lambda: self.proc.poll() is not None, timeout):
            self.proc.kill()
            self.proc.wait(timeout)


def next_event(events: Events, deadline: float, what: str) -> tuple[Child, dict[str, Any]]:
    """The next event from any child; AdminError if none arrives before ``deadline``
    (a ``time.monotonic()`` value) or a child's output ended."""
    try:
        child, event = events.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        raise AdminError(f"timed out waiting for {what}") from None
    if event.get("event") == "exit":
        raise child.failure(f"exited while {what}"
                            f" (exit status {child.proc.poll()})")
    return child, event
