"""Search: a trigram index over the text the task list's search matches (PostgreSQL only).

The index needs the ``pg_trgm`` extension. ``CREATE EXTENSION IF NOT EXISTS pg_trgm`` is
allowed to a database owner since PostgreSQL 13 (a trusted extension); where it is refused,
or the extension is not installed on the server, the upgrade still succeeds without the
index and the search scans a bounded window of the newest tasks instead
(``celery_taskq/reports/search.py``). Both steps run in a savepoint so that a refusal leaves
the upgrade's transaction usable. SQLite gets nothing: its search always scans the window.

The index is not among the models (an expression index on one database only); the schema
comparison leaves it out by name (``celery_taskq/core/storage/migrate.py``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

logger = logging.getLogger(__name__)

SEARCH_INDEX = "ix_TaskQueue_search"

# Kept equal to celery_taskq.reports.search.SEARCH_TEXT_SQL: PostgreSQL uses an
# expression index only for the very expression the query repeats.
SEARCH_TEXT_SQL = (
    "(COALESCE(\"Title\", '') || ' ' || \"TaskHandlerClass\" || ' '"
    " || COALESCE(\"QueuedById\", '') || ' ' || COALESCE(\"CeleryTaskId\", '')"
    " || ' ' || COALESCE(CAST(\"TaskData\" AS TEXT), ''))"
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as exc:
        logger.warning(
            "pg_trgm could not be created (%s): the task search scans a bounded window",
            exc.orig,
            extra={"action": "search_index_skipped"},
        )
        return
    extension_schema = bind.execute(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'pg_trgm'"
        )
    ).scalar_one()
    quoted_schema = bind.dialect.identifier_preparer.quote_identifier(extension_schema)
    bind.execute(
        sa.text(
            f'CREATE INDEX "{SEARCH_INDEX}" ON "TaskQueue" USING gin '
            f"({SEARCH_TEXT_SQL} {quoted_schema}.gin_trgm_ops)"
        )
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f'DROP INDEX IF EXISTS "{SEARCH_INDEX}"')
