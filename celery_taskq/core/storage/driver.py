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

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ClauseElement

from celery_taskq.core.exceptions import StorageError

_LINE_BREAK = re.compile(r"\s*\n\s*")
"""A line break and the indentation around it (never inside a SQL literal here)."""

_PYFORMAT_BIND = re.compile(r"%\((\w+)\)s")
"""A bind as SQLAlchemy's psycopg dialect compiles it: ``%(name)s``."""


class DriverStatement:
    """A PostgreSQL statement compiled once and run on the driver's cursor."""

    def __init__(
        self,
        statement: ClauseElement,
        *,
        json_params: frozenset[str] = frozenset(),
        binary: bool = False,
    ):
        self.statement = statement
        self.json_params = json_params
        self.binary = binary
        """Bind every parameter in psycopg's binary format: for arrays, several times
        cheaper to send than the text format, whose escaping runs per element."""
        self._compiled: dict[str, tuple[str, dict[str, Any]]] = {}

    def compiled(self, dialect: Dialect) -> tuple[str, dict[str, Any]]:
        """The SQL as the dialect's driver takes it (psycopg: ``%(name)s`` binds), and the
        values of the binds the statement carries itself (its literals)."""
        key = f"{dialect.name}+{dialect.driver}"
        compiled = self._compiled.get(key)
        if compiled is None:
            sql = self.statement.compile(dialect=dialect)
            if "--" in str(sql):
                raise ValueError(
                    "a driver statement's SQL holds no -- comment (it goes as one line)"
                )
            # One line: psycopg caches its parse of a query only up to 4 kB of text.
            text = _LINE_BREAK.sub(" ", str(sql)).strip()
            if self.binary:
                text = _PYFORMAT_BIND.sub(r"%(\1)b", text)
            compiled = self._compiled[key] = (text, dict(sql.params))
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
        return self.firsts(connection, [params])[0]

    def firsts(
        self, connection: Connection, params: Sequence[Mapping[str, Any]]
    ) -> list[tuple[Any, ...] | None]:
        """Run the statement once for each of ``params``, in order (several as one
        ``executemany``, pipelined by psycopg: one round trip), and return each run's first
        row, or ``None`` (also for a statement that returns no rows)."""
        if not params:
            return []
        # psycopg here, not at the top: SQLite processes never load it
        import psycopg
        from psycopg.types.json import Jsonb

        sql, literals = self.compiled(connection.dialect)
        bound = [_bind(literals, one, self.json_params, Jsonb) for one in params]
        dbapi_connection = connection.connection
        cursor = cast("psycopg.Cursor[tuple[Any, ...]]", dbapi_connection.cursor())
        try:
            if len(bound) == 1:
                cursor.execute(sql, bound[0])
                return [cursor.fetchone() if cursor.description else None]
            cursor.executemany(sql, bound, returning=True)
            rows: list[tuple[Any, ...] | None] = []
            while True:
                rows.append(cursor.fetchone() if cursor.description else None)
                if not cursor.nextset():
                    return rows
        except psycopg.Error as exc:
            disconnected = connection.dialect.is_disconnect(
                exc,  # type: ignore[arg-type]  # psycopg's errors are the dialect's DBAPI errors
                dbapi_connection.dbapi_connection,
                cast(Any, cursor),
            )
            if disconnected:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                sql,
                bound[0] if len(bound) == 1 else bound,
                exc,
                psycopg.Error,
                connection_invalidated=disconnected,
                dialect=connection.dialect,
            ) from exc
        finally:
            cursor.close()


def _bind(
    literals: dict[str, Any],
    params: Mapping[str, Any],
    json_params: frozenset[str],
    jsonb: Callable[[Any], Any],
) -> dict[str, Any]:
    bound = dict(literals)
    for name, value in params.items():
        bound[name] = jsonb(value) if value is not None and name in json_params else value
    return bound
