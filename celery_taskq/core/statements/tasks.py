"""Statements on queue rows: insert a task, roll its runs up, give it runs, cancel it.

The roll-up is the seed's ``task-run:OnAfterItemUpdate``: ``LastStatus`` is the status of a
task's most recent run and ``TaskRunsFailed`` counts its failed runs since the last success.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    bindparam,
    func,
    insert,
    literal,
    select,
    text,
    update,
)

from celery_taskq.core.handlers import CANCELLED_CODE
from celery_taskq.core.models import (
    DEFAULT_QUEUE,
    FAILED_RUN_STATUSES,
    RUN_OPEN_SQL,
    RUN_SCHEDULED_SQL,
    TASK_OPEN_SQL,
    TASK_UNFINISHED_SQL,
    RunStatus,
    TaskQueue,
    TaskRun,
)
from celery_taskq.core.storage.dialects import upsert
from celery_taskq.core.storage.driver import DriverStatement

ROLLUP_BATCH_SIZE = 500
"""Queue rows rolled up per statement, to keep parameter lists well inside driver limits."""


def rollup_tasks(connection: Connection, task_queue_ids: Iterable[int]) -> None:
    """Recompute ``LastStatus`` and ``TaskRunsFailed`` of the given queue rows from their runs.

    The seed's ``task-run:OnAfterItemUpdate``: LastStatus is the status of the most recent run;
    TaskRunsFailed counts the failed (``error``/``timeout``) runs since the last success, so a
    success resets it to 0.
    """
    latest_status = (
        select(TaskRun.status)
        .where(TaskRun.task_queue_id == TaskQueue.id)
        .order_by(TaskRun.id.desc())
        .limit(1)
        .correlate(TaskQueue)
        .scalar_subquery()
    )
    last_success_id = (
        select(func.max(TaskRun.id))
        .where(TaskRun.task_queue_id == TaskQueue.id, TaskRun.status == RunStatus.SUCCESS)
        .correlate(TaskQueue)
        .scalar_subquery()
    )
    failed_since_success = (
        select(func.count())
        .select_from(TaskRun)
        .where(
            TaskRun.task_queue_id == TaskQueue.id,
            TaskRun.status.in_(FAILED_RUN_STATUSES),
            TaskRun.id > func.coalesce(last_success_id, 0),
        )
        .correlate(TaskQueue)
        .scalar_subquery()
    )
    ids = sorted(set(task_queue_ids))
    for start in range(0, len(ids), ROLLUP_BATCH_SIZE):
        connection.execute(
            update(TaskQueue)
            .where(TaskQueue.id.in_(ids[start : start + ROLLUP_BATCH_SIZE]))
            .values(last_status=latest_status, task_runs_failed=failed_since_success)
        )


def create_runs(
    connection: Connection, now: datetime, task_queue_id: int | None = None
) -> list[int]:
    """Create a ``scheduled`` run for every due, unfinished queue row (or just ``task_queue_id``).

    One ``INSERT … SELECT``: a row qualifies when ``ScheduledOn <= now`` and it never ran, or its
    last run failed with retries left. The partial unique index allows one open run per task;
    ``ON CONFLICT DO NOTHING`` makes concurrent callers skip rows another caller just took.
    Returns the ids of the queue rows that got a run.
    """
    due = select(
        TaskQueue.id, literal(RunStatus.SCHEDULED.value), TaskQueue.queue, TaskQueue.priority
    ).where(TaskQueue.scheduled_on <= now, text(TASK_OPEN_SQL))
    if task_queue_id is not None:
        due = due.where(TaskQueue.id == task_queue_id)
    statement = (
        upsert(connection, TaskRun)
        .from_select(["TaskQueueId", "Status", "Queue", "Priority"], due)
        .on_conflict_do_nothing(index_elements=["TaskQueueId"], index_where=text(RUN_OPEN_SQL))
    )
    if connection.dialect.name == "postgresql":
        # One statement: the runs' insert and the roll-up travel together, and the ids come
        # back once instead of going out again as a parameter list.
        created = statement.returning(TaskRun.task_queue_id).cte("created")
        roll_up = (
            update(TaskQueue)
            .where(TaskQueue.id == created.c.task_queue_id)
            .values(last_status=RunStatus.SCHEDULED)
            .returning(TaskQueue.id)
        )
        return list(connection.execute(roll_up).scalars())
    task_ids = list(connection.execute(statement.returning(TaskRun.task_queue_id)).scalars())
    mark_scheduled(connection, task_ids)
    return task_ids


def mark_scheduled(connection: Connection, task_queue_ids: list[int]) -> None:
    """Roll up tasks that were just given a ``scheduled`` run: ``LastStatus`` = ``scheduled``.

    Exact without recounting (what :func:`rollup_tasks` would compute): the new run is each
    task's newest, and a scheduled run leaves the failures since the last success as they are.
    One ``UPDATE`` per batch whatever the table's size, where the recount reads every task's
    runs.
    """
    for start in range(0, len(task_queue_ids), ROLLUP_BATCH_SIZE):
        connection.execute(
            update(TaskQueue)
            .where(TaskQueue.id.in_(task_queue_ids[start : start + ROLLUP_BATCH_SIZE]))
            .values(last_status=RunStatus.SCHEDULED)
        )


def open_run_id(connection: Connection, task_queue_id: int) -> int | None:
    """The id of a queue row's scheduled or running run, if it has one."""
    return connection.execute(
        select(TaskRun.id).where(TaskRun.task_queue_id == task_queue_id, text(RUN_OPEN_SQL))
    ).scalar()


def create_manual_run(connection: Connection, task_queue_id: int) -> int | None:
    """A ``scheduled`` run for a task whatever its retries, unless it has an open run."""
    statement = (
        upsert(connection, TaskRun)
        .values(
            task_queue_id=task_queue_id,
            status=RunStatus.SCHEDULED,
            **queue_and_priority_of(task_queue_id),
        )
        .on_conflict_do_nothing(index_elements=["TaskQueueId"], index_where=text(RUN_OPEN_SQL))
        .returning(TaskRun.id)
    )
    run_id = connection.execute(statement).scalar()
    if run_id is not None:
        connection.execute(
            update(TaskQueue).where(TaskQueue.id == task_queue_id).values(cancel_requested_on=None)
        )
        rollup_tasks(connection, [task_queue_id])
    return run_id


def queue_and_priority_of(task_queue_id: int) -> dict[str, Any]:
    """Values of a new run's ``Queue`` and ``Priority``: its task's, read by the insert."""
    return {
        "queue": select(TaskQueue.queue).where(TaskQueue.id == task_queue_id).scalar_subquery(),
        "priority": select(TaskQueue.priority)
        .where(TaskQueue.id == task_queue_id)
        .scalar_subquery(),
    }


def load_task(connection: Connection, task_queue_id: int) -> tuple[str, Any] | None:
    """The handler path and data of a queue row."""
    row = connection.execute(
        select(TaskQueue.task_handler_class, TaskQueue.task_data).where(
            TaskQueue.id == task_queue_id
        )
    ).first()
    return None if row is None else (row[0], row[1])


def insert_task(connection: Connection, values: dict[str, Any]) -> int | None:
    """Insert a queue row; ``None`` if its unique key belongs to an unfinished task already.

    The partial unique index decides, so concurrent callers with one key get one row.
    """
    statement = upsert(connection, TaskQueue).values(**values)
    if values.get("unique_key") is not None:
        statement = statement.on_conflict_do_nothing(
            index_elements=["UniqueKey"], index_where=text(TASK_UNFINISHED_SQL)
        )
    task_id = connection.execute(statement.returning(TaskQueue.id)).scalar()
    return None if task_id is None else int(task_id)


_TASK_COLUMNS = (
    "task_handler_class",
    "task_data",
    "scheduled_on",
    "queued_on",
    "queued_by_id",
    "max_retries",
    "task_runs_failed",
    "title",
    "queue",
    "priority",
)
_INSERT_DUE_TASK = insert(TaskQueue).values(
    {
        **{
            getattr(TaskQueue, name): bindparam(name, type_=getattr(TaskQueue, name).type)
            for name in _TASK_COLUMNS
        },
        TaskQueue.last_status: RunStatus.SCHEDULED,
    }
)
_INSERT_DUE_TASK_RETURNING = _INSERT_DUE_TASK.returning(TaskQueue.id)
_PG_DUE_TASK = _INSERT_DUE_TASK.returning(TaskQueue.id, TaskQueue.queue, TaskQueue.priority).cte(
    "new_task"
)
_PG_INSERT_DUE_TASK_AND_RUN = DriverStatement(
    insert(TaskRun)
    .from_select(
        [TaskRun.task_queue_id, TaskRun.queue, TaskRun.priority, TaskRun.status],
        select(*_PG_DUE_TASK.c, literal(RunStatus.SCHEDULED.value)),
    )
    .returning(TaskRun.task_queue_id),
    json_params=frozenset({"task_data"}),
)
_INSERT_FIRST_RUN = insert(TaskRun).values(
    task_queue_id=bindparam("task_queue_id", type_=Integer()),
    status=RunStatus.SCHEDULED,
    queue=bindparam("queue", type_=TaskRun.queue.type),
    priority=bindparam("priority", type_=Integer()),
)


def insert_due_task(connection: Connection, values: dict[str, Any]) -> int:
    """Insert a due task without a unique key together with its first ``scheduled`` run.

    What :func:`insert_task` and :func:`create_runs` do for such a task, written directly: it
    is due and has no run, so it qualifies, and its ``LastStatus`` is ``scheduled``. One
    statement on PostgreSQL; returns the task's id.
    """
    parameters = {"queue": DEFAULT_QUEUE, "priority": 0}
    parameters.update((name, values[name]) for name in _TASK_COLUMNS if name in values)
    if connection.dialect.name == "postgresql":
        return int(_PG_INSERT_DUE_TASK_AND_RUN.one(connection, parameters)[0])
    task_id = int(connection.execute(_INSERT_DUE_TASK_RETURNING, parameters).scalar_one())
    connection.execute(
        _INSERT_FIRST_RUN,
        {
            "task_queue_id": task_id,
            "queue": parameters["queue"],
            "priority": parameters["priority"],
        },
    )
    return task_id


def unfinished_task_with_key(connection: Connection, unique_key: str) -> int | None:
    """The unfinished task holding ``unique_key``, if any."""
    return connection.execute(
        select(TaskQueue.id).where(TaskQueue.unique_key == unique_key, text(TASK_UNFINISHED_SQL))
    ).scalar()


def cancel_task(connection: Connection, task_queue_id: int, now: datetime) -> list[int]:
    """Mark a task cancelled and end its not-yet-started run; return the ended run ids.

    A running run is left to its handler, which stops cooperatively.
    """
    connection.execute(
        update(TaskQueue)
        .where(TaskQueue.id == task_queue_id, TaskQueue.cancel_requested_on.is_(None))
        .values(cancel_requested_on=now)
    )
    ended = list(
        connection.execute(
            update(TaskRun)
            .where(TaskRun.task_queue_id == task_queue_id, text(RUN_SCHEDULED_SQL))
            .values(
                status=RunStatus.ERROR,
                finished_on=now,
                error_code=CANCELLED_CODE,
                error_message="the task was cancelled before this run started",
            )
            .returning(TaskRun.id)
        ).scalars()
    )
    if ended:
        rollup_tasks(connection, [task_queue_id])
    return ended


def is_cancelled(connection: Connection, task_queue_id: int) -> bool:
    """Whether cancellation of the task was requested."""
    return (
        connection.execute(
            select(TaskQueue.cancel_requested_on).where(TaskQueue.id == task_queue_id)
        ).scalar()
        is not None
    )
