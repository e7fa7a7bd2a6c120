"""Storage layer: engine and transaction lifecycle, dialect specifics, error translation.

Every state change runs in one :meth:`Database.transaction`. On SQLite each write transaction
is ``BEGIN IMMEDIATE`` (the write lock is taken up front, so two writers never deadlock on a
lock upgrade) in WAL mode with ``synchronous=NORMAL``. On PostgreSQL transactions run at READ
COMMITTED and the claim uses ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, select, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from celery_taskq.exceptions import ConfigurationError, SchemaNotReadyError, StorageError
from celery_taskq.models import RUN_SCHEDULED_SQL, RunStatus, TaskRun

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
"""How long a SQLite writer waits for the write lock before giving up."""

READ_ONLY = "taskq_read_only"
"""Execution option: on SQLite, begin a deferred (read) transaction instead of an immediate one."""


@dataclass(frozen=True)
class ClaimedRun:
    """A run that a runner has just moved from ``scheduled`` to ``running``."""

    run_id: int
    task_queue_id: int


class Database:
    """One engine per process, with the dialect's transaction rules installed."""

    def __init__(self, url: str | URL, *, echo: bool = False) -> None:
        try:
            self.url = make_url(url)
        except Exception as exc:
            raise ConfigurationError(f"database URL {str(url)!r} is not valid: {exc}") from exc
        self.engine = self._create_engine(echo)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def _create_engine(self, echo: bool) -> Engine:
        if self.url.get_backend_name() == "sqlite":
            engine = create_engine(
                self.url,
                echo=echo,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                # A file database gains nothing from pooling across forks and threads; a
                # fresh connection per transaction is cheap and never crosses a fork.
                poolclass=NullPool if self.url.database not in (None, "", ":memory:") else None,
            )
            _install_sqlite_transaction_control(engine)
            return engine
        if self.url.get_backend_name() == "postgresql":
            return create_engine(self.url, echo=echo, pool_pre_ping=True)
        raise ConfigurationError(
            f"unsupported database {self.url.get_backend_name()!r}: use sqlite or postgresql"
        )

    @contextmanager
    def transaction(self, *, read_only: bool = False) -> Iterator[Connection]:
        """Yield a connection inside one transaction, committed on success."""
        with translate_errors(), self.engine.connect() as connection:
            if read_only:
                connection = connection.execution_options(**{READ_ONLY: True})
            with connection.begin():
                yield connection

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """An ORM session inside one read-only transaction, for building snapshots."""
        with self.transaction(read_only=True) as connection, Session(bind=connection) as session:
            yield session

    def dispose_after_fork(self) -> None:
        """Drop connections inherited from a parent process without closing the parent's."""
        self.engine.dispose(close=False)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def claim_next_run(
        self, connection: Connection, runner_id: int, now: datetime
    ) -> ClaimedRun | None:
        """Move the oldest ``scheduled`` run to ``running`` for ``runner_id``, atomically.

        One statement on both databases: ``UPDATE … WHERE Id = (SELECT … LIMIT 1) RETURNING``.
        PostgreSQL adds ``FOR UPDATE SKIP LOCKED`` to the subquery so concurrent runners skip
        each other's rows; SQLite runs it inside the ``BEGIN IMMEDIATE`` transaction, which
        holds the database's single write lock.
        """
        oldest_scheduled = (
            select(TaskRun.id)
            .where(text(RUN_SCHEDULED_SQL))
            .order_by(TaskRun.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        claim = (
            update(TaskRun)
            .where(TaskRun.id == oldest_scheduled, text(RUN_SCHEDULED_SQL))
            .values(status=RunStatus.RUNNING, started_on=now, task_runner_id=runner_id)
            .returning(TaskRun.id, TaskRun.task_queue_id)
        )
        row = connection.execute(claim).first()
        return None if row is None else ClaimedRun(run_id=row[0], task_queue_id=row[1])


def _install_sqlite_transaction_control(engine: Engine) -> None:
    # pysqlite's own transaction handling begins lazily and never for SELECT; take control so
    # that BEGIN is explicit and write transactions lock up front.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
            if engine.url.database not in (None, "", ":memory:"):
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


_UNDEFINED_TABLE_SQLSTATE = "42P01"


def _is_missing_table(exc: DBAPIError) -> bool:
    if getattr(exc.orig, "sqlstate", None) == _UNDEFINED_TABLE_SQLSTATE:
        return True
    return "no such table" in str(exc.orig).lower()


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into :class:`~celery_taskq.exceptions.StorageError` subclasses."""
    try:
        yield
    except IntegrityError as exc:
        raise StorageError(f"the database refused the change: {exc.orig}") from exc
    except (OperationalError, ProgrammingError) as exc:
        if _is_missing_table(exc):
            raise SchemaNotReadyError() from exc
        raise StorageError(f"database error: {exc.orig}") from exc
    except DBAPIError as exc:
        raise StorageError(f"database error: {exc.orig}") from exc
