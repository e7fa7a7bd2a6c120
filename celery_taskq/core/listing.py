"""Listing tasks: filters and keyset pagination over ``TaskQueue`` (newest first)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import RunStatus, TaskQueue
from celery_taskq.core.snapshots import TaskSummary
from celery_taskq.core.storage.database import Database

MAX_PAGE_SIZE = 1000
"""Most tasks one page may hold."""


@dataclass(frozen=True)
class TaskFilter:
    """What to list; every field narrows the list, ``None`` means any."""

    status: RunStatus | None = None
    handler: str | None = None
    queued_by: str | None = None
    queued_since: datetime | None = None
    queued_until: datetime | None = None


@dataclass(frozen=True)
class TaskPage:
    """One page of tasks, newest first, and the cursor of the next page (``None`` at the end)."""

    tasks: tuple[TaskSummary, ...]
    next_before_id: int | None


def parse_status(value: str | RunStatus | None) -> RunStatus | None:
    """A status filter from text, with a clear error for an unknown one."""
    if value is None or isinstance(value, RunStatus):
        return value
    try:
        return RunStatus(value)
    except ValueError:
        allowed = ", ".join(status.value for status in RunStatus)
        raise InvalidArgumentError(f"unknown status {value!r}: use one of {allowed}") from None


def list_tasks(
    database: Database, task_filter: TaskFilter, *, limit: int = 50, before_id: int | None = None
) -> TaskPage:
    """Tasks matching ``task_filter``, newest first; pass ``next_before_id`` for the next page.

    Keyset pagination (``Id < before_id``) keeps every page as cheap as the first.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    for name in ("queued_since", "queued_until"):
        moment = getattr(task_filter, name)
        if moment is not None and moment.tzinfo is None:
            raise InvalidArgumentError(f"{name} must be a timezone-aware datetime")
    query = select(TaskQueue).order_by(TaskQueue.id.desc()).limit(limit + 1)
    if before_id is not None:
        query = query.where(TaskQueue.id < before_id)
    if task_filter.status is not None:
        query = query.where(TaskQueue.last_status == task_filter.status)
    if task_filter.handler is not None:
        query = query.where(TaskQueue.task_handler_class == task_filter.handler)
    if task_filter.queued_by is not None:
        query = query.where(TaskQueue.queued_by_id == task_filter.queued_by)
    if task_filter.queued_since is not None:
        query = query.where(TaskQueue.queued_on >= task_filter.queued_since)
    if task_filter.queued_until is not None:
        query = query.where(TaskQueue.queued_on < task_filter.queued_until)
    with database.read_session() as session:
        rows = session.scalars(query).all()
        tasks = tuple(TaskSummary.from_row(row) for row in rows[:limit])
    next_before_id = tasks[-1].id if len(rows) > limit else None
    return TaskPage(tasks, next_before_id)
