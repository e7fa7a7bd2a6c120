"""Statements on the runs of native Celery tasks: one ``TaskRuns`` row per execution attempt.

Attempts of one task id may be written by several processes in any order (a retry starts in
another process before the attempt that sent it is written; the worker's main process records
a lost or terminated attempt; a redelivered message starts again). So:

- a start closes the task's open attempt that started before it (``timeout``: ``superseded``,
  or ``worker_lost`` when it is the same attempt delivered again); a start older than the
  task's newest attempt (open or finished) is written already closed as ``superseded``, and
  leaves the newest attempt's roll-up. The one-open-run index never refuses an attempt;
- an end finds its run by id and writes its outcome while the run is open, or over a close
  that was only a guess (``superseded``, ``worker_lost``): what the attempt's own process
  says wins;
- the main process closes an attempt by task id, or, when no start was written, records the
  outcome as a run that never started.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, insert, select, text, update

from celery_taskq.core.models import (
    FAILED_RUN_STATUSES,
    RUN_OPEN_SQL,
    RUN_RUNNING_SQL,
    RunStatus,
    TaskQueue,
    TaskRun,
)
from celery_taskq.core.native_codes import NativeCode
from celery_taskq.core.statements import native_pg
from celery_taskq.core.statements.native import (
    NativeTask,
    insert_on_conflict,
    settle_max_retries,
    upsert_started_task,
)
from celery_taskq.core.statements.tasks import rollup_tasks

GUESSED_CODES = (NativeCode.SUPERSEDED.value, NativeCode.WORKER_LOST.value)
"""Codes of an attempt closed by someone else than its process: its own outcome replaces them."""

SUPERSEDED_MESSAGE = "a newer attempt of this task started while this one was open"
REDELIVERED_MESSAGE = "its message was delivered again while this attempt was open"


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt ended, as its run records it."""

    status: RunStatus
    error_code: str | None = None
    error_message: str | None = None
    standard_output: str | None = None
    error_output: str | None = None
    results: Any = None
    final: bool = True
    """A failure Celery will not retry (the task is a dead letter); ignored for a success."""


def start_attempt(
    connection: Connection,
    task: NativeTask,
    *,
    attempt: int,
    eager: bool,
    runner_id: int | None,
    started_on: datetime,
) -> int:
    """Record one execution attempt as a ``running`` run (its task's row created if need be);
    returns the run's id. Two statements on PostgreSQL, three on SQLite, whatever was written
    before."""
    if connection.dialect.name == "postgresql":
        run_id = native_pg.start_attempt(
            connection,
            task,
            attempt=attempt,
            eager=eager,
            runner_id=runner_id,
            started_on=started_on,
            lost_message=REDELIVERED_MESSAGE,
            superseded_message=SUPERSEDED_MESSAGE,
        )
        if run_id is not None:
            return run_id
        task_queue_id = int(
            connection.execute(
                select(TaskQueue.id).where(TaskQueue.celery_task_id == task.celery_task_id)
            ).scalar_one()
        )
        return _insert_superseded(
            connection, task, task_queue_id, attempt, eager, runner_id, started_on
        )
    late_for = connection.execute(
        select(TaskRun.task_queue_id)
        .where(
            TaskRun.task_queue_id.in_(
                select(TaskQueue.id).where(TaskQueue.celery_task_id == task.celery_task_id)
            ),
            TaskRun.started_on > started_on,
        )
        .limit(1)
    ).scalar()
    if late_for is not None:
        return _insert_superseded(
            connection, task, int(late_for), attempt, eager, runner_id, started_on
        )
    close_older = (
        update(TaskRun)
        .where(
            TaskRun.task_queue_id.in_(
                select(TaskQueue.id).where(TaskQueue.celery_task_id == task.celery_task_id)
            ),
            text(RUN_OPEN_SQL),
            (TaskRun.started_on.is_(None)) | (TaskRun.started_on <= started_on),
        )
        .values(
            status=RunStatus.TIMEOUT,
            finished_on=started_on,
            error_code=case(
                (TaskRun.attempt == attempt, NativeCode.WORKER_LOST.value),
                else_=NativeCode.SUPERSEDED.value,
            ),
            error_message=case(
                (TaskRun.attempt == attempt, REDELIVERED_MESSAGE), else_=SUPERSEDED_MESSAGE
            ),
        )
        .returning(TaskRun.id)
    )
    task_queue_id = upsert_started_task(
        connection,
        task,
        closed_failed=len(connection.execute(close_older).all()),
        running=True,
    )
    run_id = connection.execute(
        insert_on_conflict(connection, TaskRun)
        .values(
            status=RunStatus.RUNNING,
            task_queue_id=task_queue_id,
            celery_task_id=task.celery_task_id,
            task_runner_id=runner_id,
            started_on=started_on,
            attempt=attempt,
            eager=eager,
        )
        .on_conflict_do_nothing(
            index_elements=[TaskRun.task_queue_id], index_where=text(RUN_OPEN_SQL)
        )
        .returning(TaskRun.id)
    ).scalar()
    if run_id is not None:
        return int(run_id)
    return _insert_superseded(
        connection, task, task_queue_id, attempt, eager, runner_id, started_on
    )


def _insert_superseded(
    connection: Connection,
    task: NativeTask,
    task_queue_id: int,
    attempt: int,
    eager: bool,
    runner_id: int | None,
    started_on: datetime,
) -> int:
    """A start written after a newer attempt's: closed as superseded at once, and the newer
    attempt stays the task's newest (pool processes' writers commit in their own order).

    This one counts as failed, unless the newest attempt succeeded (a success resets the
    failures). If the newest attempt already failed, ``MaxRetries`` grows with the failures,
    so that a dead letter stays one and a task with retries left keeps them; while it runs,
    its own end settles ``MaxRetries``."""
    run_id = connection.execute(
        insert(TaskRun)
        .values(
            task_queue_id=task_queue_id,
            celery_task_id=task.celery_task_id,
            task_runner_id=runner_id,
            started_on=started_on,
            attempt=attempt,
            eager=eager,
            status=RunStatus.TIMEOUT,
            finished_on=started_on,
            error_code=NativeCode.SUPERSEDED.value,
            error_message=SUPERSEDED_MESSAGE,
        )
        .returning(TaskRun.id)
    ).scalar_one()
    newest_failed = TaskQueue.last_status.in_(FAILED_RUN_STATUSES)
    counted = TaskQueue.last_status != RunStatus.SUCCESS
    connection.execute(
        update(TaskQueue)
        .where(TaskQueue.id == task_queue_id)
        .values(
            task_runs_failed=case(
                (counted, TaskQueue.task_runs_failed + 1), else_=TaskQueue.task_runs_failed
            ),
            max_retries=case(
                (newest_failed, TaskQueue.max_retries + 1), else_=TaskQueue.max_retries
            ),
        )
    )
    return int(run_id)


def find_attempt(
    connection: Connection, celery_task_id: str, attempt: int, runner_id: int | None
) -> int | None:
    """The newest run of this attempt of a task, written by this runner."""
    return connection.execute(
        select(TaskRun.id)
        .where(
            TaskRun.celery_task_id == celery_task_id,
            TaskRun.attempt == attempt,
            TaskRun.task_runner_id.is_(None)
            if runner_id is None
            else TaskRun.task_runner_id == runner_id,
        )
        .order_by(TaskRun.id.desc())
        .limit(1)
    ).scalar()


def end_attempt(connection: Connection, run_id: int, end: AttemptEnd, now: datetime) -> bool:
    """Record how an attempt ended, and roll it up; ``False`` if the run was closed for good
    meanwhile (by the worker's main process, which knows better)."""
    values = end_values(end, now)
    if connection.dialect.name == "postgresql":
        if native_pg.end_attempt(connection, run_id, values, final=end.final):
            return True
    else:
        task_queue_id = connection.execute(
            update(TaskRun)
            .where(TaskRun.id == run_id, text(RUN_RUNNING_SQL))
            .values(**values)
            .returning(TaskRun.task_queue_id)
        ).scalar()
        if task_queue_id is not None:
            connection.execute(
                _roll_up_newest_statement(end).where(TaskQueue.id == int(task_queue_id))
            )
            return True
    task_queue_id = connection.execute(
        update(TaskRun)
        .where(
            TaskRun.id == run_id,
            TaskRun.status == RunStatus.TIMEOUT,
            TaskRun.error_code.in_(GUESSED_CODES),
        )
        .values(**values)
        .returning(TaskRun.task_queue_id)
    ).scalar()
    if task_queue_id is None:
        return False
    # Counted failed when it was closed. It is still the task's newest attempt only if none
    # began since; otherwise the newer attempt's roll-up stands: this late end must not reopen a
    # task the newer attempt left a dead letter (pool processes' writers commit in their own
    # order, so the newer attempt's run may have the smaller id).
    started = select(TaskRun.started_on).where(TaskRun.id == run_id).scalar_subquery()
    began_since = connection.execute(
        select(TaskRun.id)
        .where(TaskRun.task_queue_id == task_queue_id, TaskRun.started_on > started)
        .limit(1)
    ).scalar()
    task = update(TaskQueue).where(TaskQueue.id == task_queue_id)
    succeeded = end.status not in FAILED_RUN_STATUSES
    if began_since is None and succeeded:  # rare: a superseded attempt succeeded
        connection.execute(task.values(last_status=end.status, task_runs_failed=0))
    elif began_since is None:
        connection.execute(task.values(last_status=end.status))
        settle_max_retries(connection, int(task_queue_id), final=end.final)
    elif succeeded:
        connection.execute(task.values(**_uncounted_close()))
    return True


def _uncounted_close() -> dict[str, Any]:
    """The roll-up columns without the failure a superseded close counted, for an attempt that
    succeeded after all while a newer one is the task's newest: what
    :func:`_insert_superseded` (or a newer start's close) added, taken back."""
    return {
        "task_runs_failed": case(
            (
                (TaskQueue.last_status != RunStatus.SUCCESS) & (TaskQueue.task_runs_failed > 0),
                TaskQueue.task_runs_failed - 1,
            ),
            else_=TaskQueue.task_runs_failed,
        ),
        # A dead letter stays one; a task with retries left keeps them
        "max_retries": case(
            (
                TaskQueue.last_status.in_(FAILED_RUN_STATUSES)
                & (TaskQueue.task_runs_failed >= TaskQueue.max_retries)
                & (TaskQueue.max_retries > 1),
                TaskQueue.max_retries - 1,
            ),
            else_=TaskQueue.max_retries,
        ),
    }


def close_open_attempt(
    connection: Connection, celery_task_id: str, end: AttemptEnd, now: datetime
) -> bool:
    """Close the open attempt of a task with ``end`` (the worker's main process saw it end:
    lost, terminated, time limit); ``False`` if the task has no open attempt."""
    task_queue_id = connection.execute(
        update(TaskRun)
        .where(
            TaskRun.task_queue_id.in_(
                select(TaskQueue.id).where(TaskQueue.celery_task_id == celery_task_id)
            ),
            text(RUN_OPEN_SQL),
        )
        .values(**end_values(end, now))
        .returning(TaskRun.task_queue_id)
    ).scalar()
    if task_queue_id is None:
        return False
    rollup_tasks(connection, [int(task_queue_id)])
    if end.status in FAILED_RUN_STATUSES:
        settle_max_retries(connection, int(task_queue_id), final=end.final)
    return True


def record_seen_end(
    connection: Connection, task: NativeTask, *, attempt: int, end: AttemptEnd, now: datetime
) -> None:
    """Record an end the worker's main process saw (lost, terminated, time limit, revoked,
    expired): over the task's open attempt, or over a close that was only a guess, else as a
    run that never started (no start was written). Seen twice, it is recorded once; a lost
    process reported after its attempt's end was seen adds nothing."""
    if close_open_attempt(connection, task.celery_task_id, end, now):
        return
    newest = connection.execute(
        select(TaskRun.id, TaskRun.status, TaskRun.error_code, TaskRun.attempt)
        .where(
            TaskRun.task_queue_id.in_(
                select(TaskQueue.id).where(TaskQueue.celery_task_id == task.celery_task_id)
            )
        )
        .order_by(TaskRun.id.desc())
        .limit(1)
    ).first()
    if newest is not None:
        run_id, status, code, newest_attempt = newest
        if status == RunStatus.TIMEOUT and code in GUESSED_CODES:
            end_attempt(connection, int(run_id), end, now)
            return
        if newest_attempt == attempt and (
            code == end.error_code or end.error_code == NativeCode.WORKER_LOST.value
        ):
            # Seen twice; or the pool reports the process of an attempt whose end was already
            # seen (terminated, time limit) as lost: nothing new about this attempt.
            return
    record_unstarted(connection, task, attempt=attempt, end=end, now=now)


def record_unstarted(
    connection: Connection, task: NativeTask, *, attempt: int, end: AttemptEnd, now: datetime
) -> int:
    """Record an outcome reached without a start (revoked, expired; or a start that was never
    written) as a run with no ``StartedOn``; returns its id."""
    task_queue_id = upsert_started_task(connection, task, closed_failed=0, running=False)
    run_id = connection.execute(
        insert(TaskRun)
        .values(
            task_queue_id=task_queue_id,
            celery_task_id=task.celery_task_id,
            attempt=attempt,
            **end_values(end, now),
        )
        .returning(TaskRun.id)
    ).scalar_one()
    rollup_tasks(connection, [task_queue_id])
    if end.status in FAILED_RUN_STATUSES:
        settle_max_retries(connection, task_queue_id, final=end.final)
    return int(run_id)


def end_values(end: AttemptEnd, now: datetime) -> dict[str, Any]:
    """The columns an attempt's end sets on its run."""
    values: dict[str, Any] = {
        "status": end.status,
        "finished_on": now,
        "error_code": end.error_code,
        "error_message": end.error_message,
        "results": end.results,
    }
    if end.standard_output is not None:
        values["standard_output"] = end.standard_output
    if end.error_output is not None:
        values["error_output"] = end.error_output
    if end.status is RunStatus.SUCCESS:
        values["percents_completed"] = 100
    return values


def _roll_up_newest_statement(end: AttemptEnd) -> Any:
    """The roll-up of the end of a task's newest attempt, without recounting (the caller adds
    which task): ``LastStatus`` is its status, a success resets the failures, a failure adds
    one and settles ``MaxRetries``."""
    if end.status is RunStatus.SUCCESS:
        return update(TaskQueue).values(last_status=RunStatus.SUCCESS, task_runs_failed=0)
    failed = TaskQueue.task_runs_failed + 1
    if end.final:
        max_retries = case((failed < TaskQueue.max_retries, failed), else_=TaskQueue.max_retries)
    else:
        max_retries = case(
            (failed + 1 > TaskQueue.max_retries, failed + 1), else_=TaskQueue.max_retries
        )
    return update(TaskQueue).values(
        last_status=end.status, task_runs_failed=failed, max_retries=max_retries
    )
