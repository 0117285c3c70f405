"""The on-disk format of a backup (``dds-admin backup`` / ``restore``, issue 17)::

    DIR/partitions/<pid>.sqlite     one partition file each (a brick's snapshot)
    DIR/manifest.json               written last: its presence means "complete"

The manifest: ``format`` (``"dds-backup"``), ``version`` (:data:`FORMAT_VERSION`), the
``cluster`` name, ``map`` (every record of the map, canonical), ``started``/``finished``
(Unix times), and per partition ``pid``, ``file``, ``size``, ``xxh64`` (of the file's
bytes, hex), ``lsn`` (the log position the file holds), ``rows``, ``checksum`` (the
replica checksum of its rows, as the ``checksum`` request computes it, hex), ``brick``
(the member it came from) and ``seconds``.  ``manifest_xxh64`` is the xxh64 of the
canonical JSON of everything else (sorted keys, no spaces): a damaged manifest is
refused.

Every check names the file and the problem (:class:`BackupError`).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import attrs
import xxhash

from dds.maps import ClusterMap
from dds.partition import PartitionId

from dds.tools.errors import AdminError

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "BackupError", "Entry", "Manifest",
           "check_empty_dir", "file_digest", "load_manifest", "scan_file", "verify_file",
           "write_manifest"]

FORMAT = "dds-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARTITIONS = "partitions"
_READ = 4 << 20


class BackupError(AdminError):
    """A backup that cannot be used or written: names the file and the problem."""


@attrs.frozen
class Entry:
    """One partition of a backup."""

    pid: str
    file: str
    size: int
    xxh64: int
    lsn: int
    rows: int
    checksum: int
    brick: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "file": self.file, "size": self.size,
                "xxh64": f"{self.xxh64:016x}", "lsn": self.lsn, "rows": self.rows,
                "checksum": f"{self.checksum:016x}", "brick": self.brick,
                "seconds": round(self.seconds, 3)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Entry":
        try:
            entry = cls(pid=str(PartitionId.parse(data["pid"])), file=str(data["file"]),
                        size=int(data["size"]), xxh64=int(data["xxh64"], 16),
                        lsn=int(data["lsn"]), rows=int(data["rows"]),
                        checksum=int(data["checksum"], 16), brick=str(data["brick"]),
                        seconds=float(data["seconds"]))
        except (KeyError, TypeError, ValueError) as e:
            raise BackupError(f"{where}: a malformed partition entry ({e!r})") from None
        if entry.file != f"{PARTITIONS}/{entry.pid}.sqlite":
            raise BackupError(f"{where}: partition {entry.pid}'s file is {entry.file!r}, "
                              f"not {PARTITIONS}/{entry.pid}.sqlite")
        return entry


@attrs.frozen
class Manifest:
    cluster: str
    map: ClusterMap
    entries: tuple[Entry, ...]
    started: float
    finished: float

    @property
    def pids(self) -> list[PartitionId]:
        return [PartitionId.parse(e.pid) for e in self.entries]

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries)


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def check_empty_dir(path: Path) -> None:
    """A backup goes into a new or empty directory (never over another backup)."""
    if path.exists() and not path.is_dir():
        raise BackupError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise BackupError(f"{path} exists and is not empty: a backup goes into a new or "
                          "empty directory")


def write_manifest(dest: Path, manifest: Manifest) -> Path:
    """Write ``DIR/manifest.json`` atomically (temporary file, fsync, rename): a backup
    interrupted before this has no manifest."""
    body: dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION, "cluster": manifest.cluster,
        "map": manifest.map.to_wire(), "started": manifest.started,
        "finished": manifest.finished,
        "partitions": [e.to_json() for e in manifest.entries]}
    body["manifest_xxh64"] = f"{xxhash.xxh64_intdigest(_canonical(body)):016x}"
    path = dest / MANIFEST
    tmp = dest / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_manifest(src: Path) -> Manifest:
    """The manifest of the backup in ``src``, its own checksum and shape verified."""
    path = src / MANIFEST
    if not src.is_dir():
        raise BackupError(f"{src} is not a directory")
    if not path.is_file():
        raise BackupError(f"{src} is not a complete backup: no {MANIFEST} (an interrupted "
                          "backup has none)")
    try:
        body = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise BackupError(f"{path}: unreadable ({e})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise BackupError(f"{path} is not a DDS backup manifest")
    if body.get("version") != FORMAT_VERSION:
        raise BackupError(f"{path}: backup format version {body.get('version')!r}; this "
                          f"dds-admin reads version {FORMAT_VERSION}")
    claimed = body.pop("manifest_xxh64", None)
    actual = f"{xxhash.xxh64_intdigest(_canonical(body)):016x}"
    if claimed != actual:
        raise BackupError(f"{path} is damaged: its checksum is {actual}, it claims "
                          f"{claimed!r}")
    try:
        cmap = ClusterMap.from_wire(body["map"])
        entries = tuple(Entry.from_json(e, str(path)) for e in body["partitions"])
        manifest = Manifest(cluster=str(body["cluster"]), map=cmap, entries=entries,
                            started=float(body["started"]),
                            finished=float(body["finished"]))
    except (KeyError, TypeError, ValueError) as e:
        raise BackupError(f"{path}: malformed ({e!r})") from None
    listed = {str(p) for p in cmap.partition_rg}
    taken = [e.pid for e in entries]
    if len(set(taken)) != len(taken) or set(taken) != listed:
        raise BackupError(f"{path}: its partitions ({', '.join(sorted(taken))}) are not "
                          f"the map's ({', '.join(sorted(listed))})")
    return manifest


def file_digest(path: Path) -> tuple[int, int]:
    """(size, xxh64) of a file."""
    h = xxhash.xxh64()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_READ):
            h.update(block)
            size += len(block)
    return size, h.intdigest()


def scan_file(path: Path, pid: str) -> tuple[int, int]:
    """Blocking: every row of a partition file verified against its checksum
    (ChecksumMismatch naming the key), in one pass that also gives the replica
    checksum: (rows, checksum).  The brick's own pass (``bricks/backup.py``)."""
    from dds.bricks.backup import scan_rows

    summary = scan_rows(path, pid)
    return summary["rows"], summary["checksum"]


def verify_file(src: Path, entry: Entry) -> None:
    """Blocking: the partition file of ``entry`` has the size and xxh64 the manifest
    says, is a partition file of that partition, and every row matches its checksum
    and the replica checksum recorded.  BackupError naming the file otherwise."""
    from dds.bricks.rowcheck import ChecksumMismatch

    path = src / entry.file
    if not path.is_file():
        raise BackupError(f"{path}: missing")
    size, digest = file_digest(path)
    if size != entry.size:
        raise BackupError(f"{path}: {size} bytes, the manifest says {entry.size}")
    if digest != entry.xxh64:
        raise BackupError(f"{path} is damaged: xxh64 {digest:016x}, the manifest says "
                          f"{entry.xxh64:016x}")
    try:
        rows, checksum = scan_file(path, entry.pid)
    except ChecksumMismatch as e:
        raise BackupError(f"{path} is damaged: the row of key {e.key[:64]!r} fails its "
                          "checksum") from None
    except (ValueError, sqlite3.Error) as e:
        raise BackupError(f"{path} is damaged: {e}") from None
    if checksum != entry.checksum or rows != entry.rows:
        raise BackupError(f"{path}: its {rows} rows' checksum {checksum:016x} is not the "
                          f"manifest's ({entry.rows} rows, {entry.checksum:016x})")
