"""Unit tests of ``dds-admin backup``'s run (``tools/backup.py``) against fake bricks
serving real partition files: a backup with a manifest when every partition comes, none
(and no partial file) when one cannot be had from any member."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import xxhash
from twisted.internet import reactor
from twisted.internet.task import Clock

from dds.backupmsgs import BackupBegin, BackupChunk, BackupEnd
from dds.errors import NotServing
from dds.maps import ClusterMap
from dds.messages import Message
from dds.partition import PartitionId
from dds.records import BrickRecord, ClusterRecord, Member, PartitionEntry, RGRecord

from dds.bricks.storage import Storage
from dds.tools import backup as tool
from dds.tools.backupfmt import MANIFEST, BackupError, load_manifest
from dds.tools.cluster import Target
from dds.tools.reorg import QuietView

P0, P1 = PartitionId(1, 0), PartitionId(1, 1)
MEMBERS = ("b1", "b2")


def _map() -> ClusterMap:
    return ClusterMap.of([
        ClusterRecord("dds", 1, 2),
        *(BrickRecord(b, 1, "127.0.0.1", 7400 + i) for i, b in enumerate(MEMBERS)),
        RGRecord("rg0", 1, [Member(b) for b in MEMBERS],
                 [PartitionEntry(P0, "active"), PartitionEntry(P1, "active")])])


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A real partition file for each partition, 10 rows each."""
    clock = Clock()
    storage = Storage(tmp_path / "brick", clock)
    for pid in (P0, P1):
        storage.open_partition(str(pid))
        for k in [k for k in (b"k%d" % i for i in range(200)) if pid.owns(k)][:10]:
            storage.write(str(pid), k, b"v" + k, 1)
    clock.advance(0)
    paths = {str(pid): storage.partition_path(str(pid)) for pid in (P0, P1)}
    storage.close()
    out = {}
    for pid, path in paths.items():
        out[pid] = tmp_path / f"{pid}.snapshot"
        shutil.copyfile(path, out[pid])
    return out


class FakeCaller:
    """Bricks that serve the files, but refuse ``refused`` partitions (every member)."""

    def __init__(self, files: dict[str, Path], refused: set[str]) -> None:
        self.files = files
        self.refused = refused
        self.sessions: dict[int, str] = {}
        self.ended: list[int] = []

    async def send(self, brick: str, msg: Message, timeout: float | None = None
                   ) -> dict[str, Any]:
        if isinstance(msg, BackupBegin):
            if msg.pid in self.refused:
                raise NotServing(f"brick {brick} does not serve rg0")
            sid = len(self.sessions) + 1
            self.sessions[sid] = msg.pid
            data = self.files[msg.pid].read_bytes()
            return {"session": sid, "pid": msg.pid, "size": len(data), "lsn": 10,
                    "checksum": xxhash.xxh64_intdigest(data), "brick": brick}
        if isinstance(msg, BackupChunk):
            data = self.files[self.sessions[msg.session]].read_bytes()
            part = data[msg.offset:msg.offset + msg.size]
            return {"data": part, "checksum": xxhash.xxh64_intdigest(part)}
        if isinstance(msg, BackupEnd):
            self.ended.append(msg.session)
            return {}
        raise AssertionError(msg)

    def close(self) -> None:
        pass


def _patch(monkeypatch: pytest.MonkeyPatch, caller: FakeCaller) -> None:
    async def fetch_map(reactor: Any, target: Any, timeout: float = 0) -> Any:
        return _map(), "seed"
    monkeypatch.setattr(tool, "fetch_map", fetch_map)
    monkeypatch.setattr(tool, "BrickCaller", lambda *a, **kw: caller)


TARGET = Target((("127.0.0.1", 1),), b"x" * 32, "dds")


@pytest_twisted.ensureDeferred
async def test_a_complete_backup_has_a_manifest_and_every_snapshot_ended(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    caller = FakeCaller(files, set())
    _patch(monkeypatch, caller)
    report = await tool.backup(reactor, TARGET, tmp_path / "bk", QuietView())
    assert report["partitions"] == 2
    manifest = load_manifest(tmp_path / "bk")
    assert {e.pid: e.rows for e in manifest.entries} == {"p1.0": 10, "p1.1": 10}
    assert sorted(caller.ended) == sorted(caller.sessions)


@pytest_twisted.ensureDeferred
async def test_a_partition_no_member_gives_fails_the_backup_without_a_manifest(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _patch(monkeypatch, FakeCaller(files, {"p1.1"}))
    with pytest.raises(BackupError, match=r"no member of rg0 could give a backup of p1\.1"):
        await tool.backup(reactor, TARGET, tmp_path / "bk", QuietView())
    assert not (tmp_path / "bk" / MANIFEST).exists()
    assert not list((tmp_path / "bk" / "partitions").glob("*.part"))


class DamagingCaller(FakeCaller):
    """b1's chunks arrive with one bit flipped (their checksums are the originals')."""

    async def send(self, brick: str, msg: Message, timeout: float | None = None
                   ) -> dict[str, Any]:
        reply = await super().send(brick, msg, timeout)
        if isinstance(msg, BackupChunk) and brick == "b1":
            data = bytearray(reply["data"])
            data[0] ^= 1
            reply = {**reply, "data": bytes(data)}
        return reply


@pytest_twisted.ensureDeferred
async def test_a_snapshot_damaged_on_the_way_is_taken_from_another_member(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _patch(monkeypatch, DamagingCaller(files, set()))
    await tool.backup(reactor, TARGET, tmp_path / "bk", QuietView())
    manifest = load_manifest(tmp_path / "bk")
    assert {e.brick for e in manifest.entries} == {"b2"}
    assert not list((tmp_path / "bk" / "partitions").glob("*.part"))
