"""A live summary of the queue, one frame at a time (``celery-taskq top``): due work per queue,
the running runs, the recent failures, the live runners and the beat's tick ages, read in one
transaction from the sections that already exist (:mod:`~celery_taskq.reports.backlog`,
:mod:`~celery_taskq.reports.due`, :mod:`~celery_taskq.reports.failures`,
:mod:`~celery_taskq.reports.runner_report`) and the running runs below.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, text

from celery_taskq.core.models import RUN_RUNNING_SQL, TaskQueue, TaskRun
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.backlog import QueueBacklog, beat_tick_ages_in, due_backlog_in
from celery_taskq.reports.due import DueWork, due_work_in
from celery_taskq.reports.failures import FailedRun, recent_failures_in
from celery_taskq.reports.limits import DEFAULT_LIMIT
from celery_taskq.reports.runner_report import RunnerReport, runners_in
from celery_taskq.reports.sql import in_seconds, read_with, runs_with_handler
from celery_taskq.reports.window import ReportWindow, check_limit, check_now

DEFAULT_FAILURES_SINCE = timedelta(hours=1)
"""How far back a frame's recent failures reach."""


@dataclass(frozen=True)
class RunningRun:
    """A run in ``running`` status, and how long it has run."""

    run_id: int
    task_id: int
    handler: str
    queue: str
    percents_completed: int
    task_runner_id: int | None
    started_on: datetime | None
    age: float | None
    """Seconds since ``StartedOn`` (``None`` when it was not stored)."""


@dataclass(frozen=True)
class TopFrame:
    """One frame of the live summary, as of ``now``."""

    now: datetime
    due: DueWork
    backlog: tuple[QueueBacklog, ...]
    """Per queue with due work: scheduled runs due now and the oldest one's wait."""
    running: tuple[RunningRun, ...]
    """The longest-running runs first, at most ``limit``; ``due.running_runs`` counts all."""
    failures: tuple[FailedRun, ...]
    failures_since: datetime
    runners: tuple[RunnerReport, ...]
    """Runners alive now (running first), at most ``limit``."""
    beat_tick_ages: dict[str, float]


def running_runs_in(connection: Connection, now: datetime, limit: int) -> tuple[RunningRun, ...]:
    """The ``limit`` longest-running runs, inside the caller's report transaction."""
    query = (
        runs_with_handler(
            TaskRun.id,
            TaskRun.task_queue_id,
            TaskQueue.task_handler_class,
            TaskRun.queue,
            TaskRun.percents_completed,
            TaskRun.task_runner_id,
            TaskRun.started_on,
        )
        .where(text(RUN_RUNNING_SQL))
        .order_by(TaskRun.started_on, TaskRun.id)
        .limit(limit)
    )
    return tuple(
        RunningRun(
            run_id=run_id,
            task_id=task_id,
            handler=str(handler),
            queue=str(queue),
            percents_completed=int(percent or 0),
            task_runner_id=runner_id,
            started_on=started_on,
            age=None if started_on is None else in_seconds(now - started_on),
        )
        for run_id, task_id, handler, queue, percent, runner_id, started_on in connection.execute(
            query
        )
    )


def top_frame(
    database: Database,
    *,
    now: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    failures_since: timedelta = DEFAULT_FAILURES_SINCE,
) -> TopFrame:
    """One frame: every part read in one transaction, as of ``now`` (default: the current
    time); ``limit`` rows at most of running runs, failures and runners."""
    now, limit = check_now(now), check_limit(limit)
    since = now - failures_since

    def read(connection: Connection) -> TopFrame:
        return TopFrame(
            now=now,
            due=due_work_in(connection, now, None),
            backlog=due_backlog_in(connection, now),
            running=running_runs_in(connection, now, limit),
            failures=recent_failures_in(connection, ReportWindow(since=since), None, limit),
            failures_since=since,
            runners=runners_in(connection, ReportWindow(since=now), now, limit),
            beat_tick_ages=beat_tick_ages_in(connection, now),
        )

    return read_with(database, read)
