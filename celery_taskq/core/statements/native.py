"""Statements of the native Celery audit: a worker process's runner row, and one run per
execution attempt of an audited Celery task.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Connection,
    Integer,
    bindparam,
    select,
    text,
)

from celery_taskq.core.models import (
    RunnerRole,
    TaskRun,
    UTCDateTime,
)
from celery_taskq.core.statements.runners import insert_runner
from celery_taskq.core.storage.driver import DriverStatement


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


def task_of_celery_id(connection: Connection, celery_task_id: str) -> int | None:
    """The queue row an audited Celery task id belongs to, if any run of it was recorded."""
    return connection.execute(
        select(TaskRun.task_queue_id).where(TaskRun.celery_task_id == celery_task_id).limit(1)
    ).scalar()


def start_native_run(
    connection: Connection,
    *,
    task_queue_id: int,
    celery_task_id: str,
    runner_id: int | None,
    now: datetime,
) -> int:
    """Record one execution attempt of a native Celery task as a ``running`` run.

    One statement on PostgreSQL (so it may run in autocommit), two on SQLite. The roll-up is
    exact without recounting: the new run is the task's newest, and a running run leaves the
    failures since the last success as they are.
    """
    values = {
        "task_queue_id": task_queue_id,
        "celery_task_id": celery_task_id,
        "runner_id": runner_id,
        "now": now,
    }
    if connection.dialect.name == "postgresql":
        return int(_PG_START_NATIVE_RUN.one(connection, values)[0])
    run_id = int(connection.execute(_INSERT_NATIVE_RUN, values).scalar_one())
    connection.execute(_ROLL_UP_RUNNING, values)
    return run_id


_NATIVE_RUN_BINDS = (
    bindparam("task_queue_id", type_=Integer()),
    bindparam("runner_id", type_=Integer()),
    bindparam("now", type_=UTCDateTime()),
)
_INSERT_NATIVE_RUN_SQL = """
    INSERT INTO "TaskRuns" ("TaskQueueId", "Status", "StartedOn", "CeleryTaskId", "TaskRunnerId")
    VALUES (:task_queue_id, 'running', :now, :celery_task_id, :runner_id)
    RETURNING "Id"
"""
_INSERT_NATIVE_RUN = text(_INSERT_NATIVE_RUN_SQL).bindparams(*_NATIVE_RUN_BINDS)
_ROLL_UP_RUNNING = text(
    """UPDATE "TaskQueue" SET "LastStatus" = 'running' WHERE "Id" = :task_queue_id"""
).bindparams(bindparam("task_queue_id", type_=Integer()))
_PG_START_NATIVE_RUN = DriverStatement(
    text(
        "WITH new_run AS ("  # noqa: S608 - constant SQL, values are bound
        + _INSERT_NATIVE_RUN_SQL
        + """), rolled_up AS (
            UPDATE "TaskQueue" SET "LastStatus" = 'running' WHERE "Id" = :task_queue_id
        )
        SELECT "Id" FROM new_run"""
    ).bindparams(*_NATIVE_RUN_BINDS)
)
