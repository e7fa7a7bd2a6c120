"""Handler runs in named queues, with priorities and concurrency and rate limits.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_RUN_SCHEDULED = "\"Status\" = 'scheduled'"


def _queue_and_priority() -> list[sa.Column[object]]:
    return [
        sa.Column("Queue", sa.String(64), nullable=False, server_default=sa.text("'default'")),
        sa.Column("Priority", sa.Integer(), nullable=False, server_default=sa.text("0")),
    ]


def upgrade() -> None:
    with op.batch_alter_table("TaskQueue") as batch:
        for column in _queue_and_priority():
            batch.add_column(column)
        batch.create_check_constraint(
            "ck_TaskQueue_priority_range", sa.text('"Priority" BETWEEN -1000 AND 1000')
        )
    with op.batch_alter_table("TaskRuns") as batch:
        for column in _queue_and_priority():
            batch.add_column(column)
    op.drop_index("ix_TaskRuns_scheduled", table_name="TaskRuns")
    op.create_index(
        "ix_TaskRuns_scheduled",
        "TaskRuns",
        [sa.text('"Priority" DESC'), "Id", "Queue"],
        postgresql_where=sa.text(_RUN_SCHEDULED),
        sqlite_where=sa.text(_RUN_SCHEDULED),
    )
    op.create_table(
        "TaskqLimits",
        sa.Column("Name", sa.String(320), nullable=False),
        sa.Column("MaxRunning", sa.Integer(), nullable=True),
        sa.Column("Running", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("RateCount", sa.Integer(), nullable=True),
        sa.Column("RatePeriod", sa.Integer(), nullable=True),
        sa.Column("Window", sa.BigInteger(), nullable=True),
        sa.Column("WindowCount", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("Name", name="pk_TaskqLimits"),
    )


def downgrade() -> None:
    op.drop_table("TaskqLimits")
    op.drop_index("ix_TaskRuns_scheduled", table_name="TaskRuns")
    op.create_index(
        "ix_TaskRuns_scheduled",
        "TaskRuns",
        ["Id"],
        postgresql_where=sa.text(_RUN_SCHEDULED),
        sqlite_where=sa.text(_RUN_SCHEDULED),
    )
    with op.batch_alter_table("TaskRuns") as batch:
        batch.drop_column("Priority")
        batch.drop_column("Queue")
    with op.batch_alter_table("TaskQueue") as batch:
        batch.drop_constraint("ck_TaskQueue_priority_range", type_="check")
        batch.drop_column("Priority")
        batch.drop_column("Queue")
