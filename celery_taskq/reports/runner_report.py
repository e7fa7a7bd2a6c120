"""Runners: the runner rows alive in the window, and runner counts by role and status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Connection,
    case,
    func,
    or_,
    select,
)

from celery_taskq.core.models import (
    RunnerRole,
    RunnerStatus,
    TaskRun,
    TaskRunner,
)
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.limits import DEFAULT_LIMIT
from celery_taskq.reports.sql import in_seconds, read_with
from celery_taskq.reports.window import ReportWindow, check_limit, check_now


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


def runners_in(
    connection: Connection, window: ReportWindow, now: datetime, limit: int
) -> tuple[RunnerReport, ...]:
    """:func:`runners`, inside the caller's report transaction."""
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
                heartbeat_age=None if heartbeat_on is None else in_seconds(now - heartbeat_on),
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
    now, limit = check_now(now), check_limit(limit)
    return read_with(database, lambda connection: runners_in(connection, window, now, limit))


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

    return read_with(database, read)
