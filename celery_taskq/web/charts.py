"""A stacked bar chart of runs by status over time, laid out here and drawn as inline SVG.

The geometry is computed in Python (and so testable); the template only draws rectangles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import RunStatus
from celery_taskq.reports import ReportWindow, RunSeries

STACK_ORDER = (
    RunStatus.SUCCESS,
    RunStatus.ERROR,
    RunStatus.TIMEOUT,
    RunStatus.RUNNING,
    RunStatus.SCHEDULED,
)
"""Statuses bottom to top in each bar."""

LEFT, RIGHT, TOP, BOTTOM = 44.0, 8.0, 18.0, 24.0
"""Margins around the plot, in SVG units (room for the axis labels)."""

MAX_TIME_LABELS = 6

BUCKETS = 24
"""Bars in a chart of a whole window."""

MIN_BUCKETS = 12
"""Bars at least, when the chart narrows to a young install's runs."""

BUCKET_WIDTHS = tuple(
    timedelta(minutes=minutes)
    for minutes in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880)
)
"""The bucket widths a narrowed chart picks from (round, so its axis reads well)."""

TIMEZONE = "UTC"
"""The timezone of the time axis (every time the dashboard shows is UTC)."""


@dataclass(frozen=True)
class Segment:
    """One status's part of a bar."""

    status: str
    count: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Bar:
    """One bucket: its segments bottom up, and a tooltip title."""

    title: str
    total: int
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Label:
    """An axis label at a point."""

    x: float
    y: float
    text: str


@dataclass(frozen=True)
class BarChart:
    """Everything the template draws."""

    width: float
    height: float
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    bars: tuple[Bar, ...]
    time_labels: tuple[Label, ...]
    count_labels: tuple[Label, ...]
    gridlines: tuple[float, ...]
    """The y of each horizontal gridline (one per count label)."""
    total: int
    statuses: tuple[str, ...]
    axis_title: Label
    """Names the time axis and its timezone."""


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value`` (at least 1)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


@dataclass(frozen=True)
class ChartSpan:
    """What a chart shows: ``start`` to ``end`` in ``buckets`` bars."""

    start: datetime
    end: datetime
    buckets: int


def chart_span(first_run: datetime | None, window: ReportWindow) -> ChartSpan:
    """The span of the chart of ``window`` (both bounds set) whose first run is ``first_run``.

    When the runs fill most of the window, the chart is the window. When they all fall in its
    last part (a fresh install), the chart narrows to them, in round buckets ending at the
    window's end, so that they do not make one sliver at the right edge.
    """
    if window.since is None or window.until is None:
        raise InvalidArgumentError("a chart needs a window with both since and until")
    since, now = window.since, window.until
    if first_run is None or first_run - since < (now - since) / 2:
        return ChartSpan(since, now, BUCKETS)
    used = max(now - first_run, timedelta(0))
    width = next((width for width in BUCKET_WIDTHS if width * BUCKETS >= used), BUCKET_WIDTHS[-1])
    buckets = min(BUCKETS, max(MIN_BUCKETS, math.ceil(used / width) + 1))
    start = max(since, now - width * buckets)
    if start == since:
        return ChartSpan(since, now, BUCKETS)
    return ChartSpan(start, now, buckets)


def _time_format(span: timedelta) -> str:
    return "%H:%M" if span <= timedelta(days=2) else "%m-%d"


def bar_chart(series: RunSeries, *, width: float = 720.0, height: float = 220.0) -> BarChart:
    """Lay out ``series`` as stacked bars (success at the bottom) with labelled axes."""
    buckets = series.buckets
    plot_left, plot_right = LEFT, width - RIGHT
    plot_top, plot_bottom = TOP, height - BOTTOM
    scale_top = nice_ceiling(max((bucket.runs.total for bucket in buckets), default=0))
    column = (plot_right - plot_left) / max(len(buckets), 1)
    bar_width = max(column * 0.8, 1.0)
    unit = (plot_bottom - plot_top) / scale_top
    span = buckets[-1].end - buckets[0].start if buckets else timedelta(0)
    time_format = _time_format(span)
    bars = []
    for index, bucket in enumerate(buckets):
        x = plot_left + index * column + (column - bar_width) / 2
        y = plot_bottom
        segments = []
        for status in STACK_ORDER:
            count = int(getattr(bucket.runs, status.value))
            if count:
                segment_height = count * unit
                y -= segment_height
                segments.append(Segment(status.value, count, x, y, bar_width, segment_height))
        start, end = bucket.start.astimezone(UTC), bucket.end.astimezone(UTC)
        title = (
            f"{start:%Y-%m-%d %H:%M} to {end:%H:%M} {TIMEZONE}: {bucket.runs.total} runs"
            + "".join(f", {segment.count} {segment.status}" for segment in segments)
        )
        bars.append(Bar(title=title, total=bucket.runs.total, segments=tuple(segments)))
    every = max(1, math.ceil(len(buckets) / MAX_TIME_LABELS))
    time_labels = tuple(
        Label(
            x=plot_left + index * column,
            y=height - 6,
            text=f"{buckets[index].start.astimezone(UTC):{time_format}}",
        )
        for index in range(0, len(buckets), every)
    )
    counts = sorted({0, scale_top // 2, scale_top}) if scale_top > 1 else [0, 1]
    count_labels = tuple(
        Label(x=plot_left - 6, y=plot_bottom - count * unit + 4, text=str(count))
        for count in counts
    )
    return BarChart(
        width=width,
        height=height,
        plot_left=plot_left,
        plot_right=plot_right,
        plot_top=plot_top,
        plot_bottom=plot_bottom,
        bars=tuple(bars),
        time_labels=time_labels,
        count_labels=count_labels,
        gridlines=tuple(plot_bottom - count * unit for count in counts),
        total=sum(bucket.runs.total for bucket in buckets),
        statuses=tuple(status.value for status in STACK_ORDER),
        axis_title=Label(x=plot_right, y=plot_top - 6, text=f"times in {TIMEZONE}"),
    )
