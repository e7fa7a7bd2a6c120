"""Reports: read-only roll-ups of the three tables, as frozen values.

One module serves the command line (``celery-taskq report``), dashboards, an HTTP API and
metrics exporters alike: every function takes a
:class:`~celery_taskq.core.storage.database.Database`, reads in one read-only transaction with
SQLAlchemy ``select()`` expressions, and returns frozen dataclasses (no ORM object escapes).
Times are timezone-aware UTC datetimes; durations and ages are seconds as ``float``.

**The window.** A :class:`ReportWindow` is half-open, ``since <= t < until``; a missing bound
is open. What ``t`` is:

* a task: ``TaskQueue.QueuedOn`` (when it was queued);
* a run: the time it reached its current status: ``FinishedOn`` for a finished run
  (``success``, ``error``, ``timeout``), ``StartedOn`` for a ``running`` one, and its task's
  ``ScheduledOn`` (when it became due) for a ``scheduled`` one. Every run is so counted in
  exactly one window, and the finished runs of a window are the same set for the totals, the
  failure rates, the durations, the slowest runs and the recent failures;
* a dead letter: ``FinishedOn`` of its last run (when it ran out of retries);
* a runner: its lifetime, ``StartedOn`` to ``FinishedOn`` (still running: open), overlaps the
  window.

Due work is a picture of *now* (the ``now`` passed in) and ignores the window.

**The handler filter** is an exact ``TaskHandlerClass``; it narrows every section except the
runners (a runner runs any handler).

**Indexes.** Filters are plain comparisons on columns (never a function of a column), and
the open/scheduled/running predicates are the SQL fragments of :mod:`celery_taskq.core.models`
that the partial indexes are declared with, so SQLite and PostgreSQL use those indexes: due
work (``ix_TaskRuns_scheduled``, ``ix_TaskRuns_running_by_runner``, ``ix_TaskQueue_due``),
the "no open run" test of dead letters (``uq_TaskRuns_one_open_run_per_task``) and a task's
last run (``ix_TaskRuns_TaskQueueId_Id``). The window columns ``QueuedOn`` and ``FinishedOn``
are indexed, so a windowed section reads the window's rows, not the table: the finished runs
of a window are read once for the totals and the durations together, and each run's handler is
looked up by primary key (see :func:`_of_run_task`).

**Durations** are ``FinishedOn - StartedOn`` of finished runs that started (a run cancelled
before it started has none). Percentiles are continuous (linear interpolation between the
closest ranks, SQL's ``percentile_cont``): computed by PostgreSQL in the database, and on
SQLite in Python from the exact durations, with the same formula.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Double,
    Select,
    and_,
    case,
    cast,
    exists,
    extract,
    func,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.orm import aliased

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import (
    FAILED_RUN_STATUSES,
    RUN_OPEN_SQL,
    RUN_RUNNING_SQL,
    RUN_SCHEDULED_SQL,
    TASK_EXHAUSTED_SQL,
    TASK_OPEN_SQL,
    RunnerRole,
    RunnerStatus,
    RunStatus,
    TaskQueue,
    TaskRun,
    TaskRunner,
    UTCDateTime,
)
from celery_taskq.core.storage.database import Database
from celery_taskq.report_limits import DEFAULT_LIMIT as DEFAULT_LIMIT  # re-exported
from celery_taskq.report_limits import MAX_LIMIT as MAX_LIMIT  # re-exported

PERCENTILES = (0.5, 0.9, 0.99)
"""The duration percentiles reported, as fractions."""

_Query = TypeVar("_Query", bound="Select[*tuple[Any, ...]]")


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (the default ``now`` of a report)."""
    return datetime.now(UTC)


# -- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportWindow:
    """A half-open time window ``since <= t < until``; ``None`` leaves that side open."""

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None and (not isinstance(moment, datetime) or moment.tzinfo is None):
                raise InvalidArgumentError(f"{name} must be a timezone-aware datetime")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidArgumentError(
                f"since ({self.since.isoformat()}) must be before until ({self.until.isoformat()})"
            )


@dataclass(frozen=True)
class RunCounts:
    """Runs by ``TaskRuns.Status``; ``total`` is their sum."""

    scheduled: int = 0
    running: int = 0
    success: int = 0
    error: int = 0
    timeout: int = 0
    total: int = field(init=False)

    def __post_init__(self) -> None:
        total = self.scheduled + self.running + self.success + self.error + self.timeout
        object.__setattr__(self, "total", total)

    @property
    def finished(self) -> int:
        """Runs that ended, whatever the outcome."""
        return self.success + self.error + self.timeout

    @property
    def failed(self) -> int:
        """Runs that ended ``error`` or ``timeout``."""
        return self.error + self.timeout


@dataclass(frozen=True)
class TaskCounts:
    """Tasks by ``TaskQueue.LastStatus``, never-run tasks (``NULL``) apart; ``total`` sums them."""

    never_run: int = 0
    scheduled: int = 0
    running: int = 0
    success: int = 0
    error: int = 0
    timeout: int = 0
    total: int = field(init=False)

    def __post_init__(self) -> None:
        total = (
            self.never_run
            + self.scheduled
            + self.running
            + self.success
            + self.error
            + self.timeout
        )
        object.__setattr__(self, "total", total)


@dataclass(frozen=True)
class HandlerTotals:
    """Task and run counts of one handler."""

    handler: str
    tasks: TaskCounts
    runs: RunCounts


@dataclass(frozen=True)
class Totals:
    """Task and run counts of the window, in all and per handler (sorted by handler)."""

    tasks: TaskCounts
    runs: RunCounts
    by_handler: tuple[HandlerTotals, ...]


@dataclass(frozen=True)
class FailureRate:
    """Failed (``error`` + ``timeout``) over finished runs; ``rate`` is ``None`` with none."""

    handler: str | None
    """``None`` for all handlers together."""
    finished: int
    failed: int
    rate: float | None


@dataclass(frozen=True)
class FailureRates:
    """The failure rate over all handlers, and per handler (sorted by handler)."""

    overall: FailureRate
    by_handler: tuple[FailureRate, ...]


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


@dataclass(frozen=True)
class FailedRun:
    """A run that ended ``error`` or ``timeout``."""

    run_id: int
    task_id: int
    handler: str
    status: RunStatus
    error_code: str | None
    error_message: str | None
    finished_on: datetime


@dataclass(frozen=True)
class DeadLetter:
    """A task out of retries: its last run failed, ``TaskRunsFailed >= MaxRetries``, no open run.

    It gets no further run unless retried by hand. A cancelled task qualifies too when its
    ended runs exhausted its retries (``cancel_requested_on`` tells).
    """

    task_id: int
    handler: str
    last_status: RunStatus
    task_runs_failed: int
    max_retries: int
    queued_on: datetime
    cancel_requested_on: datetime | None
    last_run_id: int
    last_finished_on: datetime
    error_code: str | None
    error_message: str | None


@dataclass(frozen=True)
class RunnerReport:
    """A runner row, with its heartbeat age and the number of runs it took."""

    runner_id: int
    role: RunnerRole
    hostname: str
    process_id: int
    status: RunnerStatus
    started_on: datetime
    finished_on: datetime | None
    heartbeat_on: datetime | None
    heartbeat_age: float | None
    """Seconds from ``HeartbeatOn`` to the report's ``now``; ``None`` without a heartbeat."""
    runs: int
    """``TaskRuns`` rows whose ``TaskRunnerId`` is this runner (in any status, ever)."""
    worker_hostname: str | None = None
    """The Celery worker (``celery@host``) whose process this is, if any (Flower's key)."""


@dataclass(frozen=True)
class DueWork:
    """Work waiting or in progress at ``now`` (not windowed).

    A scheduled run is due when its task's ``ScheduledOn`` has come (runs have no time of
    their own before they start).
    """

    due_scheduled_runs: int
    """Scheduled runs a runner may claim now."""
    future_scheduled_runs: int
    """Scheduled runs whose task's ``ScheduledOn`` is still ahead."""
    running_runs: int
    """Runs in ``running`` status."""
    oldest_due_age: float | None
    """Seconds since the oldest due scheduled run became due; ``None`` if none is due."""
    due_tasks_without_run: int
    """Due tasks that OnProcess has not given a run yet (never run, or retries left)."""


@dataclass(frozen=True)
class Report:
    """Every section of a report, for one window, handler filter and ``now``."""

    now: datetime
    window: ReportWindow
    handler: str | None
    limit: int
    totals: Totals
    failure_rates: FailureRates
    durations: tuple[DurationStats, ...]
    slowest_runs: tuple[SlowRun, ...]
    recent_failures: tuple[FailedRun, ...]
    dead_letters: tuple[DeadLetter, ...]
    runners: tuple[RunnerReport, ...]
    due_work: DueWork


# -- arguments ------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+)([smhdw])", re.IGNORECASE)
_DURATION = re.compile(r"(?:\d+[smhdw])+", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_moment(value: str) -> datetime | timedelta:
    """An ISO 8601 time with a UTC offset, or a duration back from now (``24h``, ``1h30m``).

    Units: ``s``, ``m``, ``h``, ``d``, ``w``. Resolve a duration with :func:`resolve_moment`.
    """
    text_value = value.strip()
    if _DURATION.fullmatch(text_value):
        seconds = sum(
            int(number) * _UNIT_SECONDS[unit.lower()]
            for number, unit in _DURATION_PART.findall(text_value)
        )
        return timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text_value)
    except ValueError:
        raise InvalidArgumentError(
            f"{value!r} is neither an ISO 8601 time nor a duration like 24h, 30m or 7d"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidArgumentError(
            f"{value!r} has no UTC offset: write it like 2026-01-31T08:00:00Z or +02:00"
        )
    return parsed.astimezone(UTC)


def resolve_moment(value: datetime | timedelta | None, now: datetime) -> datetime | None:
    """A parsed moment as a time: a duration counts back from ``now``."""
    if isinstance(value, timedelta):
        return now - value
    return value


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return limit


def _check_handler(handler: str | None) -> str | None:
    if handler is not None and (not isinstance(handler, str) or not handler):
        raise InvalidArgumentError("handler must be a non-empty TaskHandlerClass")
    return handler


def _check_now(now: datetime | None) -> datetime:
    if now is None:
        return utc_now()
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise InvalidArgumentError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


# -- percentiles ----------------------------------------------------------------------------


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


# -- SQL pieces -----------------------------------------------------------------------------


def _within(column: Any, window: ReportWindow) -> ColumnElement[bool]:
    """``column`` is set and inside the window (plain comparisons: an index can serve them)."""
    conditions: list[ColumnElement[bool]] = [column.is_not(None)]
    if window.since is not None:
        conditions.append(column >= window.since)
    if window.until is not None:
        conditions.append(column < window.until)
    return and_(*conditions)


def _run_in_window(
    window: ReportWindow, scheduled_on: Any = TaskQueue.scheduled_on
) -> ColumnElement[bool]:
    """A run reached its current status inside the window (see the module's docstring).

    ``scheduled_on`` is the task's due time: the joined column, or :func:`_of_run_task`'s.
    """
    return or_(
        _within(TaskRun.finished_on, window),
        and_(text(RUN_RUNNING_SQL), _within(TaskRun.started_on, window)),
        and_(text(RUN_SCHEDULED_SQL), _within(scheduled_on, window)),
    )


def _of_run_task(column: Any) -> Any:
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


def _finished_in_window(window: ReportWindow) -> ColumnElement[bool]:
    """A run ended inside the window, after it started (so it has a duration)."""
    return and_(_within(TaskRun.finished_on, window), TaskRun.started_on.is_not(None))


def _runs_with_handler(*columns: Any) -> Select[*tuple[Any, ...]]:
    """``SELECT columns FROM TaskRuns JOIN TaskQueue`` (by the task's primary key)."""
    return select(*columns).join_from(TaskRun, TaskQueue, TaskRun.task_queue_id == TaskQueue.id)


def _for_handler(query: _Query, handler: str | None) -> _Query:
    return query if handler is None else query.where(TaskQueue.task_handler_class == handler)


_T = TypeVar("_T")


def _required(value: _T | None) -> _T:
    """A value the query's filter guarantees is set."""
    if value is None:  # pragma: no cover - excluded by the WHERE clause
        raise AssertionError("a filtered column is NULL")
    return value


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


@contextmanager
def _report_transaction(database: Database) -> Iterator[Connection]:
    """One read-only transaction for report queries.

    On PostgreSQL, JIT compilation is switched off for it: the planner's cost estimates for
    the per-run handler lookups cross ``jit_above_cost`` although each query reads only a
    window's runs, and compiling took 15-30 ms per query, more than running it.
    """
    with database.transaction(read_only=True) as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SET LOCAL jit = off"))
        yield connection


def _read(database: Database, read: Callable[[Connection], _T]) -> _T:
    with _report_transaction(database) as connection:
        return read(connection)


# -- totals and failure rates ---------------------------------------------------------------


def _task_counts(
    connection: Connection, window: ReportWindow, handler: str | None
) -> dict[str, dict[str, int]]:
    query = _for_handler(
        select(TaskQueue.task_handler_class, TaskQueue.last_status, func.count())
        .where(_within(TaskQueue.queued_on, window))
        .group_by(TaskQueue.task_handler_class, TaskQueue.last_status),
        handler,
    )
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for handler_class, status, number in connection.execute(query):
        counts[handler_class]["never_run" if status is None else RunStatus(status).value] = number
    return counts


def _open_run_counts(
    connection: Connection, window: ReportWindow, handler: str | None
) -> dict[str, dict[str, int]]:
    """Running runs that started in the window and scheduled runs that became due in it.

    Both statuses have partial indexes, so this reads only the open runs, however large the
    table; the finished runs of the window are counted by :func:`_finished_runs`.
    """
    handler_of_run = _of_run_task(TaskQueue.task_handler_class)
    query = (
        select(handler_of_run, TaskRun.status, func.count())
        .where(
            TaskRun.finished_on.is_(None),
            or_(
                and_(text(RUN_RUNNING_SQL), _within(TaskRun.started_on, window)),
                and_(
                    text(RUN_SCHEDULED_SQL), _within(_of_run_task(TaskQueue.scheduled_on), window)
                ),
            ),
        )
        .group_by(handler_of_run, TaskRun.status)
    )
    if handler is not None:
        query = query.where(handler_of_run == handler)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for handler_class, status, number in connection.execute(query):
        counts[handler_class][RunStatus(status).value] = number
    return counts


def _add_counts(
    *per_handler: dict[str, dict[str, int]],
) -> dict[str, dict[str, int]]:
    """Per-handler counts added up, key by key."""
    total: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for counts in per_handler:
        for name, by_status in counts.items():
            for status, number in by_status.items():
                total[name][status] += number
    return {name: dict(by_status) for name, by_status in total.items()}


def _sum_counts(per_handler: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for counts in per_handler:
        for key, number in counts.items():
            total[key] += number
    return total


def _totals_of(tasks: dict[str, dict[str, int]], runs: dict[str, dict[str, int]]) -> Totals:
    return Totals(
        tasks=TaskCounts(**_sum_counts(tasks.values())),
        runs=RunCounts(**_sum_counts(runs.values())),
        by_handler=tuple(
            HandlerTotals(
                handler=name,
                tasks=TaskCounts(**tasks.get(name, {})),
                runs=RunCounts(**runs.get(name, {})),
            )
            for name in sorted(set(tasks) | set(runs))
        ),
    )


def _totals(connection: Connection, window: ReportWindow, handler: str | None) -> Totals:
    finished = _finished_runs(connection, window, handler).counts
    return _totals_of(
        _task_counts(connection, window, handler),
        _add_counts(finished, _open_run_counts(connection, window, handler)),
    )


def _failure_rate(handler: str | None, runs: RunCounts) -> FailureRate:
    finished, failed = runs.finished, runs.failed
    return FailureRate(
        handler=handler,
        finished=finished,
        failed=failed,
        rate=failed / finished if finished else None,
    )


def _failure_rates_of(counted: Totals) -> FailureRates:
    return FailureRates(
        overall=_failure_rate(None, counted.runs),
        by_handler=tuple(
            _failure_rate(row.handler, row.runs) for row in counted.by_handler if row.runs.finished
        ),
    )


def totals(database: Database, window: ReportWindow, *, handler: str | None = None) -> Totals:
    """Tasks by ``LastStatus`` (queued in the window) and runs by ``Status``, per handler too.

    Tasks that never ran (``LastStatus`` NULL) count as ``never_run``. A run counts in the
    window in which it reached its current status (see the module's docstring).
    """
    handler = _check_handler(handler)
    return _read(database, lambda connection: _totals(connection, window, handler))


def failure_rates(
    database: Database, window: ReportWindow, *, handler: str | None = None
) -> FailureRates:
    """Failed (``error`` + ``timeout``) over finished runs that ended in the window.

    Overall, and per handler for the handlers with a finished run.
    """
    return _failure_rates_of(totals(database, window, handler=handler))


# -- durations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FinishedRuns:
    """One pass over the runs that ended in a window: counts by status, and durations."""

    counts: dict[str, dict[str, int]]
    """Handler → status → runs."""
    durations: tuple[DurationStats, ...]


def _finished_runs(
    connection: Connection, window: ReportWindow, handler: str | None
) -> _FinishedRuns:
    if connection.dialect.name == "postgresql":
        return _finished_runs_postgresql(connection, window, handler)
    return _finished_runs_python(connection, window, handler)


def _finished_runs_postgresql(
    connection: Connection, window: ReportWindow, handler: str | None
) -> _FinishedRuns:
    # One index range scan of the window's finished runs gives the counts by status and the
    # percentiles, which only runs that started have (FILTER).
    seconds = cast(extract("epoch", TaskRun.finished_on - TaskRun.started_on), Double)
    started = TaskRun.started_on.is_not(None)
    handler_of_run = _of_run_task(TaskQueue.task_handler_class)
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
        .where(_within(TaskRun.finished_on, window))
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
    return _FinishedRuns(counts, tuple(durations))


def _finished_runs_python(
    connection: Connection, window: ReportWindow, handler: str | None
) -> _FinishedRuns:
    query = _for_handler(
        _runs_with_handler(
            TaskQueue.task_handler_class, TaskRun.status, TaskRun.started_on, TaskRun.finished_on
        ).where(_within(TaskRun.finished_on, window)),
        handler,
    )
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    seconds: dict[str, list[float]] = defaultdict(list)
    for name, status, started_on, finished_on in connection.execute(query):
        counts[name][RunStatus(status).value] += 1
        if started_on is not None:
            seconds[name].append(_seconds(finished_on - started_on))
    durations = []
    for name in sorted(seconds):
        values = sorted(seconds[name])
        p50, p90, p99 = (percentile_cont(values, fraction) for fraction in PERCENTILES)
        durations.append(
            DurationStats(handler=name, runs=len(values), p50=p50, p90=p90, p99=p99, max=values[-1])
        )
    return _FinishedRuns({name: dict(by) for name, by in counts.items()}, tuple(durations))


def duration_stats(
    database: Database, window: ReportWindow, *, handler: str | None = None
) -> tuple[DurationStats, ...]:
    """p50, p90, p99 and max duration per handler of the runs that ended in the window.

    Only runs that started count (``FinishedOn - StartedOn``); sorted by handler.
    """
    handler = _check_handler(handler)
    return _read(database, lambda connection: _finished_runs(connection, window, handler).durations)


# -- slowest runs and recent failures -------------------------------------------------------


def _duration_order(connection: Connection) -> ColumnElement[Any]:
    if connection.dialect.name == "postgresql":
        return TaskRun.finished_on - TaskRun.started_on  # an exact interval
    # SQLite has no interval type: Julian days, exact to the millisecond, order the rows; the
    # reported durations are exact (computed from the datetimes).
    return func.julianday(TaskRun.finished_on) - func.julianday(TaskRun.started_on)


def _slowest_runs(
    connection: Connection, window: ReportWindow, handler: str | None, limit: int
) -> tuple[SlowRun, ...]:
    # The handler is looked up per run (_of_run_task): a join let PostgreSQL pick a hash join
    # over all of TaskQueue, ten times slower than sorting the window's runs.
    handler_of_run = _of_run_task(TaskQueue.task_handler_class)
    query = (
        select(
            TaskRun.id,
            TaskRun.task_queue_id,
            handler_of_run,
            TaskRun.status,
            TaskRun.started_on,
            TaskRun.finished_on,
        )
        .where(_finished_in_window(window))
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
            duration=_seconds(finished_on - started_on),
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
    handler, limit = _check_handler(handler), _check_limit(limit)
    return _read(database, lambda connection: _slowest_runs(connection, window, handler, limit))


def _recent_failures(
    connection: Connection, window: ReportWindow, handler: str | None, limit: int
) -> tuple[FailedRun, ...]:
    query = _for_handler(
        _runs_with_handler(
            TaskRun.id,
            TaskRun.task_queue_id,
            TaskQueue.task_handler_class,
            TaskRun.status,
            TaskRun.error_code,
            TaskRun.error_message,
            TaskRun.finished_on,
        )
        .where(_within(TaskRun.finished_on, window), TaskRun.status.in_(FAILED_RUN_STATUSES))
        .order_by(TaskRun.finished_on.desc(), TaskRun.id.desc())
        .limit(limit),
        handler,
    )
    return tuple(
        FailedRun(
            run_id=run_id,
            task_id=task_id,
            handler=name,
            status=RunStatus(status),
            error_code=error_code,
            error_message=error_message,
            finished_on=finished_on,
        )
        for run_id, task_id, name, status, error_code, error_message, finished_on in (
            connection.execute(query)
        )
    )


def recent_failures(
    database: Database,
    window: ReportWindow,
    *,
    handler: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> tuple[FailedRun, ...]:
    """The ``limit`` newest runs that ended ``error`` or ``timeout`` in the window."""
    handler, limit = _check_handler(handler), _check_limit(limit)
    return _read(database, lambda connection: _recent_failures(connection, window, handler, limit))


# -- dead letters ---------------------------------------------------------------------------


def _dead_letters(
    connection: Connection, window: ReportWindow, handler: str | None, limit: int
) -> tuple[DeadLetter, ...]:
    # Driven from the window's failed runs, newest first (ix_TaskRuns_FinishedOn): a run is a
    # dead letter's last run when its task is out of retries and no later run of it exists.
    last_run = aliased(TaskRun, name="LastRun")
    later_run = aliased(TaskRun, name="LaterRun")
    has_later_run = (
        select(later_run.id)
        .where(later_run.task_queue_id == last_run.task_queue_id, later_run.id > last_run.id)
        .correlate(last_run)
    )
    open_run = (
        select(TaskRun.id)
        .where(TaskRun.task_queue_id == TaskQueue.id, text(RUN_OPEN_SQL))
        .correlate(TaskQueue)
    )
    query = _for_handler(
        select(
            TaskQueue.id,
            TaskQueue.task_handler_class,
            TaskQueue.last_status,
            TaskQueue.task_runs_failed,
            TaskQueue.max_retries,
            TaskQueue.queued_on,
            TaskQueue.cancel_requested_on,
            last_run.id,
            last_run.finished_on,
            last_run.error_code,
            last_run.error_message,
        )
        .select_from(last_run)
        .join(TaskQueue, TaskQueue.id == last_run.task_queue_id)
        .where(
            _within(last_run.finished_on, window),
            last_run.status.in_(FAILED_RUN_STATUSES),
            text(TASK_EXHAUSTED_SQL),  # its columns are TaskQueue's alone
            ~exists(has_later_run),
            ~exists(open_run),
        )
        .order_by(last_run.finished_on.desc(), TaskQueue.id.desc())
        .limit(limit),
        handler,
    )
    return tuple(
        DeadLetter(
            task_id=row[0],
            handler=row[1],
            last_status=RunStatus(_required(row[2])),
            task_runs_failed=row[3],
            max_retries=row[4],
            queued_on=row[5],
            cancel_requested_on=row[6],
            last_run_id=row[7],
            last_finished_on=_required(row[8]),
            error_code=row[9],
            error_message=row[10],
        )
        for row in connection.execute(query)
    )


def dead_letters(
    database: Database,
    window: ReportWindow,
    *,
    handler: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> tuple[DeadLetter, ...]:
    """Tasks out of retries whose last run ended in the window, newest first.

    Out of retries: the last run failed (``LastStatus`` ``error``/``timeout``),
    ``TaskRunsFailed >= MaxRetries``, and the task has no open (scheduled or running) run.
    """
    handler, limit = _check_handler(handler), _check_limit(limit)
    return _read(database, lambda connection: _dead_letters(connection, window, handler, limit))


# -- runners --------------------------------------------------------------------------------


def _runners(
    connection: Connection, window: ReportWindow, now: datetime, limit: int
) -> tuple[RunnerReport, ...]:
    query = select(
        TaskRunner.id,
        TaskRunner.role,
        TaskRunner.hostname,
        TaskRunner.process_id,
        TaskRunner.status,
        TaskRunner.started_on,
        TaskRunner.finished_on,
        TaskRunner.heartbeat_on,
        TaskRunner.worker_hostname,
    )
    if window.until is not None:
        query = query.where(TaskRunner.started_on < window.until)
    if window.since is not None:
        query = query.where(
            or_(TaskRunner.finished_on.is_(None), TaskRunner.finished_on >= window.since)
        )
    running_first = case((TaskRunner.status == RunnerStatus.RUNNING, 0), else_=1)
    rows = connection.execute(
        query.order_by(running_first, TaskRunner.id.desc()).limit(limit)
    ).all()
    ids = [row[0] for row in rows]
    runs: dict[int, int] = {}
    if ids:
        counts = connection.execute(
            select(TaskRun.task_runner_id, func.count())
            .where(TaskRun.task_runner_id.in_(ids))
            .group_by(TaskRun.task_runner_id)
        )
        for runner_id, number in counts:
            if runner_id is not None:
                runs[runner_id] = number
    reported = []
    for runner_id, role, host, pid, status, started_on, finished_on, heartbeat_on, worker in rows:
        reported.append(
            RunnerReport(
                runner_id=runner_id,
                role=RunnerRole(role),
                hostname=host,
                process_id=pid,
                status=RunnerStatus(status),
                started_on=started_on,
                finished_on=finished_on,
                heartbeat_on=heartbeat_on,
                heartbeat_age=None if heartbeat_on is None else _seconds(now - heartbeat_on),
                runs=runs.get(runner_id, 0),
                worker_hostname=worker,
            )
        )
    return tuple(reported)


def runners(
    database: Database,
    window: ReportWindow,
    *,
    now: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
) -> tuple[RunnerReport, ...]:
    """Runners alive at some time in the window: running ones first, then newest first.

    ``heartbeat_age`` is measured against ``now`` (default: the current time).
    """
    now, limit = _check_now(now), _check_limit(limit)
    return _read(database, lambda connection: _runners(connection, window, now, limit))


# -- due work -------------------------------------------------------------------------------


def _due_work(connection: Connection, now: datetime, handler: str | None) -> DueWork:
    is_due = TaskQueue.scheduled_on <= now
    scheduled = connection.execute(
        _for_handler(
            _runs_with_handler(
                func.count().filter(is_due),
                func.count().filter(TaskQueue.scheduled_on > now),
                func.min(TaskQueue.scheduled_on).filter(is_due),
            ).where(text(RUN_SCHEDULED_SQL)),
            handler,
        )
    ).one()
    running_query = select(func.count()).select_from(TaskRun).where(text(RUN_RUNNING_SQL))
    if handler is not None:
        running_query = _for_handler(
            _runs_with_handler(func.count()).where(text(RUN_RUNNING_SQL)), handler
        )
    running = connection.execute(running_query).scalar_one()
    waiting = connection.execute(
        _for_handler(
            select(func.count()).select_from(TaskQueue).where(is_due, text(TASK_OPEN_SQL)),
            handler,
        )
    ).scalar_one()
    due, future, oldest = scheduled
    return DueWork(
        due_scheduled_runs=due,
        future_scheduled_runs=future,
        running_runs=running,
        oldest_due_age=None if oldest is None else _seconds(now - oldest),
        due_tasks_without_run=waiting,
    )


def due_work(
    database: Database, *, now: datetime | None = None, handler: str | None = None
) -> DueWork:
    """Scheduled runs due and not yet due, running runs, and how long the oldest has waited."""
    now, handler = _check_now(now), _check_handler(handler)
    return _read(database, lambda connection: _due_work(connection, now, handler))


# -- runs over time -------------------------------------------------------------------------

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
    since, until = _required(window.since), _required(window.until)
    width = (until - since) / buckets
    return [since + width * index for index in range(buckets)] + [until]


def _runs_over_time(
    connection: Connection, window: ReportWindow, bounds: list[datetime], handler: str | None
) -> dict[int, dict[str, int]]:
    # The run's moment as the module's docstring defines it; then its bucket by plain
    # comparisons with the boundaries (the same SQL on both databases); grouped over columns
    # of subqueries, so no bound parameter is repeated between SELECT and GROUP BY.
    moment = case(
        (TaskRun.finished_on.is_not(None), TaskRun.finished_on),
        (TaskRun.status == RunStatus.RUNNING, TaskRun.started_on),
        else_=TaskQueue.scheduled_on,
    )
    moments = _for_handler(
        _runs_with_handler(moment.label("moment"), TaskRun.status.label("status")).where(
            _run_in_window(window)
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
    handler = _check_handler(handler)
    bounds = _bucket_bounds(window, buckets)
    counts = _read(
        database, lambda connection: _runs_over_time(connection, window, bounds, handler)
    )
    return RunSeries(
        window=window,
        handler=handler,
        bucket_seconds=_seconds(bounds[-1] - bounds[0]) / buckets,
        buckets=tuple(
            RunBucket(start=bounds[index], end=bounds[index + 1], runs=RunCounts(**counts[index]))
            for index in range(buckets)
        ),
    )


# -- histograms and runner counts (for metrics exporters) -----------------------------------


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
    query = _for_handler(
        _runs_with_handler(
            TaskQueue.task_handler_class,
            func.count(),
            func.sum(seconds),
            *(func.count().filter(seconds <= bound) for bound in bounds),
        )
        .where(_finished_in_window(window))
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
    handler = _check_handler(handler)
    return _read(
        database,
        lambda connection: _duration_histograms(connection, window, checked, handler),
    )


@dataclass(frozen=True)
class RunnerCount:
    """How many ``TaskRunners`` rows have one role and status."""

    role: RunnerRole
    status: RunnerStatus
    runners: int


def runner_counts(database: Database) -> tuple[RunnerCount, ...]:
    """Runner rows by role and status, ever (not windowed); sorted by role, then status.

    The ``running`` ones are the live runners; the ``timeout`` ones were found dead and
    reaped by the overseer.
    """

    def read(connection: Connection) -> tuple[RunnerCount, ...]:
        rows = connection.execute(
            select(TaskRunner.role, TaskRunner.status, func.count()).group_by(
                TaskRunner.role, TaskRunner.status
            )
        )
        counted = [
            RunnerCount(role=RunnerRole(role), status=RunnerStatus(status), runners=number)
            for role, status, number in rows
        ]
        return tuple(sorted(counted, key=lambda row: (row.role.value, row.status.value)))

    return _read(database, read)


# -- the whole report -----------------------------------------------------------------------


def build_report(
    database: Database,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    handler: str | None = None,
    now: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Report:
    """Every section for one window, read in one read-only transaction.

    ``now`` (default: the current time) is what heartbeat ages and due work are measured
    against; ``limit`` bounds each top-N section.
    """
    window = ReportWindow(since, until)
    now, handler, limit = _check_now(now), _check_handler(handler), _check_limit(limit)
    with _report_transaction(database) as connection:
        finished = _finished_runs(connection, window, handler)
        report_totals = _totals_of(
            _task_counts(connection, window, handler),
            _add_counts(finished.counts, _open_run_counts(connection, window, handler)),
        )
        return Report(
            now=now,
            window=window,
            handler=handler,
            limit=limit,
            totals=report_totals,
            failure_rates=_failure_rates_of(report_totals),
            durations=finished.durations,
            slowest_runs=_slowest_runs(connection, window, handler, limit),
            recent_failures=_recent_failures(connection, window, handler, limit),
            dead_letters=_dead_letters(connection, window, handler, limit),
            runners=_runners(connection, window, now, limit),
            due_work=_due_work(connection, now, handler),
        )


def _json_safe(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            item.name: _json_safe(getattr(value, item.name)) for item in dataclasses.fields(value)
        }
    if isinstance(value, tuple | list):
        return [_json_safe(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def report_as_dict(report: Report) -> dict[str, Any]:
    """The report as JSON-safe data: dataclasses become objects (keyed by field name), tuples
    lists, times ISO 8601 strings with their offset, statuses and roles their values."""
    result: dict[str, Any] = _json_safe(report)
    return result
