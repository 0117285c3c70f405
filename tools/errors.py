"""The admin tool's failure for the operator, apart from the reactor code of
``tools/runner.py`` (which re-exports it) so that pure modules may raise it."""

from __future__ import annotations

__all__ = ["AdminError"]


class AdminError(Exception):
    """A failure to report as ``error: <line>`` lines on stderr, exit status 1."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)
