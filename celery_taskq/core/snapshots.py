"""Frozen values handed out by the API and reports: no caller ever holds a live row."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from celery_taskq.core.models import Base, RunStatus


def _columns(snapshot_class: type[Any], row: Base, **extra: Any) -> dict[str, Any]:
    """The row's attributes named like the snapshot's fields (fields in ``extra`` excepted)."""
    return {
        field.name: extra[field.name] if field.name in extra else getattr(row, field.name)
        for field in fields(snapshot_class)
    }


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
    progress_step: int | None
    progress_steps: int | None
    progress_status: str | None
    celery_task_id: str | None
    checkpoint: Any
    attempt: int | None = None
    """A native Celery task's attempt number (Celery's ``request.retries``); None for handlers."""
    eager: bool = False
    """The attempt ran eagerly in the caller (``task_always_eager``, ``.apply()``)."""
    queue: str = "default"
    """The task's queue when the run was created."""
    priority: int = 0
    """The task's priority when the run was created."""

    @classmethod
    def from_row(cls, row: Base) -> RunSnapshot:
        """Copy an ORM ``TaskRun``."""
        return cls(**_columns(cls, row))


@dataclass(frozen=True)
class TaskSummary:
    """One ``TaskQueue`` row."""

    id: int
    task_handler_class: str
    task_data: Any
    scheduled_on: datetime
    queued_on: datetime
    queued_by_id: str | None
    last_status: RunStatus | None
    max_retries: int
    task_runs_failed: int
    title: str | None
    unique_key: str | None
    cancel_requested_on: datetime | None
    celery_task_id: str | None = None
    """The Celery task id of an audited native task (the relations below are Celery ids too)."""
    celery_parent_id: str | None = None
    celery_root_id: str | None = None
    celery_group_id: str | None = None
    celery_chord_id: str | None = None
    resent_from_id: int | None = None
    """The ``TaskQueue.Id`` this task re-sends (``celery-taskq resend``)."""
    queue: str = "default"
    """The named queue whose runners run this task."""
    priority: int = 0
    """Runs of higher-priority tasks are claimed first."""

    @classmethod
    def from_row(cls, row: Base) -> TaskSummary:
        """Copy an ORM ``TaskQueue``."""
        return cls(**_columns(cls, row))


@dataclass(frozen=True)
class TaskSnapshot(TaskSummary):
    """One ``TaskQueue`` row with all its runs, oldest first."""

    runs: tuple[RunSnapshot, ...] = ()

    @classmethod
    def from_row(cls, row: Base, runs: tuple[RunSnapshot, ...] = ()) -> TaskSnapshot:
        """Copy an ORM ``TaskQueue`` and its runs."""
        return cls(**_columns(cls, row, runs=runs))


RELATIONS = ("parent", "root", "group", "chord", "resent_from")
"""The relations of a native Celery task, in the order readers show them."""


@dataclass(frozen=True)
class RelatedTask:
    """One relation of a task: the value stored, and the ``TaskQueue`` row it names.

    ``task_id`` is ``None`` when no row holds that id (a task that was never audited, a group
    id, a row deleted since).
    """

    relation: str
    """One of :data:`RELATIONS`."""
    value: str
    """The Celery id stored; for ``resent_from``, the ``TaskQueue.Id`` as text."""
    task_id: int | None
