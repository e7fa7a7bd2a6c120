"""Durations: percentiles per handler, the slowest runs, and histograms for metrics exporters.

Durations are ``FinishedOn - StartedOn`` of finished runs that started. Percentiles are
continuous (SQL's ``percentile_cont``): computed by PostgreSQL in the database, and on SQLite in
Python from the exact durations, with the same formula.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Double,
    cast,
    extract,
    func,
    select,
)

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import (
    RunStatus,
    TaskQueue,
    TaskRun,
)
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.limits import DEFAULT_LIMIT
from celery_taskq.reports.sql import (
    finished_in_window,
    for_handler,
    in_seconds,
    of_run_task,
    read_with,
    runs_with_handler,
    within,
)
from celery_taskq.reports.window import ReportWindow, check_handler, check_limit

PERCENTILES = (0.5, 0.9, 0.99)
"""The duration percentiles reported, as fractions."""


@dataclass(frozen=True)
class DurationStats:
    """Duration percentiles of one handler's finished runs, in seconds."""

    handler: str
    runs: int
    p50: float
    p90: float
    p99: float
    max: float


@dataclass(frozen=True)
class SlowRun:
    """One of the slowest finished runs."""

    run_id: int
    task_id: int
    handler: str
    status: RunStatus
    started_on: datetime
    finished_on: datetime
    duration: float
    """Seconds from ``StartedOn`` to ``FinishedOn``."""


def percentile_cont(sorted_values: Sequence[float], fraction: float) -> float:
    """SQL's ``percentile_cont``: linear interpolation between the closest ranks.

    ``sorted_values`` is ascending and not empty; ``fraction`` is from 0 to 1. The formula is
    PostgreSQL's, so both databases report the same value.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = fraction * (len(sorted_values) - 1)
    lower = sorted_values[math.floor(position)]
    upper = sorted_values[math.ceil(position)]
    return lower + (upper - lower) * (position - math.floor(position))


@dataclass(frozen=True)
class FinishedRuns:
    """One pass over the runs that ended in a window: counts by status, and durations."""

    counts: dict[str, dict[str, int]]
    """Handler → status → runs."""
    durations: tuple[DurationStats, ...]


def finished_runs_in(
    connection: Connection, window: ReportWindow, handler: str | None
) -> FinishedRuns:
    """The runs that ended in the window: counts by status and durations, in one pass."""
    if connection.dialect.name == "postgresql":
        return _finished_runs_postgresql(connection, window, handler)
    return _finished_runs_python(connection, window, handler)


def _finished_runs_postgresql(
    connection: Connection, window: ReportWindow, handler: str | None
) -> FinishedRuns:
    # One index range scan of the window's finished runs gives the counts by status and the
    # percentiles, which only runs that started have (FILTER).
    seconds = cast(extract("epoch", TaskRun.finished_on - TaskRun.started_on), Double)
    started = TaskRun.started_on.is_not(None)
    handler_of_run = of_run_task(TaskQueue.task_handler_class)
    query = (
        select(
            handler_of_run,
            *(func.count().filter(TaskRun.status == status.value) for status in RunStatus),
            func.count().filter(started),
            *(
                func.percentile_cont(cast(fraction, Double)).within_group(seconds).filter(started)
                for fraction in PERCENTILES
            ),
            func.max(seconds),
        )
        .where(within(TaskRun.finished_on, window))
        .group_by(handler_of_run)
        .order_by(handler_of_run)
    )
    if handler is not None:
        query = query.where(handler_of_run == handler)
    counts: dict[str, dict[str, int]] = {}
    durations = []
    statuses = len(RunStatus)
    for row in connection.execute(query):
        name = row[0]
        counts[name] = {
            status.value: number
            for status, number in zip(RunStatus, row[1 : 1 + statuses], strict=True)
            if number
        }
        runs, p50, p90, p99, longest = row[1 + statuses :]
        if runs:
            durations.append(
                DurationStats(
                    handler=name,
                    runs=runs,
                    p50=float(p50),
                    p90=float(p90),
                    p99=float(p99),
                    max=float(longest),
                )
            )
    return FinishedRuns(counts, tuple(durations))


def _finished_runs_python(
    connection: Connection, window: ReportWindow, handler: str | None
) -> FinishedRuns:
    query = for_handler(
        runs_with_handler(
            TaskQueue.task_handler_class, TaskRun.status, TaskRun.started_on, TaskRun.finished_on
        ).where(within(TaskRun.finished_on, window)),
        handler,
    )
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    seconds: dict[str, list[float]] = defaultdict(list)
    for name, status, started_on, finished_on in connection.execute(query):
        counts[name][RunStatus(status).value] += 1
        if started_on is not None:
            seconds[name].append(in_seconds(finished_on - started_on))
    durations = []
    for name in sorted(seconds):
        values = sorted(seconds[name])
        p50, p90, p99 = (percentile_cont(values, fraction) for fraction in PERCENTILES)
        durations.append(
            DurationStats(handler=name, runs=len(values), p50=p50, p90=p90, p99=p99, max=values[-1])
        )
    return FinishedRuns({name: dict(by) for name, by in counts.items()}, tuple(durations))


def duration_stats(
    database: Database, window: ReportWindow, *, handler: str | None = None
) -> tuple[DurationStats, ...]:
    """p50, p90, p99 and max duration per handler of the runs that ended in the window.

    Only runs that started count (``FinishedOn - StartedOn``); sorted by handler.
    """
    handler = check_handler(handler)
    return read_with(
        database, lambda connection: finished_runs_in(connection, window, handler).durations
    )


def _duration_order(connection: Connection) -> ColumnElement[Any]:
    if connection.dialect.name == "postgresql":
        return TaskRun.finished_on - TaskRun.started_on  # an exact interval
    # SQLite has no interval type: Julian days, exact to the millisecond, order the rows; the
    # reported durations are exact (computed from the datetimes).
    return func.julianday(TaskRun.finished_on) - func.julianday(TaskRun.started_on)


def slowest_runs_in(
    connection: Connection, window: ReportWindow, handler: str | None, limit: int
) -> tuple[SlowRun, ...]:
    """:func:`slowest_runs`, inside the caller's report transaction."""
    # The handler is looked up per run (of_run_task): a join let PostgreSQL pick a hash join
    # over all of TaskQueue, ten times slower than sorting the window's runs.
    handler_of_run = of_run_task(TaskQueue.task_handler_class)
    query = (
        select(
            TaskRun.id,
            TaskRun.task_queue_id,
            handler_of_run,
            TaskRun.status,
            TaskRun.started_on,
            TaskRun.finished_on,
        )
        .where(finished_in_window(window))
        .order_by(_duration_order(connection).desc(), TaskRun.id)
        .limit(limit)
    )
    if handler is not None:
        query = query.where(handler_of_run == handler)
    runs = [
        SlowRun(
            run_id=run_id,
            task_id=task_id,
            handler=name,
            status=RunStatus(status),
            started_on=started_on,
            finished_on=finished_on,
            duration=in_seconds(finished_on - started_on),
        )
        for run_id, task_id, name, status, started_on, finished_on in connection.execute(query)
    ]
    return tuple(sorted(runs, key=lambda run: (-run.duration, run.run_id)))


def slowest_runs(
    database: Database,
    window: ReportWindow,
    *,
    handler: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> tuple[SlowRun, ...]:
    """The ``limit`` longest runs that ended in the window, longest first (then by run id)."""
    handler, limit = check_handler(handler), check_limit(limit)
    return read_with(
        database, lambda connection: slowest_runs_in(connection, window, handler, limit)
    )


@dataclass(frozen=True)
class DurationHistogram:
    """Durations of one handler's finished runs, counted the way Prometheus histograms are.

    ``buckets`` pairs each upper bound (seconds) with the number of runs that took at most
    that long (cumulative); ``count`` is every run, ``sum`` their total seconds.
    """

    handler: str
    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


def _duration_seconds(connection: Connection) -> ColumnElement[Any]:
    if connection.dialect.name == "postgresql":
        return cast(extract("epoch", TaskRun.finished_on - TaskRun.started_on), Double)
    # Julian days are exact to about 50 µs here: round to the millisecond, so whole and
    # millisecond durations compare with the bounds exactly as on PostgreSQL.
    days = func.julianday(TaskRun.finished_on) - func.julianday(TaskRun.started_on)
    return func.round(days * 86400.0, 3)


def _duration_histograms(
    connection: Connection, window: ReportWindow, bounds: tuple[float, ...], handler: str | None
) -> tuple[DurationHistogram, ...]:
    seconds = _duration_seconds(connection)
    query = for_handler(
        runs_with_handler(
            TaskQueue.task_handler_class,
            func.count(),
            func.sum(seconds),
            *(func.count().filter(seconds <= bound) for bound in bounds),
        )
        .where(finished_in_window(window))
        .group_by(TaskQueue.task_handler_class)
        .order_by(TaskQueue.task_handler_class),
        handler,
    )
    return tuple(
        DurationHistogram(
            handler=row[0],
            buckets=tuple(zip(bounds, (int(number) for number in row[3:]), strict=True)),
            count=int(row[1]),
            sum=float(row[2] or 0.0),
        )
        for row in connection.execute(query)
    )


def duration_histograms(
    database: Database,
    window: ReportWindow,
    bounds: Sequence[float],
    *,
    handler: str | None = None,
) -> tuple[DurationHistogram, ...]:
    """Per handler, how many runs that ended in the window took at most each bound (seconds).

    ``bounds`` are ascending, finite and positive; only runs that started count (as for
    :func:`duration_stats`). Sorted by handler. On SQLite durations are measured to the
    millisecond.
    """
    checked = tuple(float(bound) for bound in bounds)
    if not checked or any(
        not math.isfinite(bound) or bound <= 0 or (index and bound <= checked[index - 1])
        for index, bound in enumerate(checked)
    ):
        raise InvalidArgumentError("bounds must be ascending, finite, positive numbers")
    handler = check_handler(handler)
    return read_with(
        database,
        lambda connection: _duration_histograms(connection, window, checked, handler),
    )
