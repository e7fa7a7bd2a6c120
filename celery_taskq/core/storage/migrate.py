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

Beside an application's own schema:

- **Its own version table.** The revision is kept in :data:`VERSION_TABLE`, so an app's own
  Alembic ``alembic_version`` in the same database is never read or written.
- **Its own schema** (PostgreSQL, the ``db_schema`` setting): the upgrade creates the schema if
  it is missing and makes it the transaction's ``search_path``, so the tables and the version
  table are made there (see :mod:`celery_taskq.core.storage.schema`).
- **Carried over.** Earlier versions kept the revision in ``alembic_version``. That table is
  celery_taskq's when it holds exactly one row, the row is one of celery_taskq's revision ids,
  and the ``TaskQueue``, ``TaskRuns`` and ``TaskRunners`` tables are beside it; the upgrade
  then moves the revision to :data:`VERSION_TABLE` and drops the old table, in its own
  transaction. Any other ``alembic_version`` is an app's and is left exactly as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    inspect,
    pool,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.schema import CreateSchema, DropTable

from celery_taskq.core.exceptions import ConfigurationError, TaskqError
from celery_taskq.core.storage.database import require_driver
from celery_taskq.core.storage.schema import check_schema, install_search_path, quoted

MIGRATIONS_LOCATION = "celery_taskq:migrations"

VERSION_TABLE = "taskq_alembic_version"
"""The table holding the schema's revision (Alembic's ``version_table``)."""

OLD_VERSION_TABLE = "alembic_version"
"""Where earlier versions kept the revision, and where an app's own Alembic keeps its own."""

MARKER_TABLES = ("TaskQueue", "TaskRuns", "TaskRunners")
"""The tables beside which an old version table is celery_taskq's (revision 0001 made them)."""

MIGRATION_LOCK_TIMEOUT_SECONDS = 600.0
"""How long an upgrade waits for another upgrade (or any writer) of the same database."""

MIGRATION_LOCK_KEY = 0x7461736B716D6967
"""The PostgreSQL advisory lock key of schema upgrades (the bytes of ``taskqmig``)."""


class MigrationError(TaskqError):
    """The schema cannot be upgraded as asked; the database is left as it was."""


def alembic_config(database_url: str | URL, schema: str = "") -> Config:
    """An Alembic configuration for the package's migrations against ``database_url``, with
    the tables in ``schema`` (PostgreSQL; empty: the connection's default schema)."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_LOCATION)
    url = (
        database_url
        if isinstance(database_url, str)
        else database_url.render_as_string(hide_password=False)
    )
    config.attributes["database_url"] = url
    config.attributes["db_schema"] = schema
    return config


def version_table_options(schema: str = "") -> dict[str, Any]:
    """Alembic's options naming celery_taskq's version table (for ``context.configure``)."""
    return {"version_table": VERSION_TABLE, "version_table_schema": schema or None}


def upgrade_database(
    database_url: str | URL, revision: str = "head", *, schema: str = ""
) -> str | None:
    """Bring the schema at ``database_url`` up to ``revision`` (default: the newest), with the
    tables in ``schema`` (PostgreSQL only; empty: the connection's default schema).

    Returns the revision carried over from an old ``alembic_version`` table of celery_taskq's
    (see the module), or ``None``. Raises :class:`MigrationError` for an unknown revision, and
    for a migration the database refuses (then nothing of the upgrade is kept), and
    :class:`~celery_taskq.core.exceptions.ConfigurationError` for a URL or schema it cannot use.
    """
    check_schema(_url(database_url).get_backend_name(), schema)
    config = alembic_config(database_url, schema)
    _check_revision(config, revision)
    try:
        command.upgrade(config, revision)
    except CommandError as exc:
        raise MigrationError(f"cannot upgrade to revision {revision!r}: {exc}") from exc
    except DBAPIError as exc:
        raise MigrationError(
            f"the upgrade to revision {revision!r} failed and was rolled back "
            f"(the database is still at revision {_revision_or_error(database_url, schema)}): "
            f"{exc.orig}"
        ) from exc
    carried_over: str | None = config.attributes.get("carried_over")
    return carried_over


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


def _revision_or_error(database_url: str | URL, schema: str) -> str:
    try:
        return current_revision(database_url, schema=schema) or "none (empty)"
    except Exception as exc:  # the report of a failure must not hide that failure
        return f"unknown ({exc})"


def current_revision(database_url: str | URL, *, schema: str = "") -> str | None:
    """The revision the database is at, or ``None`` for a database without celery_taskq's
    tables. A database not upgraded since the revision lived in ``alembic_version`` is at
    the revision found there, if that table is celery_taskq's (see the module)."""
    check_schema(_url(database_url).get_backend_name(), schema)
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts=version_table_options(schema))
            return context.get_current_revision() or _old_revision(connection, schema)
    finally:
        engine.dispose()


def schema_differences(database_url: str | URL, *, schema: str = "") -> list[Any]:
    """What Alembic's autogenerate finds different between the database's celery_taskq tables
    and the models (empty when the migrations made exactly the models' tables). Tables that
    are not the models', an app's own or the version tables, are not differences."""
    from alembic.autogenerate import compare_metadata

    from celery_taskq.core.tables import Base

    url = _url(database_url)
    check_schema(url.get_backend_name(), schema)
    engine = create_engine(url, poolclass=pool.NullPool)
    if schema:
        install_search_path(engine, schema)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "include_name": _is_models_name,
                    **version_table_options(schema),
                },
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


UNMODELLED_INDEXES = frozenset({"ix_TaskQueue_search"})
"""Indexes a migration makes that the models do not declare: the search's trigram index exists
on PostgreSQL only, and only where ``pg_trgm`` could be created (revision 0012)."""


def _is_models_name(name: str | None, kind: str, _parents: Any) -> bool:
    from celery_taskq.core.tables import Base

    if kind == "index":
        return name not in UNMODELLED_INDEXES
    return kind != "table" or name in Base.metadata.tables


def carry_over_version_table(connection: Connection, schema: str = "") -> str | None:
    """Move celery_taskq's revision from an old ``alembic_version`` to :data:`VERSION_TABLE`.

    Runs in the upgrade's transaction, before Alembic reads the revision. Returns the revision
    moved, or ``None`` when there was nothing to move. Raises :class:`MigrationError` when the
    tables are there but no revision of theirs is recorded anywhere: the upgrade would
    otherwise try to create them again.
    """
    inspector = inspect(connection)
    if inspector.has_table(VERSION_TABLE, schema=schema or None):
        return None
    revision = _old_revision(connection, schema)
    if revision is None:
        if inspector.has_table(MARKER_TABLES[0], schema=schema or None):
            raise MigrationError(_unrecorded_tables_message(connection, schema))
        return None
    context = MigrationContext.configure(connection, opts=version_table_options(schema))
    context.stamp(_script_directory(), revision)
    connection.execute(DropTable(Table(OLD_VERSION_TABLE, MetaData(), schema=schema or None)))
    return revision


def _old_revision(connection: Connection, schema: str) -> str | None:
    """The revision in an old ``alembic_version`` that is celery_taskq's, else ``None``."""
    rows = _old_version_rows(connection, schema)
    if rows is None or len(rows) != 1 or rows[0] not in _known_revisions():
        return None
    inspector = inspect(connection)
    if not all(inspector.has_table(table, schema=schema or None) for table in MARKER_TABLES):
        return None
    return rows[0]


def _old_version_rows(connection: Connection, schema: str) -> list[str] | None:
    """The ``version_num`` values of an ``alembic_version`` table beside the tables, or
    ``None`` when there is no such table (or it has no ``version_num`` column)."""
    inspector = inspect(connection)
    if not inspector.has_table(OLD_VERSION_TABLE, schema=schema or None):
        return None
    columns = {
        column["name"] for column in inspector.get_columns(OLD_VERSION_TABLE, schema or None)
    }
    if "version_num" not in columns:
        return None
    old = Table(OLD_VERSION_TABLE, MetaData(), Column("version_num", String), schema=schema or None)
    return [str(value) for value in connection.execute(select(old.c.version_num)).scalars()]


def _unrecorded_tables_message(connection: Connection, schema: str) -> str:
    where = f"schema {schema!r}" if schema else "the database"
    rows = _old_version_rows(connection, schema)
    found = (
        f"no {OLD_VERSION_TABLE} table"
        if rows is None
        else f"{OLD_VERSION_TABLE} holds {', '.join(map(repr, rows)) or 'no row'}, "
        "not one celery_taskq revision alone"
    )
    return (
        f"{where} has a {MARKER_TABLES[0]} table but no celery_taskq revision is recorded: "
        f"no {VERSION_TABLE} table, and {found}; if the tables are celery_taskq's, record "
        f"their revision in {VERSION_TABLE} (docs/operations.md, sharing a database), "
        "otherwise give celery_taskq a database or schema of its own"
    )


def _script_directory() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_LOCATION)
    return ScriptDirectory.from_config(config)


def _known_revisions() -> set[str]:
    return {script.revision for script in _script_directory().walk_revisions()}


@contextmanager
def locked_migration_transaction(database_url: str, schema: str = "") -> Iterator[Connection]:
    """A connection in one transaction that holds the database's migration lock, with
    ``schema`` (created if missing) as its ``search_path``; committed when the block ends,
    rolled back if it raises. Used by the Alembic environment."""
    engine = _migration_engine(database_url, schema)
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
            if schema:
                _use_schema(connection, schema)
            yield connection
    finally:
        engine.dispose()


def _use_schema(connection: Connection, schema: str) -> None:
    """Create ``schema`` if it is missing, and make it the transaction's ``search_path``."""
    exists = connection.execute(
        text("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = :schema"), {"schema": schema}
    ).first()
    if exists is None:  # CREATE SCHEMA IF NOT EXISTS would need CREATE on the database even then
        connection.execute(CreateSchema(schema))
    connection.execute(
        text("SELECT set_config('search_path', :path, true)"), {"path": quoted(schema)}
    )


def _url(database_url: str | URL) -> URL:
    try:
        return make_url(database_url)
    except ArgumentError as exc:
        raise ConfigurationError(f"database URL {str(database_url)!r} is not valid: {exc}") from exc


def _migration_engine(database_url: str, schema: str) -> Engine:
    url = _url(database_url)
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigurationError(f"unsupported database {backend!r}: use sqlite or postgresql")
    check_schema(backend, schema)
    if backend == "postgresql":
        require_driver(url)
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
