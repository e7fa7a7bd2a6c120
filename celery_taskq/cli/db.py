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
    """Create or upgrade the tables with Alembic."""
    from celery_taskq.core.storage import (
        migrate,  # Alembic only here: it stays out of runners' memory
    )

    migrate.upgrade_database(context.settings.database_url, revision)
    click.echo(f"database at revision {migrate.current_revision(context.settings.database_url)}")
