"""Keys for people (plain, no Twisted, no terminal): printable ASCII as text, anything
else as ``0x`` and hex; cut to a table's width."""

from __future__ import annotations

import string

__all__ = ["KEY_WIDTH", "key_text", "cut"]

#: Keys longer than this are cut in tables (``--json`` has them whole, in hex).
KEY_WIDTH = 32
_PRINTABLE = frozenset(string.printable.encode()) - frozenset(b"\t\n\r\x0b\x0c")


def key_text(key: bytes) -> str:
    """A key for people: as text when it is printable ASCII, else ``0x`` and hex."""
    if key and all(c in _PRINTABLE for c in key) and not key.startswith(b"0x"):
        return key.decode("ascii")
    return "0x" + key.hex()


def cut(text: str, width: int = KEY_WIDTH) -> str:
    """``text`` cut to ``width`` characters, with an ellipsis when cut."""
    return text if len(text) <= width else text[:width - 1] + "…"
