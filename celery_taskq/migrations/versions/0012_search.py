"""Search: a trigram index over the text the task list's search matches (PostgreSQL only), and
a partial index for the status filter ``cancelled`` (both databases).

The trigram index needs the ``pg_trgm`` extension. ``CREATE EXTENSION IF NOT EXISTS pg_trgm``
is allowed to a database owner since PostgreSQL 13 (a trusted extension); where it is refused,
or the extension is not installed on the server, the upgrade still succeeds without the
index and the search scans a bounded window of the newest tasks instead
(``celery_taskq/reports/search.py``). The extension is created in a savepoint, so that a
refusal leaves the upgrade's transaction usable. SQLite gets no trigram index: its search
always scans the window.

The trigram index is not among the models (an expression index on one database only); the
schema comparison leaves it out by name (``celery_taskq/core/storage/migrate.py``). The
partial index is among the models.

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

# The operator class is named with the schema pg_trgm lives in, which need not be on the
# search path (an extension made before, elsewhere): PL/pgSQL looks it up and quotes it. An
# index of this name built beforehand (CREATE INDEX CONCURRENTLY, docs/operations.md) is kept.
CREATE_INDEX_SQL = f"""
DO $do$
DECLARE
    trgm_schema name;
BEGIN
    SELECT n.nspname INTO trgm_schema
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'pg_trgm';
    EXECUTE format(
        $sql$CREATE INDEX IF NOT EXISTS "{SEARCH_INDEX}" ON "TaskQueue"
        USING gin ({SEARCH_TEXT_SQL} %I.gin_trgm_ops)$sql$,
        trgm_schema
    );
END
$do$
"""  # noqa: S608 - built from this module's constants only


CANCELLED_SQL = '"CancelRequestedOn" IS NOT NULL'


def upgrade() -> None:
    # The status filter cancelled, on both databases (never-run is served by
    # ix_TaskQueue_LastStatus_Id: NULL or 'scheduled').
    op.create_index(
        "ix_TaskQueue_cancelled",
        "TaskQueue",
        ["Id"],
        postgresql_where=sa.text(CANCELLED_SQL),
        sqlite_where=sa.text(CANCELLED_SQL),
    )
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
    bind.execute(sa.text(CREATE_INDEX_SQL))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f'DROP INDEX IF EXISTS "{SEARCH_INDEX}"')
    op.drop_index("ix_TaskQueue_cancelled", table_name="TaskQueue")
