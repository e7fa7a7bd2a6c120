"""Storage layer: engine and transaction lifecycle, dialect specifics, error translation.

Every state change runs in one :meth:`Database.transaction`, or, where one statement is the
whole change, in one autocommitted statement (:meth:`Database.autocommit`; PostgreSQL). On
SQLite each write transaction is ``BEGIN IMMEDIATE`` (the write lock is taken up front, so two
writers never deadlock on a lock upgrade) in WAL mode with ``synchronous=NORMAL``. On
PostgreSQL transactions run at READ COMMITTED and the claim uses ``FOR UPDATE SKIP LOCKED``.
Connections are pooled per process; a connection inherited through ``fork()`` is never used.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    String,
    bindparam,
    column,
    create_engine,
    event,
    text,
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

from celery_taskq.decoding import read_json, read_sqlite_text
from celery_taskq.driver import DriverStatement
from celery_taskq.exceptions import (
    ConfigurationError,
    SchemaNotReadyError,
    StorageError,
    StorageRefusedError,
)
from celery_taskq.models import JsonDocument, UTCDateTime
from celery_taskq.stop_points import no_stop

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
"""How long a SQLite writer waits for the write lock before giving up."""

READ_ONLY = "taskq_read_only"
"""Execution option: on SQLite, begin a deferred (read) transaction instead of an immediate one."""


@dataclass(frozen=True)
class ClaimedRun:
    """A run that a runner has just moved from ``scheduled`` to ``running``.

    ``handler`` is ``None`` when the claim did not load what the run starts from (then the
    runner reads it); otherwise ``handler``, ``data`` and ``checkpoint`` are the task's handler
    path and data and the latest checkpoint of its runs, read in the claim's transaction.
    """

    run_id: int
    task_queue_id: int
    handler: str | None = None
    data: Any = None
    checkpoint: Any = None


class Database:
    """One engine per process, with the dialect's transaction rules installed."""

    def __init__(self, url: str | URL, *, echo: bool = False) -> None:
        try:
            self.url = make_url(url)
        except Exception as exc:
            raise ConfigurationError(f"database URL {str(url)!r} is not valid: {exc}") from exc
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
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                # File databases are pooled (SQLAlchemy's QueuePool): closing the last
                # connection to a WAL database checkpoints and deletes the WAL, which made a
                # connection per transaction cost milliseconds. Forks are handled below.
            )
            _install_sqlite_transaction_control(engine)
            _install_fork_guard(engine)
            return engine
        if self.url.get_backend_name() == "postgresql":
            engine = create_engine(self.url, echo=echo, json_deserializer=read_json)
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
        (:mod:`celery_taskq.stop_points`).
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
                    pool_reset_on_return=None,  # no transaction to roll back, ever
                    pool_size=2,
                    max_overflow=8,
                )
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

    def claim_next_run(
        self, connection: Connection, runner_id: int, now: datetime
    ) -> ClaimedRun | None:
        """Move the oldest ``scheduled`` run to ``running`` for ``runner_id``, atomically.

        The run is picked and updated by one statement: ``UPDATE … WHERE Id = (SELECT … LIMIT
        1) RETURNING``. PostgreSQL adds ``FOR UPDATE SKIP LOCKED`` to the subquery so concurrent
        runners skip each other's rows, and in the same statement sets the task's
        ``LastStatus`` to ``running`` and returns the task's handler, data and checkpoint.
        SQLite runs the claim inside the ``BEGIN IMMEDIATE`` transaction, which holds the
        database's single write lock, then rolls the task up and reads its input there.
        The roll-up is exact, not a shortcut: a task's open run is always its newest one.
        """
        values = {"now": now, "runner_id": runner_id}
        if self.dialect == "postgresql":
            row = _PG_CLAIM.first(connection, values)
            if row is None:
                return None
            return ClaimedRun(row[0], row[1], row[2], row[3], row[4])
        claimed = connection.execute(_SQLITE_CLAIM, values).first()
        if claimed is None:
            return None
        connection.execute(_SQLITE_TASK_RUNNING, {"task_queue_id": claimed[1]})
        task = connection.execute(_RUN_INPUT, {"task_queue_id": claimed[1]}).first()
        if task is None:
            return ClaimedRun(claimed[0], claimed[1])
        return ClaimedRun(claimed[0], claimed[1], task[0], task[1], task[2])

    def finish_success_and_claim(
        self, values: dict[str, Any]
    ) -> tuple[bool, ClaimedRun | None] | None:
        """Record a plain success and claim the next run in one autocommitted statement.

        PostgreSQL only (``None`` elsewhere: the caller uses a transaction). ``values`` are
        ``run_id``, ``runner_id``, ``now``, ``standard_output``, ``error_output``, ``results``
        and ``percents_completed``. Returns whether the outcome was recorded and the claimed
        run. One round trip instead of four (BEGIN, record, claim, COMMIT); the statement is
        atomic, so the outcome and the claim land together or not at all, as in a transaction.
        """
        if self.dialect != "postgresql":
            return None
        with self.autocommit() as connection:
            row = _PG_FINISH_SUCCESS_AND_CLAIM.one(connection, values)
        recorded = bool(row[0])
        if row[1] is None:
            return recorded, None
        return recorded, ClaimedRun(row[1], row[2], row[3], row[4], row[5])


# The statements below repeat ``models.RUN_SCHEDULED_SQL`` word for word: SQLite uses the
# partial index ix_TaskRuns_scheduled only when a query repeats the index's predicate.
_TYPED_BINDS = (
    bindparam("now", type_=UTCDateTime()),
    bindparam("runner_id", type_=Integer()),
)
_INPUT_COLUMNS = (
    column("TaskHandlerClass", String()),
    column("TaskData", JsonDocument),
    column("Checkpoint", JsonDocument),
)

_PG_CLAIM = DriverStatement(
    text(
        """
        WITH claimed AS (
            UPDATE "TaskRuns" SET "Status" = 'running', "StartedOn" = :now,
                "TaskRunnerId" = :runner_id
            WHERE "Id" = (
                SELECT "Id" FROM "TaskRuns" WHERE "Status" = 'scheduled'
                ORDER BY "Id" LIMIT 1 FOR UPDATE SKIP LOCKED
            ) AND "Status" = 'scheduled' AND EXISTS (
                SELECT 1 FROM "TaskRunners"
                WHERE "TaskRunners"."Id" = :runner_id AND "TaskRunners"."Status" = 'running'
            )
            RETURNING "Id", "TaskQueueId"
        ), task AS (
            UPDATE "TaskQueue" SET "LastStatus" = 'running' FROM claimed
            WHERE "TaskQueue"."Id" = claimed."TaskQueueId"
            RETURNING "TaskQueue"."Id", "TaskQueue"."TaskHandlerClass", "TaskQueue"."TaskData"
        )
        SELECT claimed."Id", claimed."TaskQueueId", task."TaskHandlerClass", task."TaskData",
            (SELECT r."Checkpoint" FROM "TaskRuns" r
             WHERE r."TaskQueueId" = claimed."TaskQueueId" AND r."Checkpoint" IS NOT NULL
             ORDER BY r."Id" DESC LIMIT 1) AS "Checkpoint"
        FROM claimed LEFT JOIN task ON task."Id" = claimed."TaskQueueId"
        """
    )
    .bindparams(*_TYPED_BINDS)
    .columns(column("Id", Integer()), column("TaskQueueId", Integer()), *_INPUT_COLUMNS)
)
"""The claim on PostgreSQL: one statement claims, rolls up and reads the run's input."""

_PG_FINISH_SUCCESS_AND_CLAIM = DriverStatement(
    text(
        """
        WITH finished AS (
            UPDATE "TaskRuns" SET "Status" = 'success', "FinishedOn" = :now,
                "StandardOutput" = :standard_output, "ErrorOutput" = :error_output,
                "Results" = :results, "ErrorCode" = NULL, "ErrorMessage" = NULL,
                "PercentsCompleted" = :percents_completed
            WHERE "Id" = :run_id AND "TaskRunnerId" = :runner_id AND "Status" = 'running'
            RETURNING "TaskQueueId"
        ), rolled_up AS (
            UPDATE "TaskQueue" SET "LastStatus" = 'success', "TaskRunsFailed" = 0 FROM finished
            WHERE "TaskQueue"."Id" = finished."TaskQueueId"
            RETURNING "TaskQueue"."Id"
        ), claimed AS (
            UPDATE "TaskRuns" SET "Status" = 'running', "StartedOn" = :now,
                "TaskRunnerId" = :runner_id
            WHERE "Id" = (
                SELECT "Id" FROM "TaskRuns" WHERE "Status" = 'scheduled'
                ORDER BY "Id" LIMIT 1 FOR UPDATE SKIP LOCKED
            ) AND "Status" = 'scheduled' AND EXISTS (SELECT 1 FROM finished)
            RETURNING "Id", "TaskQueueId"
        ), task AS (
            UPDATE "TaskQueue" SET "LastStatus" = 'running' FROM claimed
            WHERE "TaskQueue"."Id" = claimed."TaskQueueId"
            RETURNING "TaskQueue"."Id", "TaskQueue"."TaskHandlerClass", "TaskQueue"."TaskData"
        )
        SELECT (SELECT count(*) FROM rolled_up) AS "Recorded",
            claimed."Id", claimed."TaskQueueId", task."TaskHandlerClass", task."TaskData",
            (SELECT r."Checkpoint" FROM "TaskRuns" r
             WHERE r."TaskQueueId" = claimed."TaskQueueId" AND r."Checkpoint" IS NOT NULL
             ORDER BY r."Id" DESC LIMIT 1) AS "Checkpoint"
        FROM (SELECT 1) AS one
        LEFT JOIN claimed ON true LEFT JOIN task ON task."Id" = claimed."TaskQueueId"
        """
    )
    .bindparams(*_TYPED_BINDS, bindparam("results", type_=JsonDocument))
    .columns(
        column("Recorded", Integer()),
        column("Id", Integer()),
        column("TaskQueueId", Integer()),
        *_INPUT_COLUMNS,
    ),
    json_params=frozenset({"results"}),
)
"""A plain success recorded and rolled up, and the next run claimed, in one statement.

The claimed run is never of the finished run's task (a task has one open run at a time), so no
row is updated twice; nothing is claimed when the outcome was not recorded (the runner was
timed out)."""

_SQLITE_CLAIM = (
    text(
        """
        UPDATE "TaskRuns" SET "Status" = 'running', "StartedOn" = :now,
            "TaskRunnerId" = :runner_id
        WHERE "Id" = (
            SELECT "Id" FROM "TaskRuns" WHERE "Status" = 'scheduled' ORDER BY "Id" LIMIT 1
        ) AND "Status" = 'scheduled' AND EXISTS (
            SELECT 1 FROM "TaskRunners"
            WHERE "TaskRunners"."Id" = :runner_id AND "TaskRunners"."Status" = 'running'
        )
        RETURNING "Id", "TaskQueueId"
        """
    )
    .bindparams(*_TYPED_BINDS)
    .columns(column("Id", Integer()), column("TaskQueueId", Integer()))
)

_SQLITE_TASK_RUNNING = text(
    """UPDATE "TaskQueue" SET "LastStatus" = 'running' WHERE "Id" = :task_queue_id"""
)

_RUN_INPUT = text(
    """
    SELECT q."TaskHandlerClass", q."TaskData",
        (SELECT r."Checkpoint" FROM "TaskRuns" r
         WHERE r."TaskQueueId" = q."Id" AND r."Checkpoint" IS NOT NULL
         ORDER BY r."Id" DESC LIMIT 1) AS "Checkpoint"
    FROM "TaskQueue" q WHERE q."Id" = :task_queue_id
    """
).columns(*_INPUT_COLUMNS)


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
    except (IntegrityError, DataError) as exc:
        raise StorageRefusedError(f"the database refused the change: {exc.orig}") from exc
    except (OperationalError, ProgrammingError) as exc:
        if _is_missing_table(exc):
            raise SchemaNotReadyError() from exc
        raise StorageError(f"database error: {exc.orig}") from exc
    except DBAPIError as exc:
        raise StorageError(f"database error: {exc.orig}") from exc
