"""How current the queue is: the age of each periodic event's last beat tick, and the due
backlog (scheduled runs due and not yet running) per queue, as of ``now``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select, text

from celery_taskq.core.models import RUN_SCHEDULED_SQL, BeatTick, TaskQueue, TaskRun
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.sql import in_seconds, read_with, runs_with_handler
from celery_taskq.reports.window import check_now

PROCESS_EVENT = "process"
"""The ``TaskqBeatTicks.Event`` of OnProcess."""

BEAT_EVENTS = (PROCESS_EVENT, "create_runners")
"""The periodic events whose ticks are recorded."""


@dataclass(frozen=True)
class QueueBacklog:
    """The scheduled runs of one queue that are due now, and how long the oldest has waited."""

    queue: str
    due_runs: int
    oldest_due_age: float


def beat_tick_ages_in(connection: Connection, now: datetime) -> dict[str, float]:
    """:func:`beat_tick_ages`, inside the caller's report transaction."""
    rows = connection.execute(
        select(BeatTick.event, func.max(BeatTick.ticked_on))
        .where(BeatTick.event.in_(BEAT_EVENTS))
        .group_by(BeatTick.event)
    )
    return {event: in_seconds(now - ticked) for event, ticked in rows if ticked is not None}


def beat_tick_ages(database: Database, *, now: datetime | None = None) -> dict[str, float]:
    """Seconds since each periodic event's newest recorded tick (events never ticked: absent)."""
    now = check_now(now)
    return read_with(database, lambda connection: beat_tick_ages_in(connection, now))


def due_backlog_in(connection: Connection, now: datetime) -> tuple[QueueBacklog, ...]:
    """:func:`due_backlog`, inside the caller's report transaction."""
    queue = TaskRun.queue  # the task's queue, copied to its runs
    query = (
        runs_with_handler(queue, func.count(), func.min(TaskQueue.scheduled_on))
        .where(text(RUN_SCHEDULED_SQL), TaskQueue.scheduled_on <= now)
        .group_by(queue)
        .order_by(queue)
    )
    return tuple(
        QueueBacklog(queue=str(name), due_runs=count, oldest_due_age=in_seconds(now - oldest))
        for name, count, oldest in connection.execute(query)
    )


def due_backlog(database: Database, *, now: datetime | None = None) -> tuple[QueueBacklog, ...]:
    """Per queue with due work: scheduled runs due now and the oldest one's wait, by name."""
    now = check_now(now)
    return read_with(database, lambda connection: due_backlog_in(connection, now))
