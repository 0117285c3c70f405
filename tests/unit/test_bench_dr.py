"""``bench --dr``'s arithmetic and table (``tools/bench/dr.py``), without clusters: the
modes' put rates are averaged over their phases, the journal's p99 is over the samples
the load processes took, and the table renders a whole result."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from dds.tools.bench.dr import _Mode, render_dr


def done(ops: int, elapsed: float, samples: list[int]) -> dict[str, object]:
    return {"ops": ops, "elapsed": elapsed, "lat_us": [1000] * ops, "errors": {},
            "samples": samples}


def test_a_modes_rate_is_the_mean_over_its_phases_and_the_journal_p99_over_samples(
        ) -> None:
    mode = _Mode()
    mode.add([done(100, 1.0, [5, 7])], cpu=0.1)
    mode.add([done(300, 1.0, [9] * 98)], cpu=0.3)
    f = mode.fields("with")
    assert f["put_ops_s_with"] == 200.0
    assert f["put_ops_s_with_phases"] == [100.0, 300.0]
    assert f["journal_entries_p99_with"] == 9
    assert f["cpu_us_per_put_with"] == 1000.0


def test_a_mode_without_samples_has_no_journal_figure() -> None:
    mode = _Mode()
    mode.add([done(10, 1.0, [])], cpu=0.0)
    assert mode.fields("without")["journal_entries_p99_without"] is None


def test_the_table_shows_the_ratio_the_lag_and_n_a_for_a_missing_journal() -> None:
    without, with_ = _Mode(), _Mode()
    without.add([done(100, 1.0, [])], 0.1)
    with_.add([done(95, 1.0, [])], 0.1)
    r = {"primary_bricks": 6, "primary_partitions": 16, "dr_bricks": 3, "dr_partitions": 8,
         "cpus": 2, "seconds": 2.0, "dr_put_ratio": 0.95, "dr_put_target": 0.9,
         "dr_put_target_met": True, "put_ratio_with_to_floor": 0.01,
         "put_ratio_without_to_floor": 0.011, "dr_lag_p50_ms": 120.0,
         "dr_lag_p99_ms": 480.0, "journal_entries_p99": None, "floor_rtt_s": 50000.0,
         "dr_lag_samples": 40, **without.fields("without"), **with_.fields("with")}
    out = StringIO()
    render_dr(r, Console(file=out, width=200))
    text = out.getvalue()
    assert "0.950" in text and "120 / 480" in text and "n/a" in text
