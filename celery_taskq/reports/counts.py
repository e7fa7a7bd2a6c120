"""Totals and failure rates: tasks by last status and runs by status, in all and per handler;
failure rates per attempt and per task."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import (
    Connection,
    and_,
    case,
    exists,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.orm import aliased

from celery_taskq.core.models import (
    FAILED_RUN_STATUSES,
    RUN_RUNNING_SQL,
    RUN_SCHEDULED_SQL,
    RunStatus,
    TaskQueue,
    TaskRun,
)
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.durations import finished_runs_in
from celery_taskq.reports.sql import (
    for_handler,
    of_run_task,
    read_with,
    runs_with_handler,
    within,
)
from celery_taskq.reports.window import ReportWindow, check_handler


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
    """Failure rates of one handler (or of all), per attempt and per task, each labelled.

    *Per attempt*: failed (``error`` + ``timeout``) runs over finished runs. A failed attempt
    counts even when a later one (an autoretry, a retry) succeeded.
    *Per task*: tasks whose final outcome failed over tasks that reached a final outcome, each
    counted in the window in which its last run ended. Final: the last run succeeded, or it
    failed with no retry left (``TaskRunsFailed >= MaxRetries``) or the task was cancelled; a
    task whose failed run will be retried has no final outcome yet and is not counted.
    A rate is ``None`` when nothing was counted.
    """

    handler: str | None
    """``None`` for all handlers together."""
    attempts: int
    """Finished runs."""
    failed_attempts: int
    attempt_failure_rate: float | None
    tasks: int
    """Tasks whose final outcome is known."""
    failed_tasks: int
    task_failure_rate: float | None


@dataclass(frozen=True)
class FailureRates:
    """The failure rates over all handlers, and per handler (sorted by handler)."""

    overall: FailureRate
    by_handler: tuple[FailureRate, ...]


@dataclass(frozen=True)
class FinalOutcomes:
    """Tasks whose final outcome is known: ``succeeded`` plus ``failed``."""

    succeeded: int = 0
    failed: int = 0


def task_counts_in(
    connection: Connection, window: ReportWindow, handler: str | None
) -> dict[str, dict[str, int]]:
    """Tasks queued in the window: handler → last status (``never_run`` for none) → tasks."""
    query = for_handler(
        select(TaskQueue.task_handler_class, TaskQueue.last_status, func.count())
        .where(within(TaskQueue.queued_on, window))
        .group_by(TaskQueue.task_handler_class, TaskQueue.last_status),
        handler,
    )
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for handler_class, status, number in connection.execute(query):
        counts[handler_class]["never_run" if status is None else RunStatus(status).value] = number
    return counts


def open_run_counts_in(
    connection: Connection, window: ReportWindow, handler: str | None
) -> dict[str, dict[str, int]]:
    """Running runs that started in the window and scheduled runs that became due in it.

    Both statuses have partial indexes, so this reads only the open runs, however large the
    table; the finished runs of the window are counted by :func:`finished_runs_in`.
    """
    handler_of_run = of_run_task(TaskQueue.task_handler_class)
    query = (
        select(handler_of_run, TaskRun.status, func.count())
        .where(
            TaskRun.finished_on.is_(None),
            or_(
                and_(text(RUN_RUNNING_SQL), within(TaskRun.started_on, window)),
                and_(text(RUN_SCHEDULED_SQL), within(of_run_task(TaskQueue.scheduled_on), window)),
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


def add_counts(
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


def totals_of(tasks: dict[str, dict[str, int]], runs: dict[str, dict[str, int]]) -> Totals:
    """Per-handler task and run counts as :class:`Totals`."""
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


def totals_in(connection: Connection, window: ReportWindow, handler: str | None) -> Totals:
    """:func:`totals`, inside the caller's report transaction."""
    finished = finished_runs_in(connection, window, handler).counts
    return totals_of(
        task_counts_in(connection, window, handler),
        add_counts(finished, open_run_counts_in(connection, window, handler)),
    )


def final_outcomes_in(
    connection: Connection, window: ReportWindow, handler: str | None
) -> dict[str, FinalOutcomes]:
    """Tasks whose last run ended in the window with a final outcome, per handler.

    Driven from the window's finished runs (``ix_TaskRuns_FinishedOn``); a run is its task's
    last when no later run of the task exists (``ix_TaskRuns_TaskQueueId_Id``).
    """
    later_run = aliased(TaskRun, name="LaterRun")
    has_later_run = (
        select(later_run.id)
        .where(later_run.task_queue_id == TaskRun.task_queue_id, later_run.id > TaskRun.id)
        .correlate(TaskRun)
    )
    failed_final = and_(
        TaskRun.status.in_(FAILED_RUN_STATUSES),
        or_(
            TaskQueue.task_runs_failed >= TaskQueue.max_retries,
            TaskQueue.cancel_requested_on.is_not(None),
        ),
    )
    outcome = case(
        (TaskRun.status == RunStatus.SUCCESS, "succeeded"), (failed_final, "failed"), else_=None
    )
    query = for_handler(
        runs_with_handler(TaskQueue.task_handler_class, outcome, func.count())
        .where(within(TaskRun.finished_on, window), ~exists(has_later_run))
        .group_by(TaskQueue.task_handler_class, outcome),
        handler,
    )
    counted: dict[str, dict[str, int]] = defaultdict(dict)
    for handler_class, final, number in connection.execute(query):
        if final is not None:
            counted[handler_class][final] = number
    return {name: FinalOutcomes(**by_outcome) for name, by_outcome in counted.items()}


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _failure_rate(handler: str | None, runs: RunCounts, outcomes: FinalOutcomes) -> FailureRate:
    tasks = outcomes.succeeded + outcomes.failed
    return FailureRate(
        handler=handler,
        attempts=runs.finished,
        failed_attempts=runs.failed,
        attempt_failure_rate=_ratio(runs.failed, runs.finished),
        tasks=tasks,
        failed_tasks=outcomes.failed,
        task_failure_rate=_ratio(outcomes.failed, tasks),
    )


def failure_rates_of(counted: Totals, outcomes: dict[str, FinalOutcomes]) -> FailureRates:
    """The failure rates of counted totals and of the tasks' final outcomes."""
    runs_of = {row.handler: row.runs for row in counted.by_handler}
    handlers = sorted(
        {name for name, runs in runs_of.items() if runs.finished}
        | {name for name, final in outcomes.items() if final.succeeded + final.failed}
    )
    overall = FinalOutcomes(
        succeeded=sum(final.succeeded for final in outcomes.values()),
        failed=sum(final.failed for final in outcomes.values()),
    )
    return FailureRates(
        overall=_failure_rate(None, counted.runs, overall),
        by_handler=tuple(
            _failure_rate(name, runs_of.get(name, RunCounts()), outcomes.get(name, FinalOutcomes()))
            for name in handlers
        ),
    )


def totals(database: Database, window: ReportWindow, *, handler: str | None = None) -> Totals:
    """Tasks by ``LastStatus`` (queued in the window) and runs by ``Status``, per handler too.

    Tasks that never ran (``LastStatus`` NULL) count as ``never_run``. A run counts in the
    window in which it reached its current status (see the module's docstring).
    """
    handler = check_handler(handler)
    return read_with(database, lambda connection: totals_in(connection, window, handler))


def failure_rates(
    database: Database, window: ReportWindow, *, handler: str | None = None
) -> FailureRates:
    """Failure rates per attempt (failed over finished runs that ended in the window) and per
    task (final failures over final outcomes reached in the window; see :class:`FailureRate`).

    Overall, and per handler for the handlers with a finished run.
    """
    handler = check_handler(handler)

    def read(connection: Connection) -> FailureRates:
        return failure_rates_of(
            totals_in(connection, window, handler), final_outcomes_in(connection, window, handler)
        )

    return read_with(database, read)
