"""Six indexes leave out the rows whose column is NULL: handler tasks pay for none of them.

``CeleryTaskId``, ``CeleryRootId`` and ``CeleryGroupId`` of ``TaskQueue``, and ``CeleryTaskId``,
``FinishedOn`` and ``TaskRunnerId`` of ``TaskRuns``, are NULL on every handler task, and the
last two on every run not started or not finished. Every query these indexes serve compares the
column with a value (which implies ``IS NOT NULL``, so both databases still use them), and the
native audit's ``ON CONFLICT ("CeleryTaskId")`` names the predicate. An index entry less per
NULL column makes each enqueue, each run created by OnProcess and each claim cheaper: a row
written outside PostgreSQL's HOT path adds an entry to every index of its table.

The upgrade rebuilds the six indexes (each table is locked against writes while its indexes
are built: seconds per million rows).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# (index, table, column, unique)
INDEXES = (
    ("uq_TaskQueue_CeleryTaskId", "TaskQueue", "CeleryTaskId", True),
    ("ix_TaskQueue_CeleryRootId", "TaskQueue", "CeleryRootId", False),
    ("ix_TaskQueue_CeleryGroupId", "TaskQueue", "CeleryGroupId", False),
    ("ix_TaskRuns_CeleryTaskId", "TaskRuns", "CeleryTaskId", False),
    ("ix_TaskRuns_FinishedOn", "TaskRuns", "FinishedOn", False),
    ("ix_TaskRuns_TaskRunnerId", "TaskRuns", "TaskRunnerId", False),
)


def _not_null(name: str) -> sa.ColumnElement[bool]:
    return sa.column(name).is_not(None)


def upgrade() -> None:
    for name, table, column, unique in INDEXES:
        op.drop_index(name, table_name=table)
        op.create_index(
            name,
            table,
            [column],
            unique=unique,
            postgresql_where=_not_null(column),
            sqlite_where=_not_null(column),
        )


def downgrade() -> None:
    for name, table, column, unique in INDEXES:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, [column], unique=unique)
