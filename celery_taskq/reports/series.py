"""Runs over time: runs by status in equal buckets of a closed window, oldest first."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    case,
    func,
    literal,
    select,
)

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import (
    RunStatus,
    TaskQueue,
    TaskRun,
    UTCDateTime,
)
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.counts import RunCounts
from celery_taskq.reports.sql import (
    for_handler,
    in_seconds,
    read_with,
    required,
    run_in_window,
    runs_with_handler,
)
from celery_taskq.reports.window import ReportWindow, check_handler

MAX_BUCKETS = 500
"""Most buckets a :func:`runs_over_time` series may hold."""


@dataclass(frozen=True)
class RunBucket:
    """Runs that reached their current status in ``start <= t < end``, by status."""

    start: datetime
    end: datetime
    runs: RunCounts


@dataclass(frozen=True)
class RunSeries:
    """Runs by status in consecutive, equally long buckets covering a closed window."""

    window: ReportWindow
    handler: str | None
    bucket_seconds: float
    buckets: tuple[RunBucket, ...]


def _bucket_bounds(window: ReportWindow, buckets: int) -> list[datetime]:
    """``buckets + 1`` boundaries from ``since`` to ``until`` (the last is ``until`` exactly)."""
    since, until = required(window.since), required(window.until)
    width = (until - since) / buckets
    return [since + width * index for index in range(buckets)] + [until]


def _moment() -> ColumnElement[Any]:
    """The time a run reached its current status (see :mod:`celery_taskq.reports`)."""
    return case(
        (TaskRun.finished_on.is_not(None), TaskRun.finished_on),
        (TaskRun.status == RunStatus.RUNNING, TaskRun.started_on),
        else_=TaskQueue.scheduled_on,
    )


def first_run_moment(
    database: Database, window: ReportWindow, *, handler: str | None = None
) -> datetime | None:
    """The earliest moment at which a run counted in the window reached its status (``None``
    when the window has no run): where a chart of a young install has something to show."""
    handler = check_handler(handler)
    query = for_handler(
        runs_with_handler(func.min(_moment())).where(run_in_window(window)), handler
    )
    first = read_with(database, lambda connection: connection.execute(query).scalar_one())
    return first if isinstance(first, datetime) else None


def _runs_over_time(
    connection: Connection, window: ReportWindow, bounds: list[datetime], handler: str | None
) -> dict[int, dict[str, int]]:
    # The run's moment as the module's docstring defines it; then its bucket by plain
    # comparisons with the boundaries (the same SQL on both databases); grouped over columns
    # of subqueries, so no bound parameter is repeated between SELECT and GROUP BY.
    moment = _moment()
    moments = for_handler(
        runs_with_handler(moment.label("moment"), TaskRun.status.label("status")).where(
            run_in_window(window)
        ),
        handler,
    ).subquery("moments")
    boundary_type = UTCDateTime()
    inner_bounds = bounds[1:-1]
    bucket: ColumnElement[Any] = literal(0)  # one bucket: a CASE needs at least one WHEN
    if inner_bounds:
        bucket = case(
            *(
                (moments.c.moment < literal(bound, boundary_type), index)
                for index, bound in enumerate(inner_bounds)
            ),
            else_=len(inner_bounds),
        )
    bucketed = select(bucket.label("bucket"), moments.c.status).subquery("bucketed")
    query = select(bucketed.c.bucket, bucketed.c.status, func.count()).group_by(
        bucketed.c.bucket, bucketed.c.status
    )
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for index, status, number in connection.execute(query):
        counts[int(index)][RunStatus(status).value] = number
    return counts


def runs_over_time(
    database: Database, window: ReportWindow, buckets: int = 24, *, handler: str | None = None
) -> RunSeries:
    """Runs by status per bucket: the window cut into ``buckets`` equal parts, oldest first.

    A run falls in the bucket in which it reached its current status (the same moment as in
    every other section), so the buckets add up to the window's run totals. The window must
    have both bounds; ``buckets`` is from 1 to :data:`MAX_BUCKETS`.
    """
    if window.since is None or window.until is None:
        raise InvalidArgumentError("runs over time need a window with both since and until")
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
        raise InvalidArgumentError(f"buckets must be an integer from 1 to {MAX_BUCKETS}")
    handler = check_handler(handler)
    bounds = _bucket_bounds(window, buckets)
    counts = read_with(
        database, lambda connection: _runs_over_time(connection, window, bounds, handler)
    )
    return RunSeries(
        window=window,
        handler=handler,
        bucket_seconds=in_seconds(bounds[-1] - bounds[0]) / buckets,
        buckets=tuple(
            RunBucket(start=bounds[index], end=bounds[index + 1], runs=RunCounts(**counts[index]))
            for index in range(buckets)
        ),
    )
