"""Periodic handler tasks: schedules and their fired slots.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "TaskSchedules",
        sa.Column("Id", ID, autoincrement=True, nullable=False),
        sa.Column("Name", sa.String(255), nullable=False),
        sa.Column("TaskHandlerClass", sa.String(255), nullable=False),
        sa.Column("TaskData", JSON_DOCUMENT, nullable=True),
        sa.Column("IntervalSeconds", sa.Integer(), nullable=True),
        sa.Column("Crontab", sa.String(255), nullable=True),
        sa.Column("Timezone", sa.String(64), nullable=False),
        sa.Column("MisfirePolicy", sa.String(16), nullable=False),
        sa.Column("Paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("Title", sa.String(255), nullable=True),
        sa.Column("MaxRetries", sa.Integer(), nullable=True),
        sa.Column("Source", sa.String(16), nullable=False),
        sa.Column("CreatedOn", TIMESTAMP, nullable=False),
        sa.Column("UpdatedOn", TIMESTAMP, nullable=False),
        sa.Column("NextRunOn", TIMESTAMP, nullable=False),
        sa.Column("LastRunOn", TIMESTAMP, nullable=True),
        sa.Column("LastTaskId", ID, nullable=True),
        sa.CheckConstraint(
            '("IntervalSeconds" IS NULL) <> ("Crontab" IS NULL)',
            name="ck_TaskSchedules_one_timing",
        ),
        sa.CheckConstraint(
            '"IntervalSeconds" IS NULL OR "IntervalSeconds" >= 1',
            name="ck_TaskSchedules_interval_positive",
        ),
        sa.CheckConstraint(
            "\"MisfirePolicy\" IN ('catch_up_once', 'skip')",
            name="ck_TaskSchedules_misfire_policy",
        ),
        sa.CheckConstraint("\"Source\" IN ('config', 'api')", name="ck_TaskSchedules_source"),
        sa.ForeignKeyConstraint(
            ["LastTaskId"],
            ["TaskQueue.Id"],
            name="fk_TaskSchedules_LastTaskId_TaskQueue",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("Id", name="pk_TaskSchedules"),
        sa.UniqueConstraint("Name", name="uq_TaskSchedules_Name"),
    )
    op.create_index("ix_TaskSchedules_NextRunOn", "TaskSchedules", ["NextRunOn"])
    op.create_table(
        "TaskScheduleSlots",
        sa.Column("Id", ID, autoincrement=True, nullable=False),
        sa.Column("ScheduleId", ID, nullable=False),
        sa.Column("SlotOn", TIMESTAMP, nullable=False),
        sa.Column("FiredOn", TIMESTAMP, nullable=False),
        sa.Column("TaskQueueId", ID, nullable=True),
        sa.Column("PolicyApplied", sa.String(16), nullable=True),
        sa.Column("MissedSlots", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("FirstMissedOn", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            '"MissedSlots" >= 0', name="ck_TaskScheduleSlots_missed_slots_not_negative"
        ),
        sa.ForeignKeyConstraint(
            ["ScheduleId"],
            ["TaskSchedules.Id"],
            name="fk_TaskScheduleSlots_ScheduleId_TaskSchedules",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["TaskQueueId"],
            ["TaskQueue.Id"],
            name="fk_TaskScheduleSlots_TaskQueueId_TaskQueue",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("Id", name="pk_TaskScheduleSlots"),
        sa.UniqueConstraint("ScheduleId", "SlotOn", name="uq_TaskScheduleSlots_ScheduleId_SlotOn"),
    )
    op.create_index("ix_TaskScheduleSlots_TaskQueueId", "TaskScheduleSlots", ["TaskQueueId"])


def downgrade() -> None:
    op.drop_index("ix_TaskScheduleSlots_TaskQueueId", table_name="TaskScheduleSlots")
    op.drop_table("TaskScheduleSlots")
    op.drop_index("ix_TaskSchedules_NextRunOn", table_name="TaskSchedules")
    op.drop_table("TaskSchedules")
