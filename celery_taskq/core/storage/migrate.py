"""Schema management through Alembic: the only way celery_taskq creates or changes tables.

An upgrade is one transaction under one lock, on both databases:

- **Atomic.** Every migration of the upgrade runs in a single transaction, committed at the
  end (both databases have transactional DDL). A failure rolls the whole upgrade back: the
  database stays at the revision it had, with no half-made table, and a retry starts clean.
  On SQLite this needs explicit ``BEGIN``: pysqlite's own transaction handling never begins
  one before DDL, so each ``CREATE TABLE`` would commit by itself.
- **Serialised.** Concurrent upgrades of one database run one after the other: on SQLite the
  transaction is ``BEGIN EXCLUSIVE``, on PostgreSQL it takes ``pg_advisory_xact_lock`` before
  Alembic reads the current revision. The second upgrade then finds the first one's work and
  has nothing left to do. Either waits at most :data:`MIGRATION_LOCK_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, pool, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from celery_taskq.core.exceptions import ConfigurationError, TaskqError

MIGRATIONS_LOCATION = "celery_taskq:migrations"

MIGRATION_LOCK_TIMEOUT_SECONDS = 600.0
"""How long an upgrade waits for another upgrade (or any writer) of the same database."""

MIGRATION_LOCK_KEY = 0x7461736B716D6967
"""The PostgreSQL advisory lock key of schema upgrades (the bytes of ``taskqmig``)."""


class MigrationError(TaskqError):
    """The schema cannot be upgraded as asked; the database is left as it was."""


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
    """Bring the schema at ``database_url`` up to ``revision`` (default: the newest).

    Raises :class:`MigrationError` for an unknown revision, and for a migration the database
    refuses (then nothing of the upgrade is kept).
    """
    config = alembic_config(database_url)
    _check_revision(config, revision)
    try:
        command.upgrade(config, revision)
    except CommandError as exc:
        raise MigrationError(f"cannot upgrade to revision {revision!r}: {exc}") from exc
    except DBAPIError as exc:
        raise MigrationError(
            f"the upgrade to revision {revision!r} failed and was rolled back "
            f"(the database is still at revision {_revision_or_error(database_url)}): "
            f"{exc.orig}"
        ) from exc


def _check_revision(config: Config, revision: str) -> None:
    script = ScriptDirectory.from_config(config)
    try:
        known = script.get_revisions(revision)
    except CommandError:
        known = ()
    if revision != "base" and not known:
        names = [script.revision for script in script.walk_revisions()]
        raise MigrationError(
            f"unknown revision {revision!r}: use head or one of {', '.join(reversed(names))}"
        )


def _revision_or_error(database_url: str | URL) -> str:
    try:
        return current_revision(database_url) or "none (empty)"
    except Exception as exc:  # the report of a failure must not hide that failure
        return f"unknown ({exc})"


def current_revision(database_url: str | URL) -> str | None:
    """The revision the database is at, or ``None`` for an empty database."""
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


@contextmanager
def locked_migration_transaction(database_url: str) -> Iterator[Connection]:
    """A connection in one transaction that holds the database's migration lock; committed
    when the block ends, rolled back if it raises. Used by the Alembic environment."""
    engine = _migration_engine(database_url)
    try:
        with engine.connect() as connection, connection.begin():
            if connection.dialect.name == "postgresql":
                timeout = f"{int(MIGRATION_LOCK_TIMEOUT_SECONDS * 1000)}ms"
                connection.execute(
                    text("SELECT set_config('lock_timeout', :timeout, true)"), {"timeout": timeout}
                )
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            yield connection
    finally:
        engine.dispose()


def _migration_engine(database_url: str) -> Engine:
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise ConfigurationError(f"database URL {database_url!r} is not valid: {exc}") from exc
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigurationError(f"unsupported database {backend!r}: use sqlite or postgresql")
    if backend == "postgresql":
        return create_engine(url, poolclass=pool.NullPool)
    engine = create_engine(
        url, poolclass=pool.NullPool, connect_args={"timeout": MIGRATION_LOCK_TIMEOUT_SECONDS}
    )
    _install_exclusive_transactions(engine)
    return engine


def _install_exclusive_transactions(engine: Engine) -> None:
    # SQLAlchemy's recipe for pysqlite ("Serializable isolation / Savepoints / Transactional
    # DDL"): turn the driver's own transaction handling off and emit BEGIN ourselves.
    # Foreign keys stay off (SQLite's default): batch migrations drop and rename tables.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN EXCLUSIVE")
