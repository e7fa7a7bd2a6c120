"""Every state change of the three tables, as named set-based statements.

Each function takes an open connection and runs inside the caller's transaction, so a run's
status, its queue roll-up and its runner link always land together (DESIGN §3.7).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from celery_taskq.context import Progress
from celery_taskq.driver import DriverStatement
from celery_taskq.handlers import CANCELLED_CODE
from celery_taskq.liveness import RunnerRecord
from celery_taskq.models import (
    FAILED_RUN_STATUSES,
    RUN_OPEN_SQL,
    RUN_RUNNING_SQL,
    RUN_SCHEDULED_SQL,
    RUNNER_ROLE_RUNNER_SQL,
    RUNNER_RUNNING_SQL,
    TASK_OPEN_SQL,
    TASK_UNFINISHED_SQL,
    BeatTick,
    JsonDocument,
    RunnerRole,
    RunnerStatus,
    RunStatus,
    TaskQueue,
    TaskRun,
    TaskRunner,
    UTCDateTime,
)
from celery_taskq.outcome import RunOutcome

ROLLUP_BATCH_SIZE = 500
"""Queue rows rolled up per statement, to keep parameter lists well inside driver limits."""

RUNNER_REGISTRY_LOCK_KEY = 0x7461736B71
"""PostgreSQL advisory lock serialising runner registration against TaskRunnerLimit."""


def _upsert(connection: Connection, model: type[Any]) -> Any:
    """The dialect's ``INSERT`` construct, which knows ``ON CONFLICT``."""
    if connection.dialect.name == "postgresql":
        return postgresql_insert(model)
    return sqlite_insert(model)


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
    due = select(TaskQueue.id, literal(RunStatus.SCHEDULED.value)).where(
        TaskQueue.scheduled_on <= now, text(TASK_OPEN_SQL)
    )
    if task_queue_id is not None:
        due = due.where(TaskQueue.id == task_queue_id)
    statement = (
        _upsert(connection, TaskRun)
        .from_select(["TaskQueueId", "Status"], due)
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


def load_task(connection: Connection, task_queue_id: int) -> tuple[str, Any] | None:
    """The handler path and data of a queue row."""
    row = connection.execute(
        select(TaskQueue.task_handler_class, TaskQueue.task_data).where(
            TaskQueue.id == task_queue_id
        )
    ).first()
    return None if row is None else (row[0], row[1])


def load_run_input(connection: Connection, task_queue_id: int) -> tuple[str, Any, Any] | None:
    """What a run starts from, in one statement: the task's handler path and data, and the
    checkpoint of its most recent run that has one (``None`` if none has)."""
    checkpoint = (
        select(TaskRun.checkpoint)
        .where(TaskRun.task_queue_id == TaskQueue.id, TaskRun.checkpoint.is_not(None))
        .order_by(TaskRun.id.desc())
        .limit(1)
        .correlate(TaskQueue)
        .scalar_subquery()
    )
    row = connection.execute(
        select(TaskQueue.task_handler_class, TaskQueue.task_data, checkpoint).where(
            TaskQueue.id == task_queue_id
        )
    ).first()
    return None if row is None else (row[0], row[1], row[2])


def finish_run(
    connection: Connection, run_id: int, runner_id: int, outcome: RunOutcome, now: datetime
) -> bool:
    """Record a run's final state and roll it up; ``False`` if it was no longer this runner's.

    A run stops being the runner's when the overseer timed the runner out meanwhile; that
    verdict stands and the late outcome is not written.
    """
    if is_plain_success(outcome):
        return _finish_success(connection, run_id, runner_id, outcome, now)
    values: dict[str, Any] = {
        "status": outcome.status,
        "finished_on": now,
        "standard_output": outcome.standard_output,
        "error_output": outcome.error_output,
        "results": outcome.results,
        "error_code": outcome.error_code,
        "error_message": outcome.error_message,
    }
    if outcome.percents_completed is not None:
        values["percents_completed"] = outcome.percents_completed
    if outcome.checkpoint is not None:
        values["checkpoint"] = outcome.checkpoint
    task_queue_id = connection.execute(
        update(TaskRun)
        .where(TaskRun.id == run_id, TaskRun.task_runner_id == runner_id, text(RUN_RUNNING_SQL))
        .values(**values)
        .returning(TaskRun.task_queue_id)
    ).scalar()
    if task_queue_id is None:
        return False
    if outcome.replaces_task_data:
        connection.execute(
            update(TaskQueue)
            .where(TaskQueue.id == task_queue_id)
            .values(task_data=outcome.task_data)
        )
    if outcome.continues and not is_cancelled(connection, task_queue_id):
        connection.execute(
            insert(TaskRun).values(task_queue_id=task_queue_id, status=RunStatus.SCHEDULED)
        )
    rollup_tasks(connection, [task_queue_id])
    return True


def is_plain_success(outcome: RunOutcome) -> bool:
    """A success that neither continues, nor replaces the task's data, nor keeps a checkpoint."""
    return (
        outcome.status is RunStatus.SUCCESS
        and not outcome.continues
        and not outcome.replaces_task_data
        and outcome.checkpoint is None
    )


def success_values(
    run_id: int, runner_id: int, outcome: RunOutcome, now: datetime
) -> dict[str, Any]:
    """The parameters of the statements recording a plain success."""
    return {
        "run_id": run_id,
        "runner_id": runner_id,
        "now": now,
        "standard_output": outcome.standard_output,
        "error_output": outcome.error_output,
        "results": outcome.results,
        "percents_completed": 100
        if outcome.percents_completed is None
        else outcome.percents_completed,
    }


def _finish_success(
    connection: Connection, run_id: int, runner_id: int, outcome: RunOutcome, now: datetime
) -> bool:
    """:func:`finish_run` for a plain success, in one statement on PostgreSQL.

    The roll-up is exact without recounting: the run was the task's newest (its only open
    run), so ``LastStatus`` becomes ``success`` and the failures since the last success are 0.
    """
    values = success_values(run_id, runner_id, outcome, now)
    if connection.dialect.name == "postgresql":
        return _PG_FINISH_SUCCESS.first(connection, values) is not None
    task_queue_id = connection.execute(_FINISH_SUCCESS_RUN, values).scalar()
    if task_queue_id is None:
        return False
    connection.execute(_ROLL_UP_SUCCESS, {"task_queue_id": task_queue_id})
    return True


_FINISH_BINDS = (
    bindparam("run_id", type_=Integer()),
    bindparam("runner_id", type_=Integer()),
    bindparam("now", type_=UTCDateTime()),
    bindparam("results", type_=JsonDocument),
)
_FINISH_SUCCESS_SET = """
    UPDATE "TaskRuns" SET "Status" = 'success', "FinishedOn" = :now,
        "StandardOutput" = :standard_output, "ErrorOutput" = :error_output,
        "Results" = :results, "ErrorCode" = NULL, "ErrorMessage" = NULL,
        "PercentsCompleted" = :percents_completed
    WHERE "Id" = :run_id AND "TaskRunnerId" = :runner_id AND "Status" = 'running'
    RETURNING "TaskQueueId"
"""
_FINISH_SUCCESS_RUN = text(_FINISH_SUCCESS_SET).bindparams(*_FINISH_BINDS)
_ROLL_UP_SUCCESS = text(
    """UPDATE "TaskQueue" SET "LastStatus" = 'success', "TaskRunsFailed" = 0
    WHERE "Id" = :task_queue_id"""
)
_PG_FINISH_SUCCESS = DriverStatement(
    text(
        "WITH finished AS ("  # noqa: S608 - constant SQL, values are bound
        + _FINISH_SUCCESS_SET
        + """)
        UPDATE "TaskQueue" SET "LastStatus" = 'success', "TaskRunsFailed" = 0 FROM finished
        WHERE "TaskQueue"."Id" = finished."TaskQueueId" RETURNING "TaskQueue"."Id"
        """
    ).bindparams(*_FINISH_BINDS),
    json_params=frozenset({"results"}),
)


def release_run(connection: Connection, run_id: int, runner_id: int) -> bool:
    """Put a run this runner claimed but never started back to ``scheduled``.

    A runner that claims its next run in the transaction finishing the previous one, and is
    then asked to stop, hands the claimed run back so that another runner takes it.
    """
    task_queue_id = connection.execute(
        update(TaskRun)
        .where(TaskRun.id == run_id, TaskRun.task_runner_id == runner_id, text(RUN_RUNNING_SQL))
        .values(status=RunStatus.SCHEDULED, started_on=None, task_runner_id=None)
        .returning(TaskRun.task_queue_id)
    ).scalar()
    if task_queue_id is None:
        return False
    rollup_tasks(connection, [task_queue_id])
    return True


def save_run_checkpoint(connection: Connection, run_id: int, checkpoint: Any) -> bool:
    """Store a running run's checkpoint; ``False`` if the run is no longer running."""
    return (
        connection.execute(
            update(TaskRun)
            .where(TaskRun.id == run_id, text(RUN_RUNNING_SQL))
            .values(checkpoint=checkpoint)
            .returning(TaskRun.id)
        ).first()
        is not None
    )


def amend_ended_run(
    connection: Connection, run_id: int, runner_id: int, outcome: RunOutcome
) -> None:
    """Fill in the output and error of a run that already ended (its status stays)."""
    connection.execute(
        update(TaskRun)
        .where(TaskRun.id == run_id, TaskRun.task_runner_id == runner_id)
        .values(
            standard_output=outcome.standard_output,
            error_output=outcome.error_output,
            error_code=outcome.error_code,
            error_message=outcome.error_message,
        )
    )


def set_run_progress(connection: Connection, run_id: int, progress: Progress) -> None:
    """Store the progress of a running run."""
    connection.execute(
        update(TaskRun)
        .where(TaskRun.id == run_id, text(RUN_RUNNING_SQL))
        .values(
            percents_completed=progress.percent,
            progress_step=progress.step,
            progress_steps=progress.steps,
            progress_status=progress.status,
        )
    )


def count_running_runners(connection: Connection, worker_hostname: str | None = None) -> int:
    """Runner loops in ``running`` status, on every host (or in one Celery worker)."""
    query = (
        select(func.count())
        .select_from(TaskRunner)
        .where(text(RUNNER_RUNNING_SQL), text(RUNNER_ROLE_RUNNER_SQL))
    )
    if worker_hostname is not None:
        query = query.where(TaskRunner.worker_hostname == worker_hostname)
    return int(connection.execute(query).scalar_one())


def register_runner(
    connection: Connection,
    *,
    limit: int,
    process_id: int,
    hostname: str,
    process_create_time: float | None,
    now: datetime,
    worker_hostname: str | None = None,
    worker_limit: int | None = None,
    process_namespace: str | None = None,
) -> int | None:
    """Insert a ``running`` runner row unless ``limit`` runners are already running.

    With ``worker_hostname`` the row belongs to a Celery worker, which may hold at most
    ``worker_limit`` running runners. Registrations are serialised (an advisory lock on
    PostgreSQL, the write lock on SQLite) so concurrent starters never overshoot a limit.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(RUNNER_REGISTRY_LOCK_KEY)))
    if count_running_runners(connection) >= limit:
        return None
    if (
        worker_hostname is not None
        and worker_limit is not None
        and count_running_runners(connection, worker_hostname) >= worker_limit
    ):
        return None
    return _insert_runner(
        connection,
        role=RunnerRole.RUNNER,
        process_id=process_id,
        hostname=hostname,
        process_create_time=process_create_time,
        worker_hostname=worker_hostname,
        now=now,
        process_namespace=process_namespace,
    )


def _insert_runner(
    connection: Connection,
    *,
    role: RunnerRole,
    process_id: int,
    hostname: str,
    process_create_time: float | None,
    worker_hostname: str | None,
    now: datetime,
    process_namespace: str | None = None,
) -> int:
    return int(
        connection.execute(
            insert(TaskRunner)
            .values(
                process_id=process_id,
                hostname=hostname,
                process_create_time=process_create_time,
                process_namespace=process_namespace,
                started_on=now,
                heartbeat_on=now,
                status=RunnerStatus.RUNNING,
                worker_hostname=worker_hostname,
                role=role,
            )
            .returning(TaskRunner.id)
        ).scalar_one()
    )


def beat_heart(connection: Connection, runner_id: int, now: datetime) -> bool:
    """Refresh a runner's heartbeat; ``False`` if the runner is no longer ``running``."""
    updated = connection.execute(
        update(TaskRunner)
        .where(TaskRunner.id == runner_id, text(RUNNER_RUNNING_SQL))
        .values(heartbeat_on=now)
        .returning(TaskRunner.id)
    ).first()
    return updated is not None


def finish_runner(connection: Connection, runner_id: int, now: datetime) -> bool:
    """A runner that stops itself ends ``success`` with ``FinishedOn``."""
    updated = connection.execute(
        update(TaskRunner)
        .where(TaskRunner.id == runner_id, text(RUNNER_RUNNING_SQL))
        .values(status=RunnerStatus.SUCCESS, finished_on=now)
        .returning(TaskRunner.id)
    ).first()
    return updated is not None


def running_runners(connection: Connection) -> list[RunnerRecord]:
    """Every runner row in ``running`` status."""
    return [
        RunnerRecord(*row)
        for row in connection.execute(
            select(
                TaskRunner.id,
                TaskRunner.process_id,
                TaskRunner.hostname,
                TaskRunner.process_create_time,
                TaskRunner.started_on,
                TaskRunner.heartbeat_on,
                TaskRunner.process_namespace,
                TaskRunner.role == RunnerRole.RUNNER,
            ).where(text(RUNNER_RUNNING_SQL))
        )
    ]


RUNNER_STOPPED_MESSAGE = "the task runner stopped while this run was running"
"""``ErrorMessage`` of a run timed out with its runner."""


def time_out_runners(
    connection: Connection,
    runner_ids: Iterable[int],
    now: datetime,
    *,
    judged: Iterable[RunnerRecord] = (),
) -> list[int]:
    """Move runners to ``timeout``; their ``running`` runs follow, and their tasks roll up.

    The seed's ``task-runner:OnAfterItemUpdate``. Returns the ids actually timed out (a runner
    that finished meanwhile is left alone). A runner in ``judged`` is timed out only if its
    heartbeat is still the one it was judged by: one that renewed its lease since is alive.
    """
    ids = set(runner_ids)
    timed_out: list[int] = []
    for record in judged:
        ids.discard(record.id)
        heartbeat = (
            TaskRunner.heartbeat_on.is_(None)
            if record.heartbeat_on is None
            else TaskRunner.heartbeat_on == record.heartbeat_on
        )
        timed_out.extend(
            connection.execute(
                update(TaskRunner)
                .where(TaskRunner.id == record.id, text(RUNNER_RUNNING_SQL), heartbeat)
                .values(status=RunnerStatus.TIMEOUT, finished_on=now)
                .returning(TaskRunner.id)
            ).scalars()
        )
    if ids:
        timed_out.extend(
            connection.execute(
                update(TaskRunner)
                .where(TaskRunner.id.in_(sorted(ids)), text(RUNNER_RUNNING_SQL))
                .values(status=RunnerStatus.TIMEOUT, finished_on=now)
                .returning(TaskRunner.id)
            ).scalars()
        )
    if not timed_out:
        return []
    task_ids = connection.execute(
        update(TaskRun)
        .where(TaskRun.task_runner_id.in_(timed_out), text(RUN_RUNNING_SQL))
        .values(
            status=RunStatus.TIMEOUT,
            finished_on=now,
            error_message=RUNNER_STOPPED_MESSAGE,
        )
        .returning(TaskRun.task_queue_id)
    ).scalars()
    rollup_tasks(connection, task_ids)
    return sorted(timed_out)


def open_run_id(connection: Connection, task_queue_id: int) -> int | None:
    """The id of a queue row's scheduled or running run, if it has one."""
    return connection.execute(
        select(TaskRun.id).where(TaskRun.task_queue_id == task_queue_id, text(RUN_OPEN_SQL))
    ).scalar()


BEAT_TICKS_KEPT = 1000
"""Tick rows kept per event; older ones are pruned as new ones are claimed."""


def claim_beat_tick(connection: Connection, event: str, slot: int, now: datetime) -> bool:
    """Record that ``event`` ran in time ``slot``; ``False`` if another beat's tick already did."""
    statement = (
        _upsert(connection, BeatTick)
        .values(event=event, slot=slot, ticked_on=now)
        .on_conflict_do_nothing()
    )
    claimed = connection.execute(statement.returning(BeatTick.slot)).first() is not None
    if claimed:
        connection.execute(
            delete(BeatTick).where(BeatTick.event == event, BeatTick.slot < slot - BEAT_TICKS_KEPT)
        )
    return claimed


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
    return _insert_runner(
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


def create_manual_run(connection: Connection, task_queue_id: int) -> int | None:
    """A ``scheduled`` run for a task whatever its retries, unless it has an open run."""
    statement = (
        _upsert(connection, TaskRun)
        .values(task_queue_id=task_queue_id, status=RunStatus.SCHEDULED)
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


def insert_task(connection: Connection, values: dict[str, Any]) -> int | None:
    """Insert a queue row; ``None`` if its unique key belongs to an unfinished task already.

    The partial unique index decides, so concurrent callers with one key get one row.
    """
    statement = _upsert(connection, TaskQueue).values(**values)
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
_PG_DUE_TASK = _INSERT_DUE_TASK_RETURNING.cte("new_task")
_PG_INSERT_DUE_TASK_AND_RUN = DriverStatement(
    insert(TaskRun)
    .from_select(
        [TaskRun.task_queue_id, TaskRun.status],
        select(*_PG_DUE_TASK.c, literal(RunStatus.SCHEDULED.value)),
    )
    .returning(TaskRun.task_queue_id),
    json_params=frozenset({"task_data"}),
)
_INSERT_FIRST_RUN = insert(TaskRun).values(
    task_queue_id=bindparam("task_queue_id", type_=Integer()), status=RunStatus.SCHEDULED
)


def insert_due_task(connection: Connection, values: dict[str, Any]) -> int:
    """Insert a due task without a unique key together with its first ``scheduled`` run.

    What :func:`insert_task` and :func:`create_runs` do for such a task, written directly: it
    is due and has no run, so it qualifies, and its ``LastStatus`` is ``scheduled``. One
    statement on PostgreSQL; returns the task's id.
    """
    parameters = {name: values[name] for name in _TASK_COLUMNS}
    if connection.dialect.name == "postgresql":
        return int(_PG_INSERT_DUE_TASK_AND_RUN.one(connection, parameters)[0])
    task_id = int(connection.execute(_INSERT_DUE_TASK_RETURNING, parameters).scalar_one())
    connection.execute(_INSERT_FIRST_RUN, {"task_queue_id": task_id})
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


def defer_retry(
    connection: Connection, task_queue_id: int, now: datetime, delay_for: Callable[[int], float]
) -> datetime | None:
    """After a failed run, move a task that has retries left to ``now + delay_for(failures)``."""
    row = connection.execute(
        select(TaskQueue.task_runs_failed).where(TaskQueue.id == task_queue_id, text(TASK_OPEN_SQL))
    ).first()
    if row is None:
        return None
    due = now + timedelta(seconds=delay_for(int(row[0])))
    connection.execute(
        update(TaskQueue).where(TaskQueue.id == task_queue_id).values(scheduled_on=due)
    )
    return due


def running_run_of_runner(connection: Connection, runner_id: int) -> tuple[int, int] | None:
    """``(run id, task id)`` of a run ``running`` under ``runner_id``, if any: after a claim
    whose commit the runner never saw confirmed, the run it may have claimed all the same."""
    row = connection.execute(
        select(TaskRun.id, TaskRun.task_queue_id)
        .where(TaskRun.task_runner_id == runner_id, text(RUN_RUNNING_SQL))
        .order_by(TaskRun.id)
        .limit(1)
    ).first()
    return None if row is None else (int(row[0]), int(row[1]))
