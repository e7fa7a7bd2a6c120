"""Listing tasks: filters and keyset pagination over ``TaskQueue`` (newest first), and the
tasks a native Celery task is related to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import RunStatus, TaskQueue
from celery_taskq.core.snapshots import RelatedTask, TaskSummary
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
    celery_root_id: str | None = None
    """A Celery workflow: the tasks whose ``CeleryRootId`` is this (its index serves it)."""
    celery_group_id: str | None = None
    """A Celery group's (or chord header's) members (``ix_TaskQueue_CeleryGroupId``)."""


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
    if task_filter.celery_root_id is not None:
        query = query.where(TaskQueue.celery_root_id == task_filter.celery_root_id)
    if task_filter.celery_group_id is not None:
        query = query.where(TaskQueue.celery_group_id == task_filter.celery_group_id)
    with database.read_session() as session:
        rows = session.scalars(query).all()
        tasks = tuple(TaskSummary.from_row(row) for row in rows[:limit])
    next_before_id = tasks[-1].id if len(rows) > limit else None
    return TaskPage(tasks, next_before_id)


def related_tasks(database: Database, task: TaskSummary) -> tuple[RelatedTask, ...]:
    """The relations ``task`` has stored (parent, root, group, chord, resent-from), each with
    the ``TaskQueue`` row it names, or ``None`` where no row holds that id.

    Celery ids are looked up through ``uq_TaskQueue_CeleryTaskId``, the re-sent task by its
    primary key: one short read, whatever the table's size. Relations not stored are left out.
    """
    stored = {
        "parent": task.celery_parent_id,
        "root": task.celery_root_id,
        "group": task.celery_group_id,
        "chord": task.celery_chord_id,
    }
    # SQLite keeps whatever type a writer stored: every stored id is looked up as text.
    celery_ids = {name: str(value) for name, value in stored.items() if value is not None}
    wanted = sorted(set(celery_ids.values()))
    found: dict[str, int] = {}
    resent_from_found = False
    with database.transaction(read_only=True) as connection:
        if wanted:
            query = select(TaskQueue.celery_task_id, TaskQueue.id).where(
                TaskQueue.celery_task_id.in_(wanted)
            )
            found = {str(celery_id): int(row_id) for celery_id, row_id in connection.execute(query)}
        if task.resent_from_id is not None:
            resent_from_found = (
                connection.execute(
                    select(TaskQueue.id).where(TaskQueue.id == task.resent_from_id)
                ).first()
                is not None
            )
    relations = [RelatedTask(name, value, found.get(value)) for name, value in celery_ids.items()]
    if task.resent_from_id is not None:
        relations.append(
            RelatedTask(
                "resent_from",
                str(task.resent_from_id),
                task.resent_from_id if resent_from_found else None,
            )
        )
    return tuple(relations)
