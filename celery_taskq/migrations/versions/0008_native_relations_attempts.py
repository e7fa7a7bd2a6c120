"""The native Celery audit: one TaskQueue row per Celery task id, its relations, and attempts.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_NATIVE_NEVER_STARTED = '"LastStatus" IS NULL AND "TaskHandlerClass" LIKE \'celery:%\''


def upgrade() -> None:
    with op.batch_alter_table("TaskQueue") as batch:
        batch.add_column(sa.Column("CeleryTaskId", sa.String(255), nullable=True))
        batch.add_column(sa.Column("CeleryParentId", sa.String(255), nullable=True))
        batch.add_column(sa.Column("CeleryRootId", sa.String(255), nullable=True))
        batch.add_column(sa.Column("CeleryGroupId", sa.String(255), nullable=True))
        batch.add_column(sa.Column("CeleryChordId", sa.String(255), nullable=True))
        batch.add_column(
            sa.Column(
                "ResentFromId", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch.create_foreign_key(
            "fk_TaskQueue_ResentFromId_TaskQueue",
            "TaskQueue",
            ["ResentFromId"],
            ["Id"],
            ondelete="SET NULL",
        )
    op.create_index("uq_TaskQueue_CeleryTaskId", "TaskQueue", ["CeleryTaskId"], unique=True)
    op.create_index("ix_TaskQueue_CeleryRootId", "TaskQueue", ["CeleryRootId"])
    op.create_index("ix_TaskQueue_CeleryGroupId", "TaskQueue", ["CeleryGroupId"])
    op.create_index(
        "ix_TaskQueue_native_never_started",
        "TaskQueue",
        ["ScheduledOn"],
        postgresql_where=sa.text(_NATIVE_NEVER_STARTED),
        sqlite_where=sa.text(_NATIVE_NEVER_STARTED),
    )
    with op.batch_alter_table("TaskRuns") as batch:
        batch.add_column(sa.Column("Attempt", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column(
                "Eager",
                sa.Boolean(name="ck_TaskRuns_eager_bool", create_constraint=False),
                nullable=False,
                server_default=sa.text("false"),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("TaskRuns") as batch:
        batch.drop_column("Eager")
        batch.drop_column("Attempt")
    op.drop_index("ix_TaskQueue_native_never_started", table_name="TaskQueue")
    op.drop_index("ix_TaskQueue_CeleryGroupId", table_name="TaskQueue")
    op.drop_index("ix_TaskQueue_CeleryRootId", table_name="TaskQueue")
    op.drop_index("uq_TaskQueue_CeleryTaskId", table_name="TaskQueue")
    with op.batch_alter_table("TaskQueue") as batch:
        batch.drop_constraint("fk_TaskQueue_ResentFromId_TaskQueue", type_="foreignkey")
        for column in (
            "ResentFromId",
            "CeleryChordId",
            "CeleryGroupId",
            "CeleryRootId",
            "CeleryParentId",
            "CeleryTaskId",
        ):
            batch.drop_column(column)
