"""A run's checkpoint: where a resumable task's next run goes on from.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("TaskRuns") as batch:
        batch.add_column(sa.Column("Checkpoint", JSON_DOCUMENT, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("TaskRuns") as batch:
        batch.drop_column("Checkpoint")
