"""Re-sending a native Celery task from its record: which tasks may be re-sent, and the row
of the re-send.

A native task (``celery:<task name>``) may be re-sent when it failed for good (its last run
failed with no retry left: a dead letter) or when it is possibly lost (published, never
started, ``native_lost_after`` seconds past due). Anything else is refused with the reason:
Celery may still run or retry it. The re-send is a new ``TaskQueue`` row with a fresh Celery
task id, ``ResentFromId`` naming the old row and ``QueuedById`` naming who asked; the Celery
layer (:mod:`celery_taskq.celery.resend`) writes it, then publishes the message. The core
never publishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from celery_taskq.core.exceptions import InvalidArgumentError, TaskNotFoundError
from celery_taskq.core.models import (
    CELERY_HANDLER_PREFIX,
    FAILED_RUN_STATUSES,
    RunStatus,
    TaskQueue,
)


@dataclass(frozen=True)
class ResendPlan:
    """What a re-send publishes: the stored task name, args and kwargs."""

    task_id: int
    """The task re-sent."""
    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    task_data: Any
    max_retries: int
    title: str | None


def plan_resend(
    connection: Connection, task_id: int, *, now: datetime, lost_after: float
) -> ResendPlan:
    """The plan to re-send task ``task_id``, or a refusal that says why it cannot be.

    Refused: an unknown id (:class:`TaskNotFoundError`); a task that is not native, has not
    failed for good and is not possibly lost, or whose ``TaskData`` is not
    ``{"args": [...], "kwargs": {...}}`` (:class:`InvalidArgumentError`).
    """
    row = connection.execute(
        select(
            TaskQueue.task_handler_class,
            TaskQueue.task_data,
            TaskQueue.last_status,
            TaskQueue.task_runs_failed,
            TaskQueue.max_retries,
            TaskQueue.scheduled_on,
            TaskQueue.title,
        ).where(TaskQueue.id == task_id)
    ).first()
    if row is None:
        raise TaskNotFoundError(f"no task with id {task_id}")
    handler, data, last_status, failed, max_retries, scheduled_on, title = row
    if not isinstance(handler, str) or not handler.startswith(CELERY_HANDLER_PREFIX):
        raise InvalidArgumentError(
            f"task {task_id} is not a native Celery task: give a handler task a new run with "
            "retry instead"
        )
    name = handler.removeprefix(CELERY_HANDLER_PREFIX)
    if not name:
        raise InvalidArgumentError(f"task {task_id} has no Celery task name to send")
    refusal = state_refusal(
        task_id, last_status, failed, max_retries, scheduled_on, now, lost_after
    )
    if refusal is not None:
        raise InvalidArgumentError(refusal)
    if (
        not isinstance(data, dict)
        or set(data) != {"args", "kwargs"}
        or not isinstance(data["args"], list)
        or not isinstance(data["kwargs"], dict)
    ):
        raise InvalidArgumentError(
            f'task {task_id} cannot be re-sent: its TaskData is not {{"args": [...], '
            '"kwargs": {...}}, so its arguments are not known'
        )
    return ResendPlan(
        task_id=task_id,
        task_name=name,
        args=list(data["args"]),
        kwargs=dict(data["kwargs"]),
        task_data=data,
        max_retries=max_retries if isinstance(max_retries, int) and max_retries >= 1 else 1,
        title=title,
    )


def state_refusal(
    task_id: int,
    last_status: RunStatus | None,
    failed: int,
    max_retries: int,
    scheduled_on: datetime,
    now: datetime,
    lost_after: float,
) -> str | None:
    """Why a native task's state forbids a re-send; ``None`` when it failed for good (last
    run failed, no retry left) or is possibly lost (never started, ``lost_after`` past due)."""
    if last_status is None:
        try:
            lost_on = scheduled_on + timedelta(seconds=lost_after)
        except OverflowError:
            lost_on = datetime.max.replace(tzinfo=scheduled_on.tzinfo)
        if lost_on <= now:
            return None
        return (
            f"task {task_id} has not started yet: it is possibly lost only "
            f"{lost_after:g} s after it was due ({lost_on.isoformat(timespec='seconds')})"
        )
    if last_status in (RunStatus.SCHEDULED, RunStatus.RUNNING):
        return f"task {task_id} is running: only a failed task can be re-sent"
    if last_status is RunStatus.SUCCESS:
        return f"task {task_id} succeeded: only a failed task can be re-sent"
    if last_status in FAILED_RUN_STATUSES and failed < max_retries:
        return (
            f"task {task_id} failed but has retries left ({failed} of {max_retries} attempts "
            "failed): Celery may still retry it"
        )
    return None


def insert_resend(
    connection: Connection,
    plan: ResendPlan,
    *,
    celery_task_id: str,
    queued_by: str,
    now: datetime,
) -> int:
    """The re-send's ``TaskQueue`` row (never run, due now); returns its id."""
    return int(
        connection.execute(
            insert(TaskQueue)
            .values(
                task_handler_class=CELERY_HANDLER_PREFIX + plan.task_name,
                task_data=plan.task_data,
                scheduled_on=now,
                queued_on=now,
                queued_by_id=queued_by[:255],
                max_retries=plan.max_retries,
                task_runs_failed=0,
                title=plan.title,
                celery_task_id=celery_task_id,
                resent_from_id=plan.task_id,
            )
            .returning(TaskQueue.id)
        ).scalar_one()
    )


def withdraw_resend(connection: Connection, resend_id: int) -> None:
    """Delete a re-send's row whose message could not be published (it never ran)."""
    connection.execute(
        delete(TaskQueue).where(TaskQueue.id == resend_id, TaskQueue.last_status.is_(None))
    )
