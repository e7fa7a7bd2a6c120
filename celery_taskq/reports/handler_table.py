"""The per-handler table: for each handler, the runs that ended in a window, how many failed,
their p50 and p95 durations, and the throughput (runs ended per hour of the window).

Percentiles are continuous (``percentile_cont``), computed by PostgreSQL in the database and on
SQLite in Python, with the same formula (:func:`~celery_taskq.reports.durations.percentile_cont`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Connection, Double, cast, extract, func, select

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import FAILED_RUN_STATUSES, TaskQueue, TaskRun
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.durations import percentile_cont
from celery_taskq.reports.limits import DEFAULT_LIMIT
from celery_taskq.reports.sql import (
    in_seconds,
    of_run_task,
    read_with,
    runs_with_handler,
    within,
)
from celery_taskq.reports.window import ReportWindow, check_limit

HANDLER_PERCENTILES = (0.5, 0.95)
"""The duration percentiles of the table, as fractions."""


@dataclass(frozen=True)
class HandlerRow:
    """One handler's runs that ended in the window."""

    handler: str
    runs: int
    """Runs that ended (``success``, ``error`` or ``timeout``) in the window."""
    failed_runs: int
    """Of them, those that ended ``error`` or ``timeout``."""
    p50: float | None
    """Median seconds from start to end; ``None`` when no run started (cancelled before)."""
    p95: float | None
    throughput: float
    """Runs ended per hour of the window."""

    @property
    def failure_rate(self) -> float:
        """Failed runs over ended runs (the table lists handlers with at least one)."""
        return self.failed_runs / self.runs


@dataclass(frozen=True)
class _Tally:
    runs: int
    failed: int
    p50: float | None
    p95: float | None


def handler_table(
    database: Database, window: ReportWindow, *, limit: int = DEFAULT_LIMIT
) -> tuple[HandlerRow, ...]:
    """The ``limit`` busiest handlers of the window (most runs ended first, then by name).

    The window needs both bounds: the throughput divides by its length.
    """
    if window.since is None or window.until is None:
        raise InvalidArgumentError("the handler table needs a window with both since and until")
    limit = check_limit(limit)
    hours = in_seconds(window.until - window.since) / 3600
    tallies = read_with(database, lambda connection: _tallies(connection, window))
    rows = [
        HandlerRow(
            handler=name,
            runs=tally.runs,
            failed_runs=tally.failed,
            p50=tally.p50,
            p95=tally.p95,
            throughput=tally.runs / hours,
        )
        for name, tally in tallies.items()
    ]
    rows.sort(key=lambda row: (-row.runs, row.handler))
    return tuple(rows[:limit])


def _tallies(connection: Connection, window: ReportWindow) -> dict[str, _Tally]:
    if connection.dialect.name == "postgresql":
        return _tallies_postgresql(connection, window)
    return _tallies_python(connection, window)


def _tallies_postgresql(connection: Connection, window: ReportWindow) -> dict[str, _Tally]:
    # One range scan of the window's ended runs (FinishedOn is indexed); each run's handler is
    # one primary-key probe (of_run_task), as in durations.py.
    seconds = cast(extract("epoch", TaskRun.finished_on - TaskRun.started_on), Double)
    started = TaskRun.started_on.is_not(None)
    handler = of_run_task(TaskQueue.task_handler_class)
    query = (
        select(
            handler,
            func.count(),
            func.count().filter(TaskRun.status.in_(FAILED_RUN_STATUSES)),
            *(
                func.percentile_cont(cast(fraction, Double)).within_group(seconds).filter(started)
                for fraction in HANDLER_PERCENTILES
            ),
        )
        .where(within(TaskRun.finished_on, window))
        .group_by(handler)
    )
    return {
        name: _Tally(
            runs=runs,
            failed=failed,
            p50=None if p50 is None else float(p50),
            p95=None if p95 is None else float(p95),
        )
        for name, runs, failed, p50, p95 in connection.execute(query)
    }


def _tallies_python(connection: Connection, window: ReportWindow) -> dict[str, _Tally]:
    query = runs_with_handler(
        TaskQueue.task_handler_class, TaskRun.status, TaskRun.started_on, TaskRun.finished_on
    ).where(within(TaskRun.finished_on, window))
    runs: dict[str, int] = defaultdict(int)
    failed: dict[str, int] = defaultdict(int)
    seconds: dict[str, list[float]] = defaultdict(list)
    for name, status, started_on, finished_on in connection.execute(query):
        runs[name] += 1
        failed[name] += status in FAILED_RUN_STATUSES
        if started_on is not None:
            seconds[name].append(in_seconds(finished_on - started_on))
    tallies = {}
    for name, count in runs.items():
        values = sorted(seconds[name])
        p50, p95 = (
            (percentile_cont(values, fraction) for fraction in HANDLER_PERCENTILES)
            if values
            else (None, None)
        )
        tallies[name] = _Tally(runs=count, failed=failed[name], p50=p50, p95=p95)
    return tallies
