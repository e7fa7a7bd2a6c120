"""Retention: what the pruning has deleted, and an index that keeps deleting tasks cheap.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

RESENT_FROM_SQL = '"ResentFromId" IS NOT NULL'


def upgrade() -> None:
    op.create_table(
        "TaskqPrunedRows",
        sa.Column("Kind", sa.String(32), nullable=False),
        sa.Column("RowsPruned", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("LastPrunedOn", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ResumeAfterId", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("Kind", name=op.f("pk_TaskqPrunedRows")),
    )
    op.create_index(
        "ix_TaskQueue_ResentFromId",
        "TaskQueue",
        ["ResentFromId"],
        postgresql_where=sa.text(RESENT_FROM_SQL),
        sqlite_where=sa.text(RESENT_FROM_SQL),
    )


def downgrade() -> None:
    op.drop_index("ix_TaskQueue_ResentFromId", table_name="TaskQueue")
    op.drop_table("TaskqPrunedRows")
