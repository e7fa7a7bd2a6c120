"""The schedules' tables: periodic handler tasks and the slots they fired (on ``models.Base``).

``TaskSchedules`` holds one row per schedule: what to enqueue, when (an interval or a crontab
in a timezone), its misfire policy, whether an operator paused it, and where it stands (next
slot, last firing). ``TaskScheduleSlots`` holds one row per slot a tick dealt with; its unique
``(ScheduleId, SlotOn)`` key is what makes a slot fire once however many beats tick.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from celery_taskq.core.models import Base

# models.py imports this module at its end, so its column types are restated here.
_Id = BigInteger().with_variant(Integer(), "sqlite")
_JsonDocument = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class MisfirePolicy(enum.StrEnum):
    """What a schedule does about slots that passed while no tick fired them."""

    CATCH_UP_ONCE = "catch_up_once"
    """Fire one task for all the missed slots."""
    SKIP = "skip"
    """Fire none for them; wait for the next slot."""


class ScheduleSource(enum.StrEnum):
    """Who owns a schedule's definition."""

    CONFIG = "config"
    """``taskq_schedules`` in the Celery config: each sync rewrites the definition."""
    API = "api"
    """The Python API, the command line or the HTTP API: edited only there."""


POLICY_VALUES_SQL = ", ".join(f"'{policy.value}'" for policy in MisfirePolicy)
SOURCE_VALUES_SQL = ", ".join(f"'{source.value}'" for source in ScheduleSource)


class TaskSchedule(Base):
    """A periodic handler task: what to enqueue, on which timing, and where it stands."""

    __tablename__ = "TaskSchedules"

    id: Mapped[int] = mapped_column("Id", _Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column("Name", String(255))
    task_handler_class: Mapped[str] = mapped_column("TaskHandlerClass", String(255))
    task_data: Mapped[Any | None] = mapped_column("TaskData", _JsonDocument)
    interval_seconds: Mapped[int | None] = mapped_column("IntervalSeconds", Integer)
    """Fire every N seconds, on slots aligned to the Unix epoch; or NULL for a crontab."""
    crontab: Mapped[str | None] = mapped_column("Crontab", String(255))
    """Five fields: minute, hour, day of month, month, day of week; or NULL for an interval."""
    timezone: Mapped[str] = mapped_column("Timezone", String(64))
    misfire_policy: Mapped[str] = mapped_column("MisfirePolicy", String(16))
    paused: Mapped[bool] = mapped_column(
        "Paused", Boolean(create_constraint=False), server_default=text("false")
    )
    title: Mapped[str | None] = mapped_column("Title", String(255))
    max_retries: Mapped[int | None] = mapped_column("MaxRetries", Integer)
    source: Mapped[str] = mapped_column("Source", String(16))
    created_on: Mapped[datetime] = mapped_column("CreatedOn")
    updated_on: Mapped[datetime] = mapped_column("UpdatedOn")
    next_run_on: Mapped[datetime] = mapped_column("NextRunOn")
    """The first slot not yet dealt with."""
    last_run_on: Mapped[datetime | None] = mapped_column("LastRunOn")
    """When the schedule last created a task."""
    last_task_id: Mapped[int | None] = mapped_column(
        "LastTaskId", _Id, ForeignKey("TaskQueue.Id", ondelete="SET NULL")
    )

    __table_args__ = (
        UniqueConstraint("Name"),
        CheckConstraint('("IntervalSeconds" IS NULL) <> ("Crontab" IS NULL)', name="one_timing"),
        CheckConstraint(
            '"IntervalSeconds" IS NULL OR "IntervalSeconds" >= 1', name="interval_positive"
        ),
        CheckConstraint(f'"MisfirePolicy" IN ({POLICY_VALUES_SQL})', name="misfire_policy"),
        CheckConstraint(f'"Source" IN ({SOURCE_VALUES_SQL})', name="source"),
        Index("ix_TaskSchedules_NextRunOn", "NextRunOn"),
    )


class TaskScheduleSlot(Base):
    """One slot of a schedule that a tick dealt with: the task it fired, or the slots it missed."""

    __tablename__ = "TaskScheduleSlots"

    id: Mapped[int] = mapped_column("Id", _Id, primary_key=True, autoincrement=True)
    schedule_id: Mapped[int] = mapped_column(
        "ScheduleId", _Id, ForeignKey("TaskSchedules.Id", ondelete="CASCADE")
    )
    slot_on: Mapped[datetime] = mapped_column("SlotOn")
    fired_on: Mapped[datetime] = mapped_column("FiredOn")
    task_queue_id: Mapped[int | None] = mapped_column(
        "TaskQueueId", _Id, ForeignKey("TaskQueue.Id", ondelete="SET NULL")
    )
    """The task this slot created; NULL when the skip policy fired none."""
    policy_applied: Mapped[str | None] = mapped_column("PolicyApplied", String(16))
    """The misfire policy applied when slots were missed before this one; NULL when none was."""
    missed_slots: Mapped[int] = mapped_column("MissedSlots", Integer, server_default=text("0"))
    first_missed_on: Mapped[datetime | None] = mapped_column("FirstMissedOn")

    __table_args__ = (
        UniqueConstraint("ScheduleId", "SlotOn"),
        CheckConstraint('"MissedSlots" >= 0', name="missed_slots_not_negative"),
        Index("ix_TaskScheduleSlots_TaskQueueId", "TaskQueueId"),
    )


SLOT_CONSTRAINT = "uq_TaskScheduleSlots_ScheduleId_SlotOn"
"""The unique key that lets a schedule's slot fire once, whichever beat ticks first."""
NAME_CONSTRAINT = "uq_TaskSchedules_Name"
"""The unique key on a schedule's name."""
