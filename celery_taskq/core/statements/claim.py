"""The claim: a runner takes the next ``scheduled`` run in one atomic statement.

The order is highest ``Priority`` first, then oldest first (FIFO), among the runs of the queues
the runner serves (:class:`ClaimScope`). Two runners never get the same run (DESIGN §3.5): on
PostgreSQL the subquery picking the run says ``FOR UPDATE SKIP LOCKED``; on SQLite the claim
runs inside the ``BEGIN IMMEDIATE`` transaction that holds the database's single write lock
(see :mod:`celery_taskq.core.storage.database`). On PostgreSQL a plain success can be recorded
and the next run claimed in one autocommitted statement (:func:`finish_success_and_claim`).

With limits (``ClaimScope.limited``) the claim also skips runs whose queue or handler has no
room left and counts the run it takes in ``TaskqLimits`` in the same statement; see
:mod:`celery_taskq.core.statements.limits` for why that is race-free.
"""

# ruff: noqa: S608 - the SQL is built from constant fragments only; every value is bound
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Connection,
    Integer,
    String,
    TextClause,
    bindparam,
    column,
    text,
)
from sqlalchemy.sql.selectable import TextualSelect

from celery_taskq.core.models import JsonDocument, UTCDateTime
from celery_taskq.core.statements import limits
from celery_taskq.core.storage.driver import DriverStatement

if TYPE_CHECKING:
    from celery_taskq.core.storage.database import Database


@dataclass(frozen=True)
class ClaimScope:
    """What a runner may claim: the queues it serves, and whether limits apply."""

    queues: tuple[str, ...] | None = None
    """The queues served; ``None`` serves every queue."""
    limited: bool = False
    """Concurrency or rate limits are declared: claims check and count them."""


EVERY_QUEUE = ClaimScope()
"""A runner serving every queue, without limits: the claim of a plain installation."""


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
    reservation_lost: bool = False
    """A reserved run whose earlier reserving runner ended without recording it (it may be
    what killed that runner): the fast mode marks it ``running`` before it starts, so that
    another crash counts as a failed attempt and its retries stay bounded."""


def claim_next_run(
    connection: Connection, runner_id: int, now: datetime, scope: ClaimScope = EVERY_QUEUE
) -> ClaimedRun | None:
    """Move the next ``scheduled`` run of ``scope`` to ``running`` for ``runner_id``, atomically.

    The run is picked and updated by one statement: ``UPDATE … WHERE Id = (SELECT … ORDER BY
    Priority DESC, Id LIMIT 1) RETURNING``. PostgreSQL adds ``FOR UPDATE SKIP LOCKED`` to the
    subquery so concurrent runners skip each other's rows, and in the same statement sets
    the task's ``LastStatus`` to ``running`` and returns the task's handler, data and
    checkpoint (and, with limits, counts the run against them). SQLite runs the claim inside
    the ``BEGIN IMMEDIATE`` transaction, which holds the database's single write lock, then
    counts it, rolls the task up and reads its input there. The roll-up is exact, not a
    shortcut: a task's open run is always its newest one.
    """
    values = _values(connection, runner_id, now, scope)
    if connection.dialect.name == "postgresql":
        row = _pg_claim(_filter(scope), scope.limited).first(connection, values)
        if row is None:
            return None
        return ClaimedRun(row[0], row[1], row[2], row[3], row[4])
    claimed = connection.execute(_sqlite_claim(_filter(scope), scope.limited), values).first()
    if claimed is None:
        return None
    if scope.limited:
        limits.count_claimed(connection, claimed[0], now)
    connection.execute(_SQLITE_TASK_RUNNING, {"task_queue_id": claimed[1]})
    task = connection.execute(_RUN_INPUT, {"task_queue_id": claimed[1]}).first()
    if task is None:
        return ClaimedRun(claimed[0], claimed[1])
    return ClaimedRun(claimed[0], claimed[1], task[0], task[1], task[2])


def finish_success_and_claim(
    database: Database, values: dict[str, Any], scope: ClaimScope = EVERY_QUEUE
) -> tuple[bool, ClaimedRun | None] | None:
    """Record a plain success and claim the next run in one autocommitted statement.

    PostgreSQL without limits only (``None`` otherwise: the caller uses a transaction, which
    also gives the finished run's slot back). ``values`` are ``run_id``, ``runner_id``,
    ``now``, ``standard_output``, ``error_output``, ``results`` and ``percents_completed``.
    Returns whether the outcome was recorded and the claimed run. One round trip instead of
    four (BEGIN, record, claim, COMMIT); the statement is atomic, so the outcome and the claim
    land together or not at all, as in a transaction.
    """
    if database.dialect != "postgresql" or scope.limited:
        return None
    statement = _pg_finish_success_and_claim(_filter(scope))
    with database.autocommit() as connection:
        row = statement.one(connection, {**values, **_queue_values(scope, postgresql=True)})
    recorded = bool(row[0])
    if row[1] is None:
        return recorded, None
    return recorded, ClaimedRun(row[1], row[2], row[3], row[4], row[5])


def _filter(scope: ClaimScope) -> str:
    """Which queue filter the claim needs: none, one queue, or a list."""
    if scope.queues is None:
        return _EVERY
    return _ONE if len(scope.queues) == 1 else _LIST


def _queue_values(scope: ClaimScope, *, postgresql: bool) -> dict[str, Any]:
    if scope.queues is None:
        return {}
    if len(scope.queues) == 1:
        return {"queue": scope.queues[0]}
    return {"queues": list(scope.queues) if postgresql else json.dumps(list(scope.queues))}


def _values(
    connection: Connection, runner_id: int, now: datetime, scope: ClaimScope
) -> dict[str, Any]:
    values: dict[str, Any] = {"now": now, "runner_id": runner_id}
    if scope.limited:
        values["epoch"] = int(now.timestamp())
    values.update(_queue_values(scope, postgresql=connection.dialect.name == "postgresql"))
    return values


# The statements below repeat ``models.RUN_SCHEDULED_SQL`` word for word: SQLite uses the
# partial index ix_TaskRuns_scheduled only when a query repeats the index's predicate.
_ORDER = 'ORDER BY "Priority" DESC, "Id" LIMIT 1'
_LIMITED_ORDER = 'ORDER BY "TaskRuns"."Priority" DESC, "TaskRuns"."Id" LIMIT 1'
_EVERY, _ONE, _LIST = "every", "one", "list"
_UNRESERVED = '"TaskRunnerId" IS NULL'
"""A scheduled run no runner holds: every claim skips the runs a batched claim reserved
(:mod:`celery_taskq.core.statements.reserve`)."""
# One queue is an equality on the index's last column, checked on the index entries while the
# index keeps its order; PostgreSQL checks a list (= ANY) only on the rows fetched.
_PG_QUEUE_FILTERS = {
    _EVERY: "",
    _ONE: ' AND "TaskRuns"."Queue" = :queue',
    _LIST: ' AND "TaskRuns"."Queue" = ANY(:queues)',
}
_SQLITE_QUEUE_FILTERS = {
    _EVERY: "",
    _ONE: ' AND "TaskRuns"."Queue" = :queue',
    _LIST: ' AND "TaskRuns"."Queue" IN (SELECT value FROM json_each(:queues))',
}
_RUNNER_IS_LIVE = """EXISTS (
    SELECT 1 FROM "TaskRunners"
    WHERE "TaskRunners"."Id" = :runner_id AND "TaskRunners"."Status" = 'running'
)"""
# A run its reserving runner left unrecorded carries RESERVATION_LOST_CODE while it waits;
# once started, it is a run like any other.
_START = """UPDATE "TaskRuns" SET "Status" = 'running', "StartedOn" = :now,
    "TaskRunnerId" = :runner_id, "ErrorCode" = NULL"""
_TYPED_BINDS = (
    bindparam("now", type_=UTCDateTime()),
    bindparam("runner_id", type_=Integer()),
)
_INPUT_COLUMNS = (
    column("TaskHandlerClass", String()),
    column("TaskData", JsonDocument),
    column("Checkpoint", JsonDocument),
)
_PG_TASK_AND_INPUT = """, task AS (
    UPDATE "TaskQueue" SET "LastStatus" = 'running' FROM claimed
    WHERE "TaskQueue"."Id" = claimed."TaskQueueId"
    RETURNING "TaskQueue"."Id", "TaskQueue"."TaskHandlerClass", "TaskQueue"."TaskData"
)"""
_PG_INPUT_COLUMNS = """claimed."Id", claimed."TaskQueueId", task."TaskHandlerClass",
    task."TaskData",
    (SELECT r."Checkpoint" FROM "TaskRuns" r
     WHERE r."TaskQueueId" = claimed."TaskQueueId" AND r."Checkpoint" IS NOT NULL
     ORDER BY r."Id" DESC LIMIT 1) AS "Checkpoint\""""


def _binds(statement: TextClause, queue_filter: str, limited: bool) -> TextClause:
    binds: list[BindParameter[Any]] = list(_TYPED_BINDS)
    if limited:
        binds.append(bindparam("epoch", type_=BigInteger()))
    if queue_filter == _ONE:
        binds.append(bindparam("queue", type_=String()))
    elif queue_filter == _LIST:
        binds.append(bindparam("queues"))
    return statement.bindparams(*binds)


def _pg_claimed_cte(queue_filter: str, limited: bool) -> str:
    """``claimed AS (…)``: the run taken, and (with limits) the ``candidate`` and ``counted``
    steps before it."""
    queues = _PG_QUEUE_FILTERS[queue_filter]
    if not limited:
        return f"""claimed AS (
            {_START}
            WHERE "Id" = (
                SELECT "Id" FROM "TaskRuns" WHERE "Status" = 'scheduled' AND {_UNRESERVED}{queues}
                {_ORDER} FOR UPDATE SKIP LOCKED
            ) AND "Status" = 'scheduled' AND {_UNRESERVED}
                AND {_RUNNER_IS_LIVE}
            RETURNING "Id", "TaskQueueId"
        )"""
    return f"""candidate AS (
            SELECT "TaskRuns"."Id", {limits.PG_LIMIT_NAMES} FROM "TaskRuns"
            JOIN "TaskQueue" q ON q."Id" = "TaskRuns"."TaskQueueId"
            WHERE "Status" = 'scheduled' AND {_UNRESERVED}{queues}
                AND NOT EXISTS ({limits.FULL_LIMIT})
            {_LIMITED_ORDER} FOR UPDATE OF "TaskRuns" SKIP LOCKED
        ), {limits.PG_COUNTED_CTE}, claimed AS (
            {_START}
            WHERE "Id" = (SELECT "Id" FROM candidate) AND "Status" = 'scheduled' AND {_UNRESERVED}
                AND {_RUNNER_IS_LIVE} AND {limits.PG_ALL_COUNTED}
            RETURNING "Id", "TaskQueueId"
        )"""


@cache
def _pg_claim(queue_filter: str, limited: bool) -> DriverStatement:
    """The claim on PostgreSQL: one statement claims, rolls up and reads the run's input."""
    sql = f"""WITH {_pg_claimed_cte(queue_filter, limited)}{_PG_TASK_AND_INPUT}
        SELECT {_PG_INPUT_COLUMNS}
        FROM claimed LEFT JOIN task ON task."Id" = claimed."TaskQueueId"
    """
    return DriverStatement(
        _binds(text(sql), queue_filter, limited).columns(
            column("Id", Integer()), column("TaskQueueId", Integer()), *_INPUT_COLUMNS
        )
    )


@cache
def _pg_finish_success_and_claim(queue_filter: str) -> DriverStatement:
    """A plain success recorded and rolled up, and the next run claimed, in one statement.

    The claimed run is never of the finished run's task (a task has one open run at a time),
    so no row is updated twice; nothing is claimed when the outcome was not recorded (the
    runner was timed out)."""
    queues = _PG_QUEUE_FILTERS[queue_filter]
    sql = f"""
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
            {_START}
            WHERE "Id" = (
                SELECT "Id" FROM "TaskRuns" WHERE "Status" = 'scheduled' AND {_UNRESERVED}{queues}
                {_ORDER} FOR UPDATE SKIP LOCKED
            ) AND "Status" = 'scheduled' AND {_UNRESERVED}
                AND EXISTS (SELECT 1 FROM finished)
            RETURNING "Id", "TaskQueueId"
        ){_PG_TASK_AND_INPUT}
        SELECT (SELECT count(*) FROM rolled_up) AS "Recorded", {_PG_INPUT_COLUMNS}
        FROM (SELECT 1) AS one
        LEFT JOIN claimed ON true LEFT JOIN task ON task."Id" = claimed."TaskQueueId"
    """
    statement = _binds(text(sql), queue_filter, limited=False).bindparams(
        bindparam("results", type_=JsonDocument)
    )
    return DriverStatement(
        statement.columns(
            column("Recorded", Integer()),
            column("Id", Integer()),
            column("TaskQueueId", Integer()),
            *_INPUT_COLUMNS,
        ),
        json_params=frozenset({"results"}),
    )


@cache
def _sqlite_claim(queue_filter: str, limited: bool) -> TextualSelect:
    """The claim on SQLite: inside the write lock, what it reads is what it writes over."""
    queues = _SQLITE_QUEUE_FILTERS[queue_filter]
    if limited:
        pick = f"""SELECT "TaskRuns"."Id" FROM "TaskRuns"
            JOIN "TaskQueue" q ON q."Id" = "TaskRuns"."TaskQueueId"
            WHERE "Status" = 'scheduled' AND {_UNRESERVED}{queues}
                AND NOT EXISTS ({limits.FULL_LIMIT})
            {_LIMITED_ORDER}"""
    else:
        pick = f"""SELECT "Id" FROM "TaskRuns"
            WHERE "Status" = 'scheduled' AND {_UNRESERVED}{queues} {_ORDER}"""
    sql = f"""
        {_START}
        WHERE "Id" = ({pick}) AND "Status" = 'scheduled' AND {_UNRESERVED}
                AND {_RUNNER_IS_LIVE}
        RETURNING "Id", "TaskQueueId"
    """
    return _binds(text(sql), queue_filter, limited).columns(
        column("Id", Integer()), column("TaskQueueId", Integer())
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
