"""Progress details of a run: current step, number of steps, status text.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("TaskRuns") as batch:
        batch.add_column(sa.Column("ProgressStep", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("ProgressSteps", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("ProgressStatus", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("TaskRuns") as batch:
        batch.drop_column("ProgressStatus")
        batch.drop_column("ProgressSteps")
        batch.drop_column("ProgressStep")
