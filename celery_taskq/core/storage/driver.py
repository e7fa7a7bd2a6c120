"""Hot PostgreSQL statements run on psycopg's cursor, past SQLAlchemy's per-statement work.

A busy runner runs one statement per run and ``enqueue()`` one per task. For such a statement
SQLAlchemy's execution (compiled-cache lookup, bind and result processing, the execution
context) costs more client CPU than psycopg's whole round trip. A :class:`DriverStatement` is
compiled by SQLAlchemy once per dialect and then run on the DBAPI cursor of the same pooled
connection, inside whatever transaction (or autocommit) the connection is in.

What SQLAlchemy would do for these statements is done here: binds named as JSON are wrapped for
``JSONB`` (psycopg loads JSON results itself), and a driver error is raised as SQLAlchemy's
:class:`~sqlalchemy.exc.DBAPIError` subclass, with the connection invalidated when it was a
disconnect, so callers (``db.translate_errors``) handle it like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ClauseElement

from celery_taskq.core.exceptions import StorageError


class DriverStatement:
    """A PostgreSQL statement compiled once and run on the driver's cursor."""

    def __init__(self, statement: ClauseElement, *, json_params: frozenset[str] = frozenset()):
        self.statement = statement
        self.json_params = json_params
        self._compiled: dict[str, tuple[str, dict[str, Any]]] = {}

    def compiled(self, dialect: Dialect) -> tuple[str, dict[str, Any]]:
        """The SQL as the dialect's driver takes it (psycopg: ``%(name)s`` binds), and the
        values of the binds the statement carries itself (its literals)."""
        key = f"{dialect.name}+{dialect.driver}"
        compiled = self._compiled.get(key)
        if compiled is None:
            sql = self.statement.compile(dialect=dialect)
            compiled = self._compiled[key] = (str(sql), dict(sql.params))
        return compiled

    def one(self, connection: Connection, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """Run a statement that always returns a row (``INSERT … RETURNING``, a ``SELECT`` of
        aggregates) and return that row."""
        row = self.first(connection, params)
        if row is None:
            raise StorageError("the database returned no row where one was certain")
        return row

    def first(self, connection: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run the statement with ``params`` and return its first row, or ``None``."""
        # psycopg here, not at the top: SQLite processes never load it
        import psycopg
        from psycopg.types.json import Jsonb

        sql, literals = self.compiled(connection.dialect)
        bound = dict(literals)
        for name, value in params.items():
            bound[name] = Jsonb(value) if value is not None and name in self.json_params else value
        dbapi_connection = connection.connection
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(sql, bound)
            row: tuple[Any, ...] | None = cursor.fetchone()
            return row
        except psycopg.Error as exc:
            disconnected = connection.dialect.is_disconnect(
                exc,  # type: ignore[arg-type]  # psycopg's errors are the dialect's DBAPI errors
                dbapi_connection.dbapi_connection,
                cursor,
            )
            if disconnected:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                sql,
                bound,
                exc,
                psycopg.Error,
                connection_invalidated=disconnected,
                dialect=connection.dialect,
            ) from exc
        finally:
            cursor.close()
