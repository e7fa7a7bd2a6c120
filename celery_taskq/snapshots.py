"""Frozen values handed out by the API and reports: no caller ever holds a live row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery_taskq.models import RunnerStatus, RunStatus, TaskQueue, TaskRun, TaskRunner


@dataclass(frozen=True)
class RunSnapshot:
    """One ``TaskRuns`` row."""

    id: int
    task_queue_id: int
    status: RunStatus
    started_on: datetime | None
    finished_on: datetime | None
    percents_completed: int
    results: Any
    standard_output: str | None
    error_output: str | None
    error_code: str | None
    error_message: str | None
    task_runner_id: int | None

    @classmethod
    def from_row(cls, row: TaskRun) -> RunSnapshot:
        """Copy an ORM row."""
        return cls(
            id=row.id,
            task_queue_id=row.task_queue_id,
            status=row.status,
            started_on=row.started_on,
            finished_on=row.finished_on,
            percents_completed=row.percents_completed,
            results=row.results,
            standard_output=row.standard_output,
            error_output=row.error_output,
            error_code=row.error_code,
            error_message=row.error_message,
            task_runner_id=row.task_runner_id,
        )


@dataclass(frozen=True)
class TaskSnapshot:
    """One ``TaskQueue`` row with all its runs, oldest first."""

    id: int
    task_handler_class: str
    task_data: Any
    scheduled_on: datetime
    queued_on: datetime
    queued_by_id: str | None
    last_status: RunStatus | None
    max_retries: int
    task_runs_failed: int
    runs: tuple[RunSnapshot, ...]

    @classmethod
    def from_row(cls, row: TaskQueue, runs: tuple[RunSnapshot, ...]) -> TaskSnapshot:
        """Copy an ORM row and its runs."""
        return cls(
            id=row.id,
            task_handler_class=row.task_handler_class,
            task_data=row.task_data,
            scheduled_on=row.scheduled_on,
            queued_on=row.queued_on,
            queued_by_id=row.queued_by_id,
            last_status=row.last_status,
            max_retries=row.max_retries,
            task_runs_failed=row.task_runs_failed,
            runs=runs,
        )


@dataclass(frozen=True)
class RunnerSnapshot:
    """One ``TaskRunners`` row."""

    id: int
    process_id: int
    hostname: str
    status: RunnerStatus
    started_on: datetime
    finished_on: datetime | None
    heartbeat_on: datetime | None

    @classmethod
    def from_row(cls, row: TaskRunner) -> RunnerSnapshot:
        """Copy an ORM row."""
        return cls(
            id=row.id,
            process_id=row.process_id,
            hostname=row.hostname,
            status=row.status,
            started_on=row.started_on,
            finished_on=row.finished_on,
            heartbeat_on=row.heartbeat_on,
        )
