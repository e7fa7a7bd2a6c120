"""Alembic environment: runs the package's migrations against the configured database.

All migrations of one upgrade run in one transaction that holds the database's migration
lock (see :mod:`celery_taskq.core.storage.migrate`): Alembic finds the connection already in a
transaction and neither commits nor begins one of its own.
"""

from __future__ import annotations

from alembic import context

from celery_taskq.core.models import Base
from celery_taskq.core.storage.migrate import locked_migration_transaction

target_metadata = Base.metadata


def run_migrations() -> None:
    """Run migrations online against ``config.attributes['database_url']``."""
    url = context.config.attributes.get("database_url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database URL given to the migrations")
    with locked_migration_transaction(url) as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            transaction_per_migration=False,
        )
        context.run_migrations()


run_migrations()
