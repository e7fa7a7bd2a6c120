"""Statements on one run: what it starts from, its progress and checkpoint, its final state.

A run's final state is written with its task's roll-up in the caller's transaction, and only
while the run is still its runner's (DESIGN §3.7).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    bindparam,
    insert,
    select,
    text,
    update,
)

from celery_taskq.core.context import Progress
from celery_taskq.core.models import (
    RUN_RUNNING_SQL,
    TASK_OPEN_SQL,
    JsonDocument,
    RunStatus,
    TaskQueue,
    TaskRun,
    UTCDateTime,
)
from celery_taskq.core.runner.outcome import RunOutcome
from celery_taskq.core.statements.tasks import is_cancelled, queue_and_priority_of, rollup_tasks
from celery_taskq.core.storage.driver import DriverStatement


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
            insert(TaskRun).values(
                task_queue_id=task_queue_id,
                status=RunStatus.SCHEDULED,
                **queue_and_priority_of(task_queue_id),
            )
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
