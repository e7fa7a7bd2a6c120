"""Statements of the native Celery audit: a task's ``TaskQueue`` row, and the runner rows of
Celery worker processes (:mod:`~celery_taskq.core.statements.native_attempts` has the runs).

Every statement here is idempotent and order-robust across processes: the publisher's insert
and the worker's first start meet on ``uq_TaskQueue_CeleryTaskId`` (the first to come creates
the row, the worker fills in what the publisher could not know), and a runner row is closed
only while it is still ``running``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, bindparam, case, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from celery_taskq.core.models import (
    CELERY_HANDLER_PREFIX,
    CELERY_TASK_ID_SET_SQL,
    RUN_RUNNING_SQL,
    RUNNER_RUNNING_SQL,
    RunnerRole,
    RunnerStatus,
    RunStatus,
    TaskQueue,
    TaskRun,
    TaskRunner,
)
from celery_taskq.core.native_codes import NativeCode
from celery_taskq.core.statements.runners import insert_runner
from celery_taskq.core.statements.tasks import rollup_tasks

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

WORKER_LOST_MESSAGE = "the worker process running this attempt ended before it did"
"""``ErrorMessage`` of an attempt closed because its process died."""


@dataclass(frozen=True)
class NativeTask:
    """What a Celery message tells of a task, as its ``TaskQueue`` row stores it."""

    celery_task_id: str
    task_name: str
    task_data: Any
    """``{"args": [...], "kwargs": {...}}`` as JSON: the document, or its
    :class:`~celery_taskq.core.storage.encoding.JsonText` (stored as it is)."""
    scheduled_on: datetime
    queued_on: datetime
    queued_by: str | None = None
    max_retries: int | None = 3
    """Celery's ``max_retries`` (``None``: unlimited); ``MaxRetries`` is this + 1."""
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    chord_id: str | None = None

    @property
    def handler_class(self) -> str:
        """Its ``TaskHandlerClass``: ``celery:<task name>``."""
        return (CELERY_HANDLER_PREFIX + self.task_name)[:255]


def attempts_allowed(max_retries: int | None) -> int | None:
    """``MaxRetries`` of a task Celery retries ``max_retries`` times: every attempt it may have
    (``max_retries + 1``), or ``None`` when Celery retries it without limit."""
    return None if max_retries is None else max(max_retries, 0) + 1


def insert_on_conflict(connection: Connection, table: Any) -> postgresql.Insert:
    """An INSERT with ``ON CONFLICT`` clauses (SQLite's has the same ones as PostgreSQL's)."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return cast(postgresql.Insert, sqlite.insert(table))


def _task_values(task: NativeTask, *, failed: Any = 0) -> dict[str, Any]:
    allowed = attempts_allowed(task.max_retries)
    return {
        "task_handler_class": task.handler_class,
        "task_data": task.task_data,
        "scheduled_on": task.scheduled_on,
        "queued_on": task.queued_on,
        "queued_by_id": task.queued_by,
        # Unlimited: always one attempt more than the failures so far (see docs/design.md).
        "max_retries": failed + 1 if allowed is None else allowed,
        "task_runs_failed": failed,
        "celery_task_id": task.celery_task_id,
        "celery_parent_id": task.parent_id,
        "celery_root_id": task.root_id,
        "celery_group_id": task.group_id,
        "celery_chord_id": task.chord_id,
    }


def record_published(connection: Connection, task: NativeTask) -> None:
    """The row of a task just published: inserted unless its id already has one."""
    connection.execute(published_statement(connection.dialect.name), published_params(task))


_PUBLISHED: dict[str, Any] = {}


def published_statement(dialect: str) -> Any:
    """The one statement of :func:`record_published` on ``dialect`` (the same object each time,
    so that consecutive publishes can run as one ``executemany``); its parameters are
    :func:`published_params`."""
    statement = _PUBLISHED.get(dialect)
    if statement is None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        names = _task_values(NativeTask("", "", None, _EPOCH, _EPOCH))
        statement = _PUBLISHED[dialect] = (
            insert(TaskQueue)
            .values({name: bindparam(name) for name in names})
            .on_conflict_do_nothing(
                index_elements=[TaskQueue.celery_task_id], index_where=text(CELERY_TASK_ID_SET_SQL)
            )
        )
    return statement


def published_params(task: NativeTask) -> dict[str, Any]:
    """The parameters of :func:`published_statement` for ``task``."""
    return _task_values(task)


def upsert_started_task(
    connection: Connection, task: NativeTask, *, closed_failed: Any, running: bool
) -> int:
    """The row of a task a worker starts (or records an outcome of), created if the publisher
    did not; returns its id.

    The worker is the authority on what the task is: it sets ``MaxRetries`` from the task it
    runs and fills in the relations the row lacks. ``closed_failed`` earlier attempts (a number,
    or a SQL expression counting them) were just closed as failed and count in
    ``TaskRunsFailed``; with ``running`` the row's ``LastStatus`` becomes ``running`` (the new
    attempt is its newest run).
    """
    statement = upsert_started_task_statement(
        connection, task, closed_failed=closed_failed, running=running
    )
    return int(connection.execute(statement).scalar_one())


def upsert_started_task_statement(
    connection: Connection, task: NativeTask, *, closed_failed: Any, running: bool
) -> Any:
    """The statement of :func:`upsert_started_task` (``RETURNING`` the row's id), to which a
    caller may add a CTE that ``closed_failed`` reads."""
    statement = insert_on_conflict(connection, TaskQueue).values(
        **_task_values(task, failed=closed_failed),
        last_status=RunStatus.RUNNING if running else None,
    )
    excluded = statement.excluded
    allowed = attempts_allowed(task.max_retries)
    failed = TaskQueue.task_runs_failed + closed_failed
    changes: dict[Any, Any] = {
        TaskQueue.task_runs_failed: failed,
        TaskQueue.max_retries: failed + 1 if allowed is None else allowed,
        TaskQueue.celery_parent_id: _coalesce(TaskQueue.celery_parent_id, excluded),
        TaskQueue.celery_root_id: _coalesce(TaskQueue.celery_root_id, excluded),
        TaskQueue.celery_group_id: _coalesce(TaskQueue.celery_group_id, excluded),
        TaskQueue.celery_chord_id: _coalesce(TaskQueue.celery_chord_id, excluded),
    }
    if running:
        changes[TaskQueue.last_status] = RunStatus.RUNNING
    return statement.on_conflict_do_update(
        index_elements=[TaskQueue.celery_task_id],
        index_where=text(CELERY_TASK_ID_SET_SQL),
        set_={column.name: value for column, value in changes.items()},
    ).returning(TaskQueue.id)


def _coalesce(column: Any, excluded: Any) -> Any:
    return case((column.is_(None), excluded[column.name]), else_=column)


def settle_max_retries(connection: Connection, task_queue_id: int, *, final: bool) -> None:
    """After a failed attempt: a final one leaves no retry (``MaxRetries`` drops to the
    failures, so the task is a dead letter); one Celery retries leaves at least one more."""
    failed = TaskQueue.task_runs_failed
    if final:
        value = case(
            (
                failed >= 1,
                case((failed < TaskQueue.max_retries, failed), else_=TaskQueue.max_retries),
            ),
            else_=TaskQueue.max_retries,
        )
    else:
        value = case((failed + 1 > TaskQueue.max_retries, failed + 1), else_=TaskQueue.max_retries)
    connection.execute(
        update(TaskQueue).where(TaskQueue.id == task_queue_id).values(max_retries=value)
    )


# -- runner rows of Celery worker processes --------------------------------------------------


def register_celery_worker_process(
    connection: Connection,
    *,
    process_id: int,
    hostname: str,
    process_create_time: float | None,
    worker_hostname: str,
    now: datetime,
    process_namespace: str | None = None,
) -> int:
    """A runner row for a Celery worker process running audited native tasks (no limit)."""
    return insert_runner(
        connection,
        role=RunnerRole.CELERY_WORKER,
        process_id=process_id,
        hostname=hostname,
        process_create_time=process_create_time,
        worker_hostname=worker_hostname,
        now=now,
        process_namespace=process_namespace,
    )


ProcessAlive = Callable[[int, float | None], bool]
"""Whether the process with this PID and start time still runs (on this host)."""


def close_worker_processes(
    connection: Connection,
    *,
    hostname: str,
    worker_hostname: str,
    alive: ProcessAlive,
    now: datetime,
    this_process: int | None = None,
) -> list[int]:
    """Close the ``running`` runner rows of one Celery worker's processes on this host that
    have ended: ``timeout``, their ``running`` attempts ``timeout`` with ``worker_lost``.

    ``this_process`` (the caller's own PID) ends ``success`` instead. Returns the rows closed.
    """
    rows = connection.execute(
        select(TaskRunner.id, TaskRunner.process_id, TaskRunner.process_create_time).where(
            text(RUNNER_RUNNING_SQL),
            TaskRunner.role == RunnerRole.CELERY_WORKER,
            TaskRunner.hostname == hostname,
            TaskRunner.worker_hostname == worker_hostname,
        )
    ).all()
    own = [int(row[0]) for row in rows if row[1] == this_process]
    dead = [
        int(row[0]) for row in rows if row[1] != this_process and not alive(int(row[1]), row[2])
    ]
    if own:
        _close_runners(connection, own, RunnerStatus.SUCCESS, now)
    if dead:
        _close_runners(connection, dead, RunnerStatus.TIMEOUT, now)
    return sorted(own + dead)


def close_runner_process(connection: Connection, runner_id: int, now: datetime) -> None:
    """A worker process that ends: its runner row ``success``, and an attempt it left open
    (it cannot have one it still runs) ``timeout`` with ``worker_lost``."""
    _close_runners(connection, [runner_id], RunnerStatus.SUCCESS, now)


def _close_runners(
    connection: Connection, runner_ids: list[int], status: RunnerStatus, now: datetime
) -> None:
    closed = (
        connection.execute(
            update(TaskRunner)
            .where(TaskRunner.id.in_(runner_ids), text(RUNNER_RUNNING_SQL))
            .values(status=status, finished_on=now)
            .returning(TaskRunner.id)
        )
        .scalars()
        .all()
    )
    if not closed:
        return
    task_ids = (
        connection.execute(
            update(TaskRun)
            .where(TaskRun.task_runner_id.in_(closed), text(RUN_RUNNING_SQL))
            .values(
                status=RunStatus.TIMEOUT,
                finished_on=now,
                error_code=NativeCode.WORKER_LOST.value,
                error_message=WORKER_LOST_MESSAGE,
            )
            .returning(TaskRun.task_queue_id)
        )
        .scalars()
        .all()
    )
    if task_ids:
        rollup_tasks(connection, task_ids)
