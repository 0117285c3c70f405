"""The DR record on the wire and what it lets a PREPARE do (``bricks/drmode.py``,
DESIGN §12)."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock

from dds.errors import NotPrimary, ReplayRefused, ReplayWindow
from dds.maps import ClusterMap
from dds.metrics import BRICK, Metrics
from dds.records import DRRecord, record_from_wire

from dds.bricks.drmode import DRGate
from dds.bricks.mapstate import MapState


def gate_with(tmp_path: Path, record: DRRecord | None, now: float = 1000.0) -> DRGate:
    maps = MapState("b1", tmp_path, Metrics(BRICK, None))
    if record is not None:
        maps.merge([record], source="test")
    clock = Clock()
    clock.advance(now)
    return DRGate(maps, clock)


def test_a_dr_record_survives_the_wire() -> None:
    rec = DRRecord(3, "primary", 2, "east", "dds://dr:7000", 123456)
    assert record_from_wire(rec.canonical()) == rec
    assert ClusterMap.of([rec]).dr == rec


def test_a_dr_record_with_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="malformed record dr"):
        record_from_wire(["dr", 1, "leader", 0, "", "", 0])


def test_a_primary_without_a_dr_record_takes_writes_and_refuses_replays(
        tmp_path: Path) -> None:
    gate = gate_with(tmp_path, None)
    gate.check_write("put")
    with pytest.raises(ReplayRefused) as e:
        gate.check_write("replay")
    assert e.value.data["reason"] == "not_promoted"


def test_a_follower_refuses_every_write(tmp_path: Path) -> None:
    gate = gate_with(tmp_path, DRRecord(1, "follower", 0, "east"))
    for op in ("put", "remove", "create", "cas", "replay"):
        with pytest.raises(NotPrimary, match="DR site of 'east'"):
            gate.check_write(op)


def test_a_promoted_site_takes_only_replays_in_its_window(tmp_path: Path) -> None:
    gate = gate_with(tmp_path, DRRecord(2, "primary", 1, "east", "", 1_005_000),
                     now=1000.0)
    gate.check_write("replay")
    with pytest.raises(ReplayWindow) as e:
        gate.check_write("put")
    assert e.value.retryable and e.value.data == {"until_ms": 1_005_000}


def test_a_promoted_site_refuses_replays_once_its_window_closed(tmp_path: Path) -> None:
    gate = gate_with(tmp_path, DRRecord(2, "primary", 1, "east", "", 999_000), now=1000.0)
    gate.check_write("put")
    with pytest.raises(ReplayRefused) as e:
        gate.check_write("replay")
    assert e.value.data["reason"] == "window_closed"
