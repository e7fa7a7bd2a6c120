"""Celery columns (worker hostname, Celery task id) and the beat tick table.

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


def upgrade() -> None:
    with op.batch_alter_table("TaskRunners") as batch:
        batch.add_column(sa.Column("WorkerHostname", sa.String(255), nullable=True))
    with op.batch_alter_table("TaskRuns") as batch:
        batch.add_column(sa.Column("CeleryTaskId", sa.String(255), nullable=True))
    op.create_table(
        "TaskqBeatTicks",
        sa.Column("Event", sa.String(64), nullable=False),
        sa.Column("Slot", sa.BigInteger(), nullable=False),
        sa.Column("TickedOn", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("Event", "Slot", name=op.f("pk_TaskqBeatTicks")),
    )


def downgrade() -> None:
    op.drop_table("TaskqBeatTicks")
    with op.batch_alter_table("TaskRuns") as batch:
        batch.drop_column("CeleryTaskId")
    with op.batch_alter_table("TaskRunners") as batch:
        batch.drop_column("WorkerHostname")
