"""The claim: a runner takes the oldest ``scheduled`` run, FIFO, in one atomic statement.

Two runners never get the same run (DESIGN §3.5): on PostgreSQL the subquery picking the run
says ``FOR UPDATE SKIP LOCKED``; on SQLite the claim runs inside the ``BEGIN IMMEDIATE``
transaction that holds the database's single write lock (see
:mod:`celery_taskq.core.storage.database`). On PostgreSQL a plain success can be recorded and
the next run claimed in one autocommitted statement (:func:`finish_success_and_claim`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Integer, String, bindparam, column, text

from celery_taskq.core.models import JsonDocument, UTCDateTime
from celery_taskq.core.storage.driver import DriverStatement

if TYPE_CHECKING:
    from celery_taskq.core.storage.database import Database


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


def claim_next_run(connection: Connection, runner_id: int, now: datetime) -> ClaimedRun | None:
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
    if connection.dialect.name == "postgresql":
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
    database: Database, values: dict[str, Any]
) -> tuple[bool, ClaimedRun | None] | None:
    """Record a plain success and claim the next run in one autocommitted statement.

    PostgreSQL only (``None`` elsewhere: the caller uses a transaction). ``values`` are
    ``run_id``, ``runner_id``, ``now``, ``standard_output``, ``error_output``, ``results``
    and ``percents_completed``. Returns whether the outcome was recorded and the claimed
    run. One round trip instead of four (BEGIN, record, claim, COMMIT); the statement is
    atomic, so the outcome and the claim land together or not at all, as in a transaction.
    """
    if database.dialect != "postgresql":
        return None
    with database.autocommit() as connection:
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
