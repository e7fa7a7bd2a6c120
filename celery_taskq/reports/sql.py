"""SQL pieces every report section shares: window predicates, the per-run handler lookup, and
one read-only transaction per report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    or_,
    select,
    text,
)

from celery_taskq.core.models import (
    RUN_RUNNING_SQL,
    RUN_SCHEDULED_SQL,
    TaskQueue,
    TaskRun,
)
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.window import ReportWindow

_Query = TypeVar("_Query", bound="Select[*tuple[Any, ...]]")


def within(column: Any, window: ReportWindow) -> ColumnElement[bool]:
    """``column`` is set and inside the window (plain comparisons: an index can serve them)."""
    conditions: list[ColumnElement[bool]] = [column.is_not(None)]
    if window.since is not None:
        conditions.append(column >= window.since)
    if window.until is not None:
        conditions.append(column < window.until)
    return and_(*conditions)


def run_in_window(
    window: ReportWindow, scheduled_on: Any = TaskQueue.scheduled_on
) -> ColumnElement[bool]:
    """A run reached its current status inside the window (see the module's docstring).

    ``scheduled_on`` is the task's due time: the joined column, or :func:`of_run_task`'s.
    """
    return or_(
        within(TaskRun.finished_on, window),
        and_(text(RUN_RUNNING_SQL), within(TaskRun.started_on, window)),
        and_(text(RUN_SCHEDULED_SQL), within(scheduled_on, window)),
    )


def of_run_task(column: Any) -> Any:
    """``column`` of the run's task as a correlated subquery.

    Reports group the few runs of a window by their task's handler. Joined, PostgreSQL may hash
    the whole TaskQueue table; looked up per run, each costs one primary-key probe.
    """
    return (
        select(column)
        .where(TaskQueue.id == TaskRun.task_queue_id)
        .correlate(TaskRun)
        .scalar_subquery()
    )


def finished_in_window(window: ReportWindow) -> ColumnElement[bool]:
    """A run ended inside the window, after it started (so it has a duration)."""
    return and_(within(TaskRun.finished_on, window), TaskRun.started_on.is_not(None))


def runs_with_handler(*columns: Any) -> Select[*tuple[Any, ...]]:
    """``SELECT columns FROM TaskRuns JOIN TaskQueue`` (by the task's primary key)."""
    return select(*columns).join_from(TaskRun, TaskQueue, TaskRun.task_queue_id == TaskQueue.id)


def for_handler(query: _Query, handler: str | None) -> _Query:
    """``query`` narrowed to one ``TaskHandlerClass`` (joined), or as it is for ``None``."""
    return query if handler is None else query.where(TaskQueue.task_handler_class == handler)


_T = TypeVar("_T")


def required(value: _T | None) -> _T:
    """A value the query's filter guarantees is set."""
    if value is None:  # pragma: no cover - excluded by the WHERE clause
        raise AssertionError("a filtered column is NULL")
    return value


def in_seconds(delta: timedelta) -> float:
    """A time difference in seconds."""
    return delta.total_seconds()


@contextmanager
def report_transaction(database: Database) -> Iterator[Connection]:
    """One read-only transaction for report queries.

    On PostgreSQL, JIT compilation is switched off for it: the planner's cost estimates for
    the per-run handler lookups cross ``jit_above_cost`` although each query reads only a
    window's runs, and compiling took 15-30 ms per query, more than running it.
    """
    with database.transaction(read_only=True) as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SET LOCAL jit = off"))
        yield connection


def read_with(database: Database, read: Callable[[Connection], _T]) -> _T:
    """``read(connection)`` inside one :func:`report_transaction`."""
    with report_transaction(database) as connection:
        return read(connection)
