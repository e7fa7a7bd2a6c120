"""Listing tasks: filters and keyset pagination over ``TaskQueue`` (newest first), and the
tasks a native Celery task is related to.

Besides the contract statuses a status filter may name two states derived from the columns:
``cancelled`` (``CancelRequestedOn`` is set) and ``never-run`` (no run of the task has
started). They are filters only, never stored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, exists, or_, select

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.snapshots import RelatedTask, TaskSummary
from celery_taskq.core.storage.database import Database

MAX_PAGE_SIZE = 1000
"""Most tasks one page may hold."""


class DerivedStatus(enum.StrEnum):
    """A task state read from the columns, offered beside the statuses as a filter."""

    CANCELLED = "cancelled"
    """``CancelRequestedOn`` is set, whatever its last run did."""
    NEVER_RUN = "never-run"
    """No run of the task has started: no run yet, or only a scheduled one."""


StatusFilter = RunStatus | DerivedStatus
"""What a status filter may name: a ``LastStatus`` or a derived state."""

STATUS_FILTERS: tuple[str, ...] = (
    *(status.value for status in RunStatus),
    *(state.value for state in DerivedStatus),
)
"""Every status filter's name, in the order lists and chips offer them."""


@dataclass(frozen=True)
class TaskFilter:
    """What to list; every field narrows the list, ``None`` means any."""

    status: StatusFilter | None = None
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


def parse_status(value: str | StatusFilter | None) -> StatusFilter | None:
    """A status filter from text (a status, ``cancelled`` or ``never-run``), with a clear error
    for an unknown one."""
    if value is None or isinstance(value, (RunStatus, DerivedStatus)):
        return value
    for kind in (RunStatus, DerivedStatus):
        try:
            return kind(value)
        except ValueError:
            continue
    allowed = ", ".join(STATUS_FILTERS)
    raise InvalidArgumentError(f"unknown status {value!r}: use one of {allowed}")


def status_condition(status: StatusFilter) -> ColumnElement[bool]:
    """The rows a status filter keeps (a plain comparison where an index can serve it)."""
    if status is DerivedStatus.CANCELLED:
        return TaskQueue.cancel_requested_on.is_not(None)
    if status is DerivedStatus.NEVER_RUN:
        started = exists().where(
            TaskRun.task_queue_id == TaskQueue.id, TaskRun.started_on.is_not(None)
        )
        return or_(
            TaskQueue.last_status.is_(None),
            and_(TaskQueue.last_status == RunStatus.SCHEDULED, ~started),
        )
    return TaskQueue.last_status == status


def filter_conditions(task_filter: TaskFilter) -> list[ColumnElement[bool]]:
    """The WHERE terms of ``task_filter`` (times are checked to be timezone-aware)."""
    for name in ("queued_since", "queued_until"):
        moment = getattr(task_filter, name)
        if moment is not None and moment.tzinfo is None:
            raise InvalidArgumentError(f"{name} must be a timezone-aware datetime")
    conditions: list[ColumnElement[bool]] = []
    if task_filter.status is not None:
        conditions.append(status_condition(task_filter.status))
    if task_filter.handler is not None:
        conditions.append(TaskQueue.task_handler_class == task_filter.handler)
    if task_filter.queued_by is not None:
        conditions.append(TaskQueue.queued_by_id == task_filter.queued_by)
    if task_filter.queued_since is not None:
        conditions.append(TaskQueue.queued_on >= task_filter.queued_since)
    if task_filter.queued_until is not None:
        conditions.append(TaskQueue.queued_on < task_filter.queued_until)
    if task_filter.celery_root_id is not None:
        conditions.append(TaskQueue.celery_root_id == task_filter.celery_root_id)
    if task_filter.celery_group_id is not None:
        conditions.append(TaskQueue.celery_group_id == task_filter.celery_group_id)
    return conditions


def list_tasks(
    database: Database, task_filter: TaskFilter, *, limit: int = 50, before_id: int | None = None
) -> TaskPage:
    """Tasks matching ``task_filter``, newest first; pass ``next_before_id`` for the next page.

    Keyset pagination (``Id < before_id``) keeps every page as cheap as the first.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    query = (
        select(TaskQueue)
        .where(*filter_conditions(task_filter))
        .order_by(TaskQueue.id.desc())
        .limit(limit + 1)
    )
    if before_id is not None:
        query = query.where(TaskQueue.id < before_id)
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
