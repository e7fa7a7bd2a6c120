"""The Celery layer: worker hostname and runner role, Celery task ids, beat ticks.

Also excludes audited native Celery tasks (``celery:<name>``) from the due-task index, since
Celery, not OnProcess, delivers and retries them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD_TASK_OPEN = (
    "(\"LastStatus\" IS NULL OR (\"LastStatus\" IN ('error', 'timeout')"
    ' AND "TaskRunsFailed" < "MaxRetries"))'
)
TASK_OPEN = OLD_TASK_OPEN + " AND \"TaskHandlerClass\" NOT LIKE 'celery:%'"


def _due_index(predicate: str) -> None:
    op.create_index(
        "ix_TaskQueue_due",
        "TaskQueue",
        ["ScheduledOn"],
        postgresql_where=sa.text(predicate),
        sqlite_where=sa.text(predicate),
    )


def upgrade() -> None:
    with op.batch_alter_table("TaskRunners") as batch:
        batch.add_column(sa.Column("WorkerHostname", sa.String(255), nullable=True))
        batch.add_column(
            sa.Column(
                "Role",
                sa.Enum(
                    "runner",
                    "celery-worker",
                    name="role",
                    native_enum=False,
                    create_constraint=True,
                    length=16,
                ),
                server_default=sa.text("'runner'"),
                nullable=False,
            )
        )
    with op.batch_alter_table("TaskRuns") as batch:
        batch.add_column(sa.Column("CeleryTaskId", sa.String(255), nullable=True))
    op.create_index("ix_TaskRuns_CeleryTaskId", "TaskRuns", ["CeleryTaskId"])
    op.drop_index("ix_TaskQueue_due", table_name="TaskQueue")
    _due_index(TASK_OPEN)
    op.create_table(
        "TaskqBeatTicks",
        sa.Column("Event", sa.String(64), nullable=False),
        sa.Column("Slot", sa.BigInteger(), nullable=False),
        sa.Column("TickedOn", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("Event", "Slot", name=op.f("pk_TaskqBeatTicks")),
    )


def downgrade() -> None:
    op.drop_table("TaskqBeatTicks")
    op.drop_index("ix_TaskQueue_due", table_name="TaskQueue")
    _due_index(OLD_TASK_OPEN)
    op.drop_index("ix_TaskRuns_CeleryTaskId", table_name="TaskRuns")
    with op.batch_alter_table("TaskRuns") as batch:
        batch.drop_column("CeleryTaskId")
    with op.batch_alter_table("TaskRunners") as batch:
        batch.drop_column("Role")
        batch.drop_column("WorkerHostname")
