"""Schema management through Alembic: the only way celery_taskq creates or changes tables."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

MIGRATIONS_LOCATION = "celery_taskq:migrations"


def alembic_config(database_url: str | URL) -> Config:
    """An Alembic configuration for the package's migrations against ``database_url``."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_LOCATION)
    url = (
        database_url
        if isinstance(database_url, str)
        else database_url.render_as_string(hide_password=False)
    )
    config.attributes["database_url"] = url
    return config


def upgrade_database(database_url: str | URL, revision: str = "head") -> None:
    """Bring the schema at ``database_url`` up to ``revision`` (default: the newest)."""
    command.upgrade(alembic_config(database_url), revision)


def current_revision(database_url: str | URL) -> str | None:
    """The revision the database is at, or ``None`` for an empty database."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
