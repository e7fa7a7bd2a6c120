"""The schedules' statements: defining, pausing and listing schedules, and firing a slot.

A slot fires once: :func:`claim_slot` inserts the ``(ScheduleId, SlotOn)`` row with
``ON CONFLICT DO NOTHING``, so a second beat's insert of the same slot writes nothing and its
tick creates no task. :func:`lock_due_schedule` also takes the schedule's row
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's write transaction is exclusive already),
so two ticks never judge one schedule's missed slots at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, select, update

from celery_taskq.core.models import TaskQueue
from celery_taskq.core.schedule_models import TaskSchedule, TaskScheduleSlot
from celery_taskq.core.storage.dialects import upsert

_SCHEDULE_ATTRIBUTES = (
    TaskSchedule.id,
    TaskSchedule.name,
    TaskSchedule.task_handler_class,
    TaskSchedule.task_data,
    TaskSchedule.interval_seconds,
    TaskSchedule.crontab,
    TaskSchedule.timezone,
    TaskSchedule.misfire_policy,
    TaskSchedule.paused,
    TaskSchedule.title,
    TaskSchedule.max_retries,
    TaskSchedule.source,
    TaskSchedule.created_on,
    TaskSchedule.updated_on,
    TaskSchedule.next_run_on,
    TaskSchedule.last_run_on,
    TaskSchedule.last_task_id,
)
SCHEDULE_COLUMNS = tuple(attribute.label(attribute.key) for attribute in _SCHEDULE_ATTRIBUTES)
"""A schedule's columns, each under its attribute name (rows read as ``row.next_run_on``)."""


def insert_schedule(connection: Connection, values: dict[str, Any]) -> int | None:
    """Insert a schedule; ``None`` if one with its name exists (the unique name decides)."""
    statement = (
        upsert(connection, TaskSchedule)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["Name"])
        .returning(TaskSchedule.id)
    )
    schedule_id = connection.execute(statement).scalar()
    return None if schedule_id is None else int(schedule_id)


def update_schedule(connection: Connection, name: str, values: dict[str, Any]) -> bool:
    """Set ``values`` on the schedule named ``name``; whether it exists."""
    result = connection.execute(
        update(TaskSchedule).where(TaskSchedule.name == name).values(**values)
    )
    return bool(result.rowcount)


def delete_schedule(connection: Connection, name: str) -> bool:
    """Delete the schedule named ``name`` and its slot rows; whether it existed.

    The tasks it created stay, their ``QueuedById`` still naming it.
    """
    schedule_id = connection.execute(
        select(TaskSchedule.id).where(TaskSchedule.name == name)
    ).scalar()
    if schedule_id is None:
        return False
    connection.execute(delete(TaskScheduleSlot).where(TaskScheduleSlot.schedule_id == schedule_id))
    connection.execute(delete(TaskSchedule).where(TaskSchedule.id == schedule_id))
    return True


def schedule_by_name(connection: Connection, name: str, *, lock: bool = False) -> Row[Any] | None:
    """The schedule named ``name`` (its columns, and its last task's ``LastStatus``)."""
    statement = _with_last_status().where(TaskSchedule.name == name)
    if lock and connection.dialect.name == "postgresql":
        statement = statement.with_for_update(of=TaskSchedule)
    return connection.execute(statement).first()


def list_schedules(connection: Connection) -> list[Row[Any]]:
    """Every schedule by name, with its last task's ``LastStatus``."""
    return list(connection.execute(_with_last_status().order_by(TaskSchedule.name)))


def _with_last_status() -> Any:
    return select(*SCHEDULE_COLUMNS, TaskQueue.last_status.label("last_status")).outerjoin(
        TaskQueue, TaskQueue.id == TaskSchedule.last_task_id
    )


def due_schedule_ids(connection: Connection, now: datetime) -> list[int]:
    """Ids of the unpaused schedules whose next slot has come, soonest first."""
    return list(
        connection.execute(
            select(TaskSchedule.id)
            .where(TaskSchedule.next_run_on <= now, TaskSchedule.paused.is_(False))
            .order_by(TaskSchedule.next_run_on)
        ).scalars()
    )


def lock_due_schedule(connection: Connection, schedule_id: int, now: datetime) -> Row[Any] | None:
    """The schedule if it is still due and unpaused, its row locked for this transaction;
    ``None`` if another tick holds it or has fired it meanwhile."""
    statement = select(*SCHEDULE_COLUMNS).where(
        TaskSchedule.id == schedule_id,
        TaskSchedule.next_run_on <= now,
        TaskSchedule.paused.is_(False),
    )
    if connection.dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True)
    return connection.execute(statement).first()


def claim_slot(
    connection: Connection,
    *,
    schedule_id: int,
    slot_on: datetime,
    fired_on: datetime,
    policy_applied: str | None,
    missed_slots: int,
    first_missed_on: datetime | None,
) -> int | None:
    """Record that the schedule's ``slot_on`` is dealt with; ``None`` if a tick already did."""
    statement = (
        upsert(connection, TaskScheduleSlot)
        .values(
            schedule_id=schedule_id,
            slot_on=slot_on,
            fired_on=fired_on,
            policy_applied=policy_applied,
            missed_slots=missed_slots,
            first_missed_on=first_missed_on,
        )
        .on_conflict_do_nothing(index_elements=["ScheduleId", "SlotOn"])
        .returning(TaskScheduleSlot.id)
    )
    slot_id = connection.execute(statement).scalar()
    return None if slot_id is None else int(slot_id)


def set_slot_task(connection: Connection, slot_id: int, task_queue_id: int) -> None:
    """Link a slot row to the task it created."""
    connection.execute(
        update(TaskScheduleSlot)
        .where(TaskScheduleSlot.id == slot_id)
        .values(task_queue_id=task_queue_id)
    )


def advance_schedule(
    connection: Connection,
    schedule_id: int,
    *,
    next_run_on: datetime,
    fired_task_id: int | None,
    now: datetime,
) -> None:
    """Move the schedule to its next slot; with ``fired_task_id``, record the firing too."""
    values: dict[str, Any] = {"next_run_on": next_run_on}
    if fired_task_id is not None:
        values.update(last_run_on=now, last_task_id=fired_task_id)
    connection.execute(update(TaskSchedule).where(TaskSchedule.id == schedule_id).values(**values))


def recent_slots(connection: Connection, schedule_id: int, limit: int) -> list[Row[Any]]:
    """The schedule's latest slot rows, newest first."""
    return list(
        connection.execute(
            select(
                *(
                    attribute.label(attribute.key)
                    for attribute in (
                        TaskScheduleSlot.slot_on,
                        TaskScheduleSlot.fired_on,
                        TaskScheduleSlot.task_queue_id,
                        TaskScheduleSlot.policy_applied,
                        TaskScheduleSlot.missed_slots,
                        TaskScheduleSlot.first_missed_on,
                    )
                )
            )
            .where(TaskScheduleSlot.schedule_id == schedule_id)
            .order_by(TaskScheduleSlot.slot_on.desc())
            .limit(limit)
        )
    )
