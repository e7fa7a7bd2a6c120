"""The database: engine and transaction lifecycle, dialect specifics, error translation.

Every state change runs in one :meth:`Database.transaction`, or, where one statement is the
whole change, in one autocommitted statement (:meth:`Database.autocommit`; PostgreSQL). On
SQLite each write transaction is ``BEGIN IMMEDIATE`` (the write lock is taken up front, so two
writers never deadlock on a lock upgrade) in WAL mode with ``synchronous=NORMAL``. On
PostgreSQL transactions run at READ COMMITTED and the claim uses ``FOR UPDATE SKIP LOCKED``
(:mod:`celery_taskq.core.statements.claim`). Connections are pooled per process; a connection
inherited through ``fork()`` is never used. With a schema (the ``db_schema`` setting; PostgreSQL
only), every connection resolves unqualified names in it (:mod:`celery_taskq.core.storage.schema`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.orm import Session

from celery_taskq.core.exceptions import (
    ConfigurationError,
    SchemaNotReadyError,
    StorageError,
    StorageRefusedError,
)
from celery_taskq.core.runner.stop_points import no_stop
from celery_taskq.core.storage.decoding import read_json, read_sqlite_text
from celery_taskq.core.storage.encoding import write_json
from celery_taskq.core.storage.schema import check_schema, install_search_path

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
"""How long a SQLite writer waits for the write lock before giving up."""

READ_ONLY = "taskq_read_only"
"""Execution option: on SQLite, begin a deferred (read) transaction instead of an immediate one."""


class Database:
    """One engine per process, with the dialect's transaction rules installed.

    ``schema`` is the PostgreSQL schema of the tables (empty: the connection's default); a
    non-empty one is refused on SQLite.
    """

    def __init__(self, url: str | URL, *, echo: bool = False, schema: str = "") -> None:
        try:
            self.url = make_url(url)
        except Exception as exc:
            raise ConfigurationError(f"database URL {str(url)!r} is not valid: {exc}") from exc
        self.schema = check_schema(self.url.get_backend_name(), schema)
        self.engine = self._create_engine(echo)
        self._echo = echo
        self._autocommit_engine: Engine | None = None
        self._autocommit_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def _create_engine(self, echo: bool) -> Engine:
        if self.url.get_backend_name() == "sqlite":
            engine = create_engine(
                self.url,
                echo=echo,
                json_deserializer=read_json,
                json_serializer=write_json,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                # File databases are pooled (SQLAlchemy's QueuePool): closing the last
                # connection to a WAL database checkpoints and deletes the WAL, which made a
                # connection per transaction cost milliseconds. Forks are handled below.
            )
            _install_sqlite_transaction_control(engine)
            _install_fork_guard(engine)
            return engine
        if self.url.get_backend_name() == "postgresql":
            require_driver(self.url)
            engine = create_engine(
                self.url, echo=echo, json_deserializer=read_json, json_serializer=write_json
            )
            if self.schema:
                install_search_path(engine, self.schema)
            _install_fork_guard(engine)  # first: a parent's connection is never pinged
            _install_idle_ping(engine)
            return engine
        raise ConfigurationError(
            f"unsupported database {self.url.get_backend_name()!r}: use sqlite or postgresql"
        )

    @contextmanager
    def transaction(self, *, read_only: bool = False) -> Iterator[Connection]:
        """Yield a connection inside one transaction, committed on success.

        A time limit's soft stop waits until the transaction has ended
        (:mod:`celery_taskq.core.runner.stop_points`).
        """
        with no_stop(), translate_errors(), self.engine.connect() as connection:
            if read_only:
                connection = connection.execution_options(**{READ_ONLY: True})
            with connection.begin():
                yield connection

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """Yield a connection whose every statement commits on its own (no BEGIN/COMMIT).

        For single statements that are atomic by themselves: it saves two round trips on
        PostgreSQL. On SQLite the statements run in one ordinary write transaction.
        """
        if self.dialect != "postgresql":  # SQLite: a write transaction, which costs no round trip
            with self.transaction() as connection:
                yield connection
            return
        with no_stop(), translate_errors(), self._autocommitting().connect() as connection:
            yield connection

    def _autocommitting(self) -> Engine:
        # A small pool of its own whose connections are in autocommit from the start: switching
        # a pooled connection's isolation level and back costs as much as a fast statement.
        with self._autocommit_lock:
            if self._autocommit_engine is None:
                engine = create_engine(
                    self.url,
                    echo=self._echo,
                    isolation_level="AUTOCOMMIT",
                    json_deserializer=read_json,
                    json_serializer=write_json,
                    pool_reset_on_return=None,  # no transaction to roll back, ever
                    pool_size=2,
                    max_overflow=8,
                )
                if self.schema:
                    install_search_path(engine, self.schema)
                _install_fork_guard(engine)
                _install_idle_ping(engine)
                self._autocommit_engine = engine
            return self._autocommit_engine

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """An ORM session inside one read-only transaction, for building snapshots."""
        with self.transaction(read_only=True) as connection, Session(bind=connection) as session:
            yield session

    def dispose_after_fork(self) -> None:
        """Drop connections inherited from a parent process without closing the parent's."""
        self.engine.dispose(close=False)
        if self._autocommit_engine is not None:
            self._autocommit_engine.dispose(close=False)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self._autocommit_engine is not None:
            self._autocommit_engine.dispose()


_OWNER_PID = "taskq_owner_pid"


def _install_fork_guard(engine: Engine) -> None:
    # A pooled connection inherited through fork() belongs to the parent: the child must
    # neither use it nor close it (closing an inherited SQLite connection can checkpoint the
    # parent's WAL). It is dropped from the child's pool unclosed and replaced.
    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info[_OWNER_PID] = os.getpid()

    @event.listens_for(engine, "checkout")
    def _on_checkout(_dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if record.info.get(_OWNER_PID, os.getpid()) != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise DisconnectionError("connection belongs to the parent process")


PING_AFTER_IDLE_SECONDS = 1.0
"""A pooled PostgreSQL connection unused for this long is pinged before it is handed out."""

_CHECKED_IN_AT = "taskq_checked_in_at"


def _install_idle_ping(engine: Engine) -> None:
    # SQLAlchemy's pool_pre_ping pings on every checkout: a round trip per transaction, a
    # sixth of a busy runner's time per run. A connection handed back moments ago is as good
    # as a pinged one, so only connections idle longer than PING_AFTER_IDLE_SECONDS are
    # pinged (a dead one is replaced, as with pool_pre_ping).
    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in_at = record.info.get(_CHECKED_IN_AT)
        if checked_in_at is not None and time.monotonic() - checked_in_at < PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc
        if not alive:
            raise DisconnectionError("pooled connection is dead")


def _install_sqlite_transaction_control(engine: Engine) -> None:
    # pysqlite's own transaction handling begins lazily and never for SELECT; take control so
    # that BEGIN is explicit and write transactions lock up front.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.text_factory = read_sqlite_text  # text that is not UTF-8 still reads
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
            if engine.url.database not in (None, "", ":memory:"):
                use_wal(cursor)
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


WAL_RETRY_PAUSE_SECONDS = 0.05
"""Pause between two tries of a connection's journal-mode pragmas that SQLite answered BUSY."""


def use_wal(cursor: Any, timeout: float = SQLITE_BUSY_TIMEOUT_SECONDS) -> None:
    """Put a SQLite database file in WAL mode, once: the mode is stored in the file, so a
    connection to a database in WAL mode only reads it.

    SQLite may answer BUSY to the journal-mode pragma without calling the busy handler (while
    another connection recovers the WAL index, as when many processes open the file at once);
    that is retried here for up to ``timeout`` seconds instead of failing the connection.
    """
    import sqlite3  # here: only SQLite connections need it

    deadline = time.monotonic() + timeout
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(WAL_RETRY_PAUSE_SECONDS)


_UNDEFINED_TABLE_SQLSTATE = "42P01"


def _is_missing_table(exc: DBAPIError) -> bool:
    if getattr(exc.orig, "sqlstate", None) == _UNDEFINED_TABLE_SQLSTATE:
        return True
    return "no such table" in str(exc.orig).lower()


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into :class:`~celery_taskq.core.exceptions.StorageError` subclasses."""
    try:
        yield
    except (IntegrityError, DataError) as exc:
        raise StorageRefusedError(f"the database refused the change: {exc.orig}") from exc
    except (OperationalError, ProgrammingError) as exc:
        if _is_missing_table(exc):
            raise SchemaNotReadyError() from exc
        raise StorageError(f"database error: {exc.orig}") from exc
    except DBAPIError as exc:
        raise StorageError(f"database error: {exc.orig}") from exc


POSTGRES_EXTRA = "pip install 'celery_taskq[postgres]'"
"""What installs the PostgreSQL driver (psycopg 3), which the base install leaves out."""


def require_driver(url: URL) -> None:
    """Refuse a PostgreSQL URL whose driver is not installed, in one line naming the extra."""
    if url.get_backend_name() != "postgresql":
        return
    try:
        url.get_dialect().import_dbapi()
    except ImportError as exc:
        advice = POSTGRES_EXTRA
        if url.get_driver_name() != "psycopg":
            advice += " and a postgresql+psycopg:// URL"
        raise ConfigurationError(
            f"a PostgreSQL database needs the postgres extra: {advice} ({exc})"
        ) from None
