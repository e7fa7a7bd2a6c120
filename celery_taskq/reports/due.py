"""Due work: what waits and what runs at ``now`` (not windowed)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Connection,
    func,
    select,
    text,
)

from celery_taskq.core.models import (
    RUN_RUNNING_SQL,
    RUN_SCHEDULED_SQL,
    TASK_OPEN_SQL,
    TaskQueue,
    TaskRun,
)
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.sql import for_handler, in_seconds, read_with, runs_with_handler
from celery_taskq.reports.window import check_handler, check_now


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


def due_work_in(connection: Connection, now: datetime, handler: str | None) -> DueWork:
    """:func:`due_work`, inside the caller's report transaction."""
    is_due = TaskQueue.scheduled_on <= now
    scheduled = connection.execute(
        for_handler(
            runs_with_handler(
                func.count().filter(is_due),
                func.count().filter(TaskQueue.scheduled_on > now),
                func.min(TaskQueue.scheduled_on).filter(is_due),
            ).where(text(RUN_SCHEDULED_SQL)),
            handler,
        )
    ).one()
    running_query = select(func.count()).select_from(TaskRun).where(text(RUN_RUNNING_SQL))
    if handler is not None:
        running_query = for_handler(
            runs_with_handler(func.count()).where(text(RUN_RUNNING_SQL)), handler
        )
    running = connection.execute(running_query).scalar_one()
    waiting = connection.execute(
        for_handler(
            select(func.count()).select_from(TaskQueue).where(is_due, text(TASK_OPEN_SQL)),
            handler,
        )
    ).scalar_one()
    due, future, oldest = scheduled
    return DueWork(
        due_scheduled_runs=due,
        future_scheduled_runs=future,
        running_runs=running,
        oldest_due_age=None if oldest is None else in_seconds(now - oldest),
        due_tasks_without_run=waiting,
    )


def due_work(
    database: Database, *, now: datetime | None = None, handler: str | None = None
) -> DueWork:
    """Scheduled runs due and not yet due, running runs, and how long the oldest has waited."""
    now, handler = check_now(now), check_handler(handler)
    return read_with(database, lambda connection: due_work_in(connection, now, handler))
