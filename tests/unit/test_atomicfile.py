"""Unit tests of dds.bricks.atomicfile: real files in tmp_path; os.fsync is counted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dds.bricks import atomicfile
from dds.bricks.atomicfile import replace_file


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counted(fd: int) -> None:
        calls.append(fd)
        real(fd)
    monkeypatch.setattr(atomicfile.os, "fsync", counted)
    return calls


def test_replace_file_leaves_exactly_the_new_content(tmp_path: Path, fsyncs: list[int]) -> None:
    path = tmp_path / "map.msgpack"
    path.write_bytes(b"old content, longer than the new")
    replace_file(path, b"new", fsync=False)
    assert path.read_bytes() == b"new"
    assert [f.name for f in tmp_path.iterdir()] == ["map.msgpack"]


def test_fsync_mode_syncs_the_file_and_its_directory(tmp_path: Path, fsyncs: list[int]) -> None:
    replace_file(tmp_path / "locks.msgpack", b"x", fsync=True)
    assert len(fsyncs) == 2


def test_disk_mode_does_not_sync(tmp_path: Path, fsyncs: list[int]) -> None:
    replace_file(tmp_path / "locks.msgpack", b"x", fsync=False)
    assert fsyncs == []


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "map.msgpack"
    path.write_bytes(b"old")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomicfile.os, "fsync", full)
    with pytest.raises(OSError):
        replace_file(path, b"new", fsync=True)
    assert path.read_bytes() == b"old"
