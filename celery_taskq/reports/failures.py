"""Recent failures: the newest runs that ended ``error`` or ``timeout`` in the window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Connection,
)

from celery_taskq.core.models import (
    FAILED_RUN_STATUSES,
    RunStatus,
    TaskQueue,
    TaskRun,
)
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.limits import DEFAULT_LIMIT
from celery_taskq.reports.sql import for_handler, read_with, runs_with_handler, within
from celery_taskq.reports.window import ReportWindow, check_handler, check_limit


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


def recent_failures_in(
    connection: Connection, window: ReportWindow, handler: str | None, limit: int
) -> tuple[FailedRun, ...]:
    """:func:`recent_failures`, inside the caller's report transaction."""
    query = for_handler(
        runs_with_handler(
            TaskRun.id,
            TaskRun.task_queue_id,
            TaskQueue.task_handler_class,
            TaskRun.status,
            TaskRun.error_code,
            TaskRun.error_message,
            TaskRun.finished_on,
        )
        .where(within(TaskRun.finished_on, window), TaskRun.status.in_(FAILED_RUN_STATUSES))
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
    handler, limit = check_handler(handler), check_limit(limit)
    return read_with(
        database, lambda connection: recent_failures_in(connection, window, handler, limit)
    )
