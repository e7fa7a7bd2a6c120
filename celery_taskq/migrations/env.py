"""Alembic environment: runs the package's migrations against the configured database.

All migrations of one upgrade run in one transaction that holds the database's migration
lock (see :mod:`celery_taskq.core.storage.migrate`): Alembic finds the connection already in a
transaction and neither commits nor begins one of its own. The revision lives in
``taskq_alembic_version`` (in the ``db_schema`` schema when one is set); an old
``alembic_version`` of celery_taskq's is carried over to it first, in the same transaction.
"""

from __future__ import annotations

from alembic import context

from celery_taskq.core.storage.migrate import (
    carry_over_version_table,
    locked_migration_transaction,
    version_table_options,
)
from celery_taskq.core.tables import Base

target_metadata = Base.metadata


def run_migrations() -> None:
    """Run migrations online against ``config.attributes['database_url']``."""
    url = context.config.attributes.get("database_url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database URL given to the migrations")
    schema = context.config.attributes.get("db_schema") or ""
    with locked_migration_transaction(url, schema) as connection:
        context.config.attributes["carried_over"] = carry_over_version_table(connection, schema)
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            transaction_per_migration=False,
            **version_table_options(schema),
        )
        context.run_migrations()


run_migrations()
