"""``celery-taskq db``: the database schema (Alembic only here, out of runners' memory)."""

from __future__ import annotations

import click

from celery_taskq.cli.invocation import CliContext, pass_context


@click.group("db")
def db_group() -> None:
    """Manage the database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_context
def db_upgrade(context: CliContext, revision: str) -> None:
    """Create or upgrade the tables with Alembic (in TASKQ_DB_SCHEMA on PostgreSQL, if set).

    The revision is kept in taskq_alembic_version, so an app's own Alembic alembic_version
    beside it is never touched; celery_taskq's revision in an old alembic_version of its own
    is moved there first.
    """
    from celery_taskq.core.storage import (
        migrate,  # Alembic only here: it stays out of runners' memory
    )

    url, schema = context.settings.database_url, context.settings.db_schema
    carried_over = migrate.upgrade_database(url, revision, schema=schema)
    if carried_over is not None:
        click.echo(
            f"revision {carried_over} moved from {migrate.OLD_VERSION_TABLE} "
            f"to {migrate.VERSION_TABLE}"
        )
    in_schema = f" (schema {schema})" if schema else ""
    click.echo(f"database at revision {migrate.current_revision(url, schema=schema)}{in_schema}")
