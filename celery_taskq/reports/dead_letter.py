"""Dead letters: tasks out of retries whose last run ended in the window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Connection,
    exists,
    select,
    text,
)
from sqlalchemy.orm import aliased

from celery_taskq.core.models import (
    FAILED_RUN_STATUSES,
    RUN_OPEN_SQL,
    TASK_EXHAUSTED_SQL,
    RunStatus,
    TaskQueue,
    TaskRun,
)
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.limits import DEFAULT_LIMIT
from celery_taskq.reports.sql import for_handler, read_with, required, within
from celery_taskq.reports.window import ReportWindow, check_handler, check_limit


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


def dead_letters_in(
    connection: Connection, window: ReportWindow, handler: str | None, limit: int
) -> tuple[DeadLetter, ...]:
    """:func:`dead_letters`, inside the caller's report transaction."""
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
    query = for_handler(
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
            within(last_run.finished_on, window),
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
            last_status=RunStatus(required(row[2])),
            task_runs_failed=row[3],
            max_retries=row[4],
            queued_on=row[5],
            cancel_requested_on=row[6],
            last_run_id=row[7],
            last_finished_on=required(row[8]),
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
    handler, limit = check_handler(handler), check_limit(limit)
    return read_with(
        database, lambda connection: dead_letters_in(connection, window, handler, limit)
    )
