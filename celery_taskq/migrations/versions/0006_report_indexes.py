"""Indexes for lists and reports at scale: filters by status, handler and queued-by, windows
on QueuedOn and FinishedOn, dead letters, and runs per runner.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# celery_taskq.core.models.TASK_EXHAUSTED_SQL as of this revision (a migration never changes).
TASK_EXHAUSTED_SQL = '"LastStatus" IN (\'error\', \'timeout\') AND "TaskRunsFailed" >= "MaxRetries"'


def upgrade() -> None:
    op.create_index("ix_TaskQueue_LastStatus_Id", "TaskQueue", ["LastStatus", "Id"])
    op.create_index("ix_TaskQueue_TaskHandlerClass_Id", "TaskQueue", ["TaskHandlerClass", "Id"])
    op.create_index("ix_TaskQueue_QueuedById_Id", "TaskQueue", ["QueuedById", "Id"])
    op.create_index("ix_TaskQueue_QueuedOn", "TaskQueue", ["QueuedOn"])
    op.create_index(
        "ix_TaskQueue_exhausted",
        "TaskQueue",
        ["Id"],
        postgresql_where=sa.text(TASK_EXHAUSTED_SQL),
        sqlite_where=sa.text(TASK_EXHAUSTED_SQL),
    )
    op.create_index("ix_TaskRuns_FinishedOn", "TaskRuns", ["FinishedOn"])
    op.create_index("ix_TaskRuns_TaskRunnerId", "TaskRuns", ["TaskRunnerId"])


def downgrade() -> None:
    op.drop_index("ix_TaskRuns_TaskRunnerId", table_name="TaskRuns")
    op.drop_index("ix_TaskRuns_FinishedOn", table_name="TaskRuns")
    op.drop_index("ix_TaskQueue_exhausted", table_name="TaskQueue")
    op.drop_index("ix_TaskQueue_QueuedOn", table_name="TaskQueue")
    op.drop_index("ix_TaskQueue_QueuedById_Id", table_name="TaskQueue")
    op.drop_index("ix_TaskQueue_TaskHandlerClass_Id", table_name="TaskQueue")
    op.drop_index("ix_TaskQueue_LastStatus_Id", table_name="TaskQueue")
