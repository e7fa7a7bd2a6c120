"""Task title, unique keys for unfinished tasks, and cancellation.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OLD_TASK_OPEN = (
    "(\"LastStatus\" IS NULL OR (\"LastStatus\" IN ('error', 'timeout')"
    ' AND "TaskRunsFailed" < "MaxRetries"))'
    " AND \"TaskHandlerClass\" NOT LIKE 'celery:%'"
)
TASK_OPEN = OLD_TASK_OPEN + ' AND "CancelRequestedOn" IS NULL'
TASK_UNFINISHED = (
    '"UniqueKey" IS NOT NULL AND "CancelRequestedOn" IS NULL AND ("LastStatus" IS NULL'
    " OR \"LastStatus\" IN ('scheduled', 'running')"
    ' OR ("LastStatus" IN (\'error\', \'timeout\') AND "TaskRunsFailed" < "MaxRetries"))'
)


def _partial(predicate: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(predicate), "sqlite_where": sa.text(predicate)}


def upgrade() -> None:
    with op.batch_alter_table("TaskQueue") as batch:
        batch.add_column(sa.Column("Title", sa.String(255), nullable=True))
        batch.add_column(sa.Column("UniqueKey", sa.String(255), nullable=True))
        batch.add_column(sa.Column("CancelRequestedOn", sa.DateTime(timezone=True), nullable=True))
    op.drop_index("ix_TaskQueue_due", table_name="TaskQueue")
    op.create_index("ix_TaskQueue_due", "TaskQueue", ["ScheduledOn"], **_partial(TASK_OPEN))
    op.create_index(
        "uq_TaskQueue_UniqueKey_unfinished",
        "TaskQueue",
        ["UniqueKey"],
        unique=True,
        **_partial(TASK_UNFINISHED),
    )


def downgrade() -> None:
    op.drop_index("uq_TaskQueue_UniqueKey_unfinished", table_name="TaskQueue")
    op.drop_index("ix_TaskQueue_due", table_name="TaskQueue")
    op.create_index("ix_TaskQueue_due", "TaskQueue", ["ScheduledOn"], **_partial(OLD_TASK_OPEN))
    with op.batch_alter_table("TaskQueue") as batch:
        batch.drop_column("CancelRequestedOn")
        batch.drop_column("UniqueKey")
        batch.drop_column("Title")
