"""The overview's chart laid out in Python: the span a young install narrows to, and the axes
(with the time axis's timezone named). Unit tests: no database, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.reports import ReportWindow, RunBucket, RunCounts, RunSeries
from celery_taskq.web.charts import BUCKETS, MIN_BUCKETS, bar_chart, chart_span

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = ReportWindow(NOW - timedelta(hours=24), NOW)


def test_a_window_full_of_runs_is_charted_whole() -> None:
    # Given runs from the window's first hours on
    span = chart_span(NOW - timedelta(hours=20), DAY)
    # Then the chart is the whole window in the usual bars
    assert (span.start, span.end, span.buckets) == (DAY.since, NOW, BUCKETS)
    assert chart_span(None, DAY) == span  # no run at all: the window, empty


def test_a_fresh_install_is_charted_over_its_runs_in_round_buckets() -> None:
    # Given a day's window whose runs all came in the last 7 minutes
    span = chart_span(NOW - timedelta(minutes=7), DAY)
    # Then the chart narrows to them: one-minute bars ending now, at least MIN_BUCKETS of them
    assert span.end == NOW
    assert span.buckets == MIN_BUCKETS
    assert span.start == NOW - timedelta(minutes=MIN_BUCKETS)
    # And three hours of runs take the smallest round width that fits them in 24 bars
    wider = chart_span(NOW - timedelta(hours=3), DAY)
    assert (wider.end - wider.start) / wider.buckets == timedelta(minutes=10)
    assert wider.start <= NOW - timedelta(hours=3)


def test_a_narrowed_span_never_starts_before_the_window() -> None:
    hour = ReportWindow(NOW - timedelta(hours=1), NOW)
    span = chart_span(NOW - timedelta(minutes=40), hour)  # more than half: whole window
    assert span.start == hour.since
    tiny = chart_span(NOW - timedelta(seconds=5), hour)
    assert tiny.start >= hour.since
    assert tiny.buckets >= MIN_BUCKETS


def test_a_chart_span_needs_both_bounds() -> None:
    with pytest.raises(InvalidArgumentError, match="both since and until"):
        chart_span(None, ReportWindow(since=NOW))


def series(start: datetime, counts: list[int]) -> RunSeries:
    """A series of one-hour buckets from ``start`` with ``counts`` successes each."""
    buckets = tuple(
        RunBucket(
            start=start + timedelta(hours=index),
            end=start + timedelta(hours=index + 1),
            runs=RunCounts(success=count),
        )
        for index, count in enumerate(counts)
    )
    window = ReportWindow(start, start + timedelta(hours=len(counts)))
    return RunSeries(window=window, handler=None, bucket_seconds=3600.0, buckets=buckets)


def test_the_time_axis_names_its_timezone_and_shows_utc_times() -> None:
    # Given a series whose times carry another offset
    plus_two = timezone(timedelta(hours=2))
    chart = bar_chart(series(datetime(2026, 3, 1, 14, 0, tzinfo=plus_two), [1, 0, 3]))
    # Then the labels and tooltips are in UTC, and the axis says so
    assert chart.axis_title.text == "times in UTC"
    assert chart.time_labels[0].text == "12:00"
    assert "2026-03-01 12:00 to 13:00 UTC: 1 runs" in chart.bars[0].title
    # And the title sits above the plot, clear of the time labels below it
    assert chart.axis_title.y < chart.plot_top
    assert all(label.y > chart.plot_bottom for label in chart.time_labels)


def test_bars_fill_the_plot_and_stack_to_the_scale() -> None:
    chart = bar_chart(series(NOW - timedelta(hours=3), [2, 0, 5]))
    assert chart.total == 7
    tallest = chart.bars[2].segments[0]
    assert tallest.y >= chart.plot_top
    assert tallest.height == pytest.approx((chart.plot_bottom - chart.plot_top) * 5 / 5)
    assert chart.bars[1].segments == ()
