"""The measurements ``bench recovery`` and ``bench move`` are judged by: percentiles,
the longest pause between a writer's successful puts in a window, and the merge of the
writer processes' reports."""

from __future__ import annotations

import pytest

from dds.tools.bench.measure import PutLog, merge, percentile, window_report


def log_of(*ended: float, started: float = 0.0, stopped: float = 100.0) -> PutLog:
    """Puts that ended at ``ended``, each taking a hundredth of a second."""
    return PutLog(started=started, stopped=stopped, ended=list(ended),
                  lat=[0.01] * len(ended))


def test_percentile_of_no_values_is_zero() -> None:
    assert percentile([], 0.99) == 0.0


def test_percentile_takes_the_value_at_q_times_n() -> None:
    values = list(range(100))
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0


def test_percentile_one_is_the_largest_value() -> None:
    assert percentile([1, 2, 3], 1.0) == 3.0


def test_the_gap_runs_from_the_last_put_before_the_window() -> None:
    w = log_of(1.0, 2.0, 6.0, 7.0).window(3.0, 10.0, extend=False)
    assert w["max_gap_s"] == pytest.approx(4.0)         # 2.0 -> 6.0
    assert w["max_gap_end_s"] == pytest.approx(3.0)     # 6.0, 3 s after the start


def test_an_unextended_window_ends_its_last_gap_at_its_end() -> None:
    w = log_of(1.0, 2.0, 9.0).window(1.5, 5.0, extend=False)
    assert w["max_gap_s"] == pytest.approx(3.0)         # 2.0 -> the window's end
    assert w["ops"] == 1


def test_an_extended_window_counts_a_pause_that_began_inside_it_whole() -> None:
    w = log_of(1.0, 2.0, 9.0).window(1.5, 5.0, extend=True)
    assert w["max_gap_s"] == pytest.approx(7.0)         # 2.0 -> 9.0
    assert w["lat"] == [0.01, 0.01]                     # the put ending at 9.0 included


def test_a_pause_still_running_at_the_end_lasts_until_the_writer_stopped() -> None:
    w = log_of(1.0, started=0.0, stopped=20.0).window(2.0, 5.0, extend=True)
    assert w["max_gap_s"] == pytest.approx(19.0)


def test_a_window_counts_only_the_errors_inside_it() -> None:
    log = log_of(1.0)
    log.errors = [(0.5, "Timeout"), (2.5, "Timeout"), (3.0, "Locked")]
    assert log.window(2.0, 4.0, extend=False)["errors"] == {"Timeout": 1, "Locked": 1}


def test_a_process_reports_its_worst_client_and_every_latency() -> None:
    report = window_report([log_of(1.0, 2.0, 3.0), log_of(1.0, 2.9)], 1.5, 3.5,
                           extend=False)
    assert report["max_gap_s"] == pytest.approx(1.9)    # 1.0 -> 2.9 of the second
    assert report["ops"] == 3
    assert len(report["lat_s"]) == 3
    assert report["length_s"] == pytest.approx(2.0)


def test_the_merge_takes_the_longest_pause_of_any_process() -> None:
    stats = [{"windows": {"w": window_report([log_of(1.0, 2.0)], 0.5, 2.5, False)}},
             {"windows": {"w": window_report([log_of(0.6, 2.4)], 0.5, 2.5, False)}}]
    merged = merge(stats, "w")
    assert merged["max_write_pause_ms"] == pytest.approx(1800.0)
    assert merged["max_write_pause_end_s"] == pytest.approx(1.9)
    assert merged["puts"] == 4
    assert merged["put_ops_s"] == pytest.approx(2.0)
    assert merged["p50_put_ms"] == pytest.approx(10.0)


def test_the_merge_of_no_processes_is_all_zero() -> None:
    merged = merge([], "w")
    assert merged["max_write_pause_ms"] == 0.0 and merged["puts"] == 0
    assert merged["put_ops_s"] == 0.0 and merged["write_errors"] == {}
