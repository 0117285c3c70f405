"""The ``bitflip`` nemesis's damage: one flipped bit in what a stopped brick stored.

``where="value"``: a stored value of one of its partition files (a row chosen by
``pick``), found in the file's bytes (the WAL checkpointed into the file first) and
flipped in the middle, so SQLite's structure stays intact (``integrity_check`` still
says ``ok``) and only the row's checksum can tell.  ``where="log"``: a byte of a value of a committed write in its transaction log.
Both are what issue 13 found served; with row checksums the brick must never return
the damaged bytes.  Run on a stopped brick only.

Keys in ``avoid`` are left alone: the nemesis damages each key at most once a run, so at
most one replica of a key is ever damaged.  Two damaged replicas of one key (with the
third re-syncing) are two failed disks, beyond what a 3-way RG can repair by itself.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack

__all__ = ["flip_stored_byte"]


def _flip(paths: list[Path], needle: bytes) -> int:
    n = 0
    for path in paths:
        if not path.exists():
            continue
        data = bytearray(path.read_bytes())
        at = data.find(needle)
        while at >= 0:
            data[at + len(needle) // 2] ^= 0x10
            n += 1
            at = data.find(needle, at + 1)
        if n:
            path.write_bytes(bytes(data))
    return n


def _flip_value(data_dir: Path, pick: int, avoid: set[bytes]) -> tuple[str, bytes | None]:
    files = sorted(data_dir.glob("p*.sqlite"))
    for i in range(len(files)):
        path = files[(pick + i) % len(files)]
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
        try:
            # Everything into the file first: a flip in a WAL frame fails the frame's
            # own checksum and SQLite drops the WAL from there on, silently rolling
            # the file back, which is not the damage this nemesis means to do.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            rows = [r for r in conn.execute("SELECT key, value FROM kv WHERE length(value) >= 4 "
                                            "ORDER BY key") if r[0] not in avoid]
        finally:
            conn.close()
        if not rows:
            continue
        key, value = rows[pick % len(rows)]
        if _flip([path], value):
            return f"value of key {key!r} in {path.name}", key
    return "nothing: no stored value found", None


def _flip_log(data_dir: Path, pick: int, avoid: set[bytes]) -> tuple[str, bytes | None]:
    logs = sorted(data_dir.glob("txlog.[0-9]*"))
    logs = [p for p in logs if not p.name.endswith(".old")]
    values: list[tuple[Path, bytes, bytes]] = []
    for path in logs:
        data = path.read_bytes()
        pos = 0
        while len(data) - pos >= 8:
            n = int.from_bytes(data[pos:pos + 4], "big")
            payload = data[pos + 8:pos + 8 + n]
            if len(payload) < n:
                break
            try:
                records = msgpack.unpackb(payload, raw=False)
            except Exception:  # noqa: BLE001 -- a torn tail
                break
            values += [(path, r[3], r[4]) for r in records
                       if r[0] == 2 and isinstance(r[4], bytes) and len(r[4]) >= 4
                       and r[3] not in avoid]
            pos += 8 + n
    if not values:
        return _flip_value(data_dir, pick, avoid)   # an empty log: the file instead
    path, key, value = values[pick % len(values)]
    _flip([path], value)
    return f"a logged write's value of key {key!r} in {path.name}", key


def flip_stored_byte(data_dir: Path, where: str, pick: int,
                     avoid: set[bytes] | None = None) -> tuple[str, bytes | None]:
    """Flip a bit in ``data_dir`` (a stopped brick's), in no key of ``avoid``; returns
    what was flipped and the key (None: nothing was)."""
    if where == "log":
        return _flip_log(data_dir, pick, avoid or set())
    return _flip_value(data_dir, pick, avoid or set())
