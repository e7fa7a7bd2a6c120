"""Batched claims: a partial index over reserved runs (``scheduled`` with a ``TaskRunnerId``).

A runner's batched claim holds runs it has not started yet under its runner id while they stay
``scheduled``. The index finds them by runner: when the runner ends or is timed out, and when
OnProcess hands back the reservations of runners that are no longer running.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

RESERVED_SQL = '"Status" = \'scheduled\' AND "TaskRunnerId" IS NOT NULL'


def upgrade() -> None:
    op.create_index(
        "ix_TaskRuns_reserved",
        "TaskRuns",
        ["TaskRunnerId"],
        postgresql_where=sa.text(RESERVED_SQL),
        sqlite_where=sa.text(RESERVED_SQL),
    )


def downgrade() -> None:
    op.drop_index("ix_TaskRuns_reserved", table_name="TaskRuns")
