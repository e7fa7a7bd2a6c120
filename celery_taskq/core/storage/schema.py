"""The PostgreSQL schema that holds the tables (the ``db_schema`` setting).

With a schema set, every connection celery_taskq opens has its ``search_path`` set to that
schema alone, once, when the connection is made. Unqualified names then resolve there, which
reaches every statement the library runs: ORM and Core queries, the reports' SQL fragments,
``exec_driver_sql`` and the driver fast path (:mod:`celery_taskq.core.storage.driver`), which
is compiled once and never sees an execution option.

SQLAlchemy's ``schema_translate_map`` was the alternative. It rewrites only statements
SQLAlchemy compiles at execution time, so every raw statement would have to be written twice
and the driver fast path compiled per schema; the ``search_path`` costs one ``SET`` per pooled
connection and nothing per statement. Because it is a session setting, a connection pooler in
transaction mode (PgBouncer's ``pool_mode = transaction``) does not keep it: there, set it on
the role (``ALTER ROLE … SET search_path = …``) as well.

SQLite has no schemas: a non-empty ``db_schema`` is refused there.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Engine, event

from celery_taskq.core.exceptions import ConfigurationError

SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
"""A schema name celery_taskq accepts: a plain identifier PostgreSQL keeps whole (63 bytes)."""


def check_schema(backend: str, schema: str) -> str:
    """``schema`` if the database ``backend`` can hold the tables there; else a clear refusal.

    Empty means the connection's default schema, on every database.
    """
    if not schema:
        return schema
    if backend != "postgresql":
        raise ConfigurationError(
            f"db_schema {schema!r} (TASKQ_DB_SCHEMA, taskq_db_schema) is for PostgreSQL only: "
            f"{backend} has no schemas; leave it empty"
        )
    if not SCHEMA_NAME.fullmatch(schema) or schema.lower().startswith("pg_"):
        raise ConfigurationError(
            f"db_schema {schema!r} is not a schema name celery_taskq uses: write letters, "
            "digits and underscores (at most 63, not starting with a digit or pg_)"
        )
    return schema


def quoted(schema: str) -> str:
    """The schema name as a quoted SQL identifier (names are checked by :func:`check_schema`)."""
    return f'"{schema}"'


def search_path_statement(schema: str) -> str:
    """The statement that makes ``schema`` the only schema unqualified names resolve in."""
    return f"SET search_path TO {quoted(schema)}"


def install_search_path(engine: Engine, schema: str) -> None:
    """Set every new connection of ``engine`` to resolve unqualified names in ``schema``.

    Runs before SQLAlchemy's own first-connect work, so the dialect's default schema is
    ``schema`` too (reflection and Alembic's comparisons look there).
    """

    @event.listens_for(engine, "connect", insert=True)
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # In autocommit, so that no transaction is left open and a rollback cannot undo it.
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(search_path_statement(schema))
        finally:
            cursor.close()
            dbapi_connection.autocommit = autocommit
