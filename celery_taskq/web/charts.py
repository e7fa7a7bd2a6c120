"""A stacked bar chart of runs by status over time, laid out here and drawn as inline SVG.

The geometry is computed in Python (and so testable); the template only draws rectangles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from celery_taskq.core.models import RunStatus
from celery_taskq.reports import RunSeries

STACK_ORDER = (
    RunStatus.SUCCESS,
    RunStatus.ERROR,
    RunStatus.TIMEOUT,
    RunStatus.RUNNING,
    RunStatus.SCHEDULED,
)
"""Statuses bottom to top in each bar."""

LEFT, RIGHT, TOP, BOTTOM = 44.0, 8.0, 10.0, 24.0
"""Margins around the plot, in SVG units (room for the axis labels)."""

MAX_TIME_LABELS = 6


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


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value`` (at least 1)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


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
        title = (
            f"{bucket.start:%Y-%m-%d %H:%M} to {bucket.end:%H:%M}: {bucket.runs.total} runs"
            + "".join(f", {segment.count} {segment.status}" for segment in segments)
        )
        bars.append(Bar(title=title, total=bucket.runs.total, segments=tuple(segments)))
    every = max(1, math.ceil(len(buckets) / MAX_TIME_LABELS))
    time_labels = tuple(
        Label(
            x=plot_left + index * column,
            y=height - 6,
            text=f"{buckets[index].start:{time_format}}",
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
    )
