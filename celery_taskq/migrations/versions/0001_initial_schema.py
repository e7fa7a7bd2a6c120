"""Initial schema: TaskQueue, TaskRunners, TaskRuns.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
RUN_STATUSES = ("scheduled", "running", "success", "error", "timeout")
RUNNER_STATUSES = ("running", "success", "timeout")

TASK_OPEN = (
    "(\"LastStatus\" IS NULL OR (\"LastStatus\" IN ('error', 'timeout')"
    ' AND "TaskRunsFailed" < "MaxRetries"))'
)
RUN_SCHEDULED = "\"Status\" = 'scheduled'"
RUN_RUNNING = "\"Status\" = 'running'"
RUN_OPEN = "\"Status\" IN ('scheduled', 'running')"
RUNNER_RUNNING = "\"Status\" = 'running'"


def _status(name: str, values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def _partial(predicate: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(predicate), "sqlite_where": sa.text(predicate)}


def upgrade() -> None:
    op.create_table(
        "TaskQueue",
        sa.Column("Id", ID, autoincrement=True, nullable=False),
        sa.Column("TaskHandlerClass", sa.String(255), nullable=False),
        sa.Column("TaskData", JSON_DOCUMENT, nullable=False),
        sa.Column("ScheduledOn", TIMESTAMP, nullable=False),
        sa.Column("QueuedOn", TIMESTAMP, nullable=False),
        sa.Column("QueuedById", sa.String(255), nullable=True),
        sa.Column("LastStatus", _status("last_status", RUN_STATUSES), nullable=True),
        sa.Column("MaxRetries", sa.Integer(), nullable=False),
        sa.Column("TaskRunsFailed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint('"MaxRetries" >= 1', name=op.f("ck_TaskQueue_max_retries_positive")),
        sa.CheckConstraint(
            '"TaskRunsFailed" >= 0', name=op.f("ck_TaskQueue_task_runs_failed_not_negative")
        ),
        sa.PrimaryKeyConstraint("Id", name=op.f("pk_TaskQueue")),
    )
    op.create_index("ix_TaskQueue_due", "TaskQueue", ["ScheduledOn"], **_partial(TASK_OPEN))

    op.create_table(
        "TaskRunners",
        sa.Column("Id", ID, autoincrement=True, nullable=False),
        sa.Column("ProcessId", sa.Integer(), nullable=False),
        sa.Column("StartedOn", TIMESTAMP, nullable=False),
        sa.Column("FinishedOn", TIMESTAMP, nullable=True),
        sa.Column("Status", _status("status", RUNNER_STATUSES), nullable=False),
        sa.Column("Hostname", sa.String(255), nullable=False),
        sa.Column("ProcessCreateTime", sa.Double(), nullable=True),
        sa.Column("HeartbeatOn", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("Id", name=op.f("pk_TaskRunners")),
    )
    op.create_index(
        "ix_TaskRunners_running", "TaskRunners", ["Hostname"], **_partial(RUNNER_RUNNING)
    )

    op.create_table(
        "TaskRuns",
        sa.Column("Id", ID, autoincrement=True, nullable=False),
        sa.Column("TaskQueueId", ID, nullable=False),
        sa.Column("StartedOn", TIMESTAMP, nullable=True),
        sa.Column("PercentsCompleted", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("FinishedOn", TIMESTAMP, nullable=True),
        sa.Column("Results", JSON_DOCUMENT, nullable=True),
        sa.Column("Status", _status("status", RUN_STATUSES), nullable=False),
        sa.Column("StandardOutput", sa.Text(), nullable=True),
        sa.Column("ErrorOutput", sa.Text(), nullable=True),
        sa.Column("ErrorCode", sa.String(255), nullable=True),
        sa.Column("ErrorMessage", sa.Text(), nullable=True),
        sa.Column("TaskRunnerId", ID, nullable=True),
        sa.CheckConstraint(
            '"PercentsCompleted" >= 0 AND "PercentsCompleted" <= 100',
            name=op.f("ck_TaskRuns_percents_completed_range"),
        ),
        sa.ForeignKeyConstraint(
            ["TaskQueueId"],
            ["TaskQueue.Id"],
            name=op.f("fk_TaskRuns_TaskQueueId_TaskQueue"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["TaskRunnerId"],
            ["TaskRunners.Id"],
            name=op.f("fk_TaskRuns_TaskRunnerId_TaskRunners"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("Id", name=op.f("pk_TaskRuns")),
    )
    op.create_index("ix_TaskRuns_TaskQueueId_Id", "TaskRuns", ["TaskQueueId", "Id"])
    op.create_index("ix_TaskRuns_scheduled", "TaskRuns", ["Id"], **_partial(RUN_SCHEDULED))
    op.create_index(
        "uq_TaskRuns_one_open_run_per_task",
        "TaskRuns",
        ["TaskQueueId"],
        unique=True,
        **_partial(RUN_OPEN),
    )
    op.create_index(
        "ix_TaskRuns_running_by_runner", "TaskRuns", ["TaskRunnerId"], **_partial(RUN_RUNNING)
    )


def downgrade() -> None:
    op.drop_table("TaskRuns")
    op.drop_table("TaskRunners")
    op.drop_table("TaskQueue")
