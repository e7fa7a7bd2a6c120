"""Batched claims: a runner reserves several runs in one statement and records them in groups.

A *reserved* run stays ``scheduled`` (its honest status: no handler runs it yet) with its
``TaskRunnerId`` set to the runner holding it; every claim skips reserved runs
(:mod:`celery_taskq.core.statements.claim`). The runner then executes its reserved runs one
after the other and records their outcomes together (:func:`finish_reserved_successes`), or
first marks one ``running`` when it outlives the group-commit window (:func:`start_reserved_run`).

Reservations are handed back, never failed: a runner's end (``runners.finish_runner``) and its
time-out (``runners.time_out_runners``, OnProcess's overseer step) set ``TaskRunnerId`` back to
``NULL`` (:func:`hand_back_orphaned_reservations`): the run is claimed again, no failure counted.
A time-out also marks the runs it hands back (``ErrorCode`` :data:`RESERVATION_LOST_CODE`): one
of them may be what killed the runner, so the next runner to reserve one marks it ``running``
before it starts it, and a task that kills every runner that runs it uses up its retries as in
the strict mode instead of being handed back for ever.

Every write is fenced like ``finish_run``: it touches a run only while the run is still held by
the writing runner (``TaskRunnerId``) and open, so a runner whose reservations were handed back
(the overseer timed it out) writes nothing.
"""

# ruff: noqa: S608 - the SQL is built from constant fragments only; every value is bound
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Integer, String, TextClause, bindparam, column, text
from sqlalchemy.sql.selectable import TextualSelect

from celery_taskq.core.models import RUN_RESERVED_SQL, RUNNER_RUNNING_SQL, JsonDocument, UTCDateTime
from celery_taskq.core.statements.claim import ClaimedRun, ClaimScope

MAX_RESERVATION = 1000
"""The most runs one reservation may take (the setting's upper bound)."""

RESERVATION_LOST_CODE = "reservation_lost"
"""``ErrorCode`` of a ``scheduled`` run handed back from a runner that timed out (died or hung)
while holding it reserved; cleared when the run starts."""


@dataclass(frozen=True)
class ReservedSuccess:
    """A plain success of a reserved run, waiting for its group commit."""

    run_id: int
    started_on: datetime
    finished_on: datetime
    standard_output: str
    error_output: str
    results: Any
    percents_completed: int


def reserve_runs(
    connection: Connection, runner_id: int, now: datetime, limit: int, scope: ClaimScope
) -> list[ClaimedRun]:
    """Reserve up to ``limit`` scheduled runs of ``scope`` for ``runner_id``, in claim order.

    Only a ``running`` runner reserves (a runner timed out meanwhile gets nothing), and only
    without limits (a reservation is not counted against them: a limited scope must claim one
    run at a time). PostgreSQL picks the runs ``FOR UPDATE SKIP LOCKED``, so concurrent runners
    never reserve the same run; SQLite does it under its write lock. Returns the runs with what
    they start from (handler, data, latest checkpoint).
    """
    if scope.limited:
        raise ValueError("a scope with limits claims one run at a time; it cannot reserve")
    if not 1 <= limit <= MAX_RESERVATION:
        raise ValueError(f"a reservation takes from 1 to {MAX_RESERVATION} runs, not {limit}")
    values: dict[str, Any] = {"runner_id": runner_id, "limit": limit}
    queue_filter = "every"
    if scope.queues is not None:
        queue_filter = "list"
        values["queues"] = list(scope.queues)
    if connection.dialect.name == "postgresql":
        return [
            ClaimedRun(row[0], row[1], row[2], row[3], row[4], row[5] == RESERVATION_LOST_CODE)
            for row in connection.execute(_pg_reserve(queue_filter), values)
        ]
    rows = connection.execute(_sqlite_reserve(queue_filter), values).all()
    if not rows:
        return []
    inputs = {
        int(row[0]): (row[1], row[2], row[3])
        for row in connection.execute(_RESERVED_INPUT, {"task_ids": [row[1] for row in rows]})
    }
    reserved = sorted(rows, key=lambda row: (-int(row[2]), int(row[0])))
    claimed: list[ClaimedRun] = []
    for run_id, task_id, _priority, code in reserved:
        handler, data, checkpoint = inputs.get(int(task_id), (None, None, None))
        claimed.append(
            ClaimedRun(
                int(run_id),
                int(task_id),
                handler,
                data,
                checkpoint,
                reservation_lost=code == RESERVATION_LOST_CODE,
            )
        )
    return claimed


def start_reserved_run(
    connection: Connection, run_id: int, runner_id: int, started_on: datetime
) -> bool:
    """Mark a reserved run ``running`` since ``started_on`` (its handler outlived the group
    window, or writes progress); ``False`` if the run is no longer this runner's to start."""
    task_id = connection.execute(
        _START_RESERVED, {"run_id": run_id, "runner_id": runner_id, "started_on": started_on}
    ).scalar()
    if task_id is None:
        return False
    connection.execute(_TASK_RUNNING, {"task_id": task_id})
    return True


def finish_reserved_successes(
    connection: Connection, runner_id: int, successes: Sequence[ReservedSuccess]
) -> list[int]:
    """Record plain successes of runs this runner holds (reserved, or started by
    :func:`start_reserved_run`), and roll their tasks up; return the ids recorded.

    A run no longer this runner's (handed back, timed out, cancelled) is left as it is.
    """
    if not successes:
        return []
    if connection.dialect.name == "postgresql":
        return [
            int(run_id)
            for run_id in connection.execute(
                _PG_FINISH_RESERVED,
                {
                    "runner_id": runner_id,
                    "run_ids": [success.run_id for success in successes],
                    "started": [success.started_on for success in successes],
                    "finished": [success.finished_on for success in successes],
                    "stdout": [success.standard_output for success in successes],
                    "stderr": [success.error_output for success in successes],
                    "results": [
                        None if success.results is None else json.dumps(success.results)
                        for success in successes
                    ],
                    "percents": [success.percents_completed for success in successes],
                },
            ).scalars()
        ]
    recorded: list[int] = []
    task_ids: list[int] = []
    for success in successes:
        task_id = connection.execute(
            _FINISH_RESERVED,
            {
                "run_id": success.run_id,
                "runner_id": runner_id,
                "started_on": success.started_on,
                "now": success.finished_on,
                "standard_output": success.standard_output,
                "error_output": success.error_output,
                "results": success.results,
                "percents_completed": success.percents_completed,
            },
        ).scalar()
        if task_id is not None:
            recorded.append(success.run_id)
            task_ids.append(int(task_id))
    if task_ids:
        connection.execute(_TASKS_SUCCEEDED, {"task_ids": task_ids})
    return recorded


def hand_back_reservations(connection: Connection, runner_ids: Iterable[int]) -> list[int]:
    """Hand the runs reserved by ``runner_ids`` back to every runner; return their ids.

    The runs stay ``scheduled`` and no failure is counted: no handler ever started them as far
    as the database knows (see docs/reliability.md for the group-commit window)."""
    ids = sorted(set(runner_ids))
    if not ids:
        return []
    return [int(run_id) for run_id in connection.execute(_HAND_BACK, {"runner_ids": ids}).scalars()]


def hand_back_orphaned_reservations(connection: Connection, *, lost: bool = False) -> list[int]:
    """Hand back the reservations of every runner that is no longer ``running``; their ids.

    Called in the transaction that ends a runner (``runners.finish_runner``) or times runners
    out (``runners.time_out_runners``, the overseer's step of OnProcess, with ``lost``: the
    runs are marked :data:`RESERVATION_LOST_CODE`), after the runner rows changed: it takes
    their reservations, and any left by a runner row ended otherwise."""
    code = RESERVATION_LOST_CODE if lost else None
    return [
        int(run_id) for run_id in connection.execute(_HAND_BACK_ORPHANED, {"code": code}).scalars()
    ]


def reserved_runs(connection: Connection, runner_id: int) -> list[int]:
    """Ids of the runs ``runner_id`` holds reserved, oldest first."""
    return [
        int(run_id)
        for run_id in connection.execute(_RESERVED_OF_RUNNER, {"runner_id": runner_id}).scalars()
    ]


_RUNNER_IS_LIVE = f"""EXISTS (
    SELECT 1 FROM "TaskRunners"
    WHERE "TaskRunners"."Id" = :runner_id AND "TaskRunners".{RUNNER_RUNNING_SQL}
)"""
# The pick repeats the predicate of ix_TaskRuns_scheduled ("Status" = 'scheduled') word for
# word, so that SQLite uses that index too.
_QUEUE_FILTERS = {
    ("every", True): "",
    ("list", True): ' AND "Queue" = ANY(:queues)',
    ("every", False): "",
    ("list", False): ' AND "Queue" IN :queues',
}


def _pick(queues: str) -> str:
    return f"""SELECT "Id" FROM "TaskRuns"
            WHERE "Status" = 'scheduled' AND "TaskRunnerId" IS NULL{queues}
            ORDER BY "Priority" DESC, "Id" LIMIT :limit"""


_HELD = f""""Status" = 'scheduled' AND "TaskRunnerId" IS NULL AND {_RUNNER_IS_LIVE}"""


def _reserve_binds(statement: TextClause, queue_filter: str, postgresql: bool) -> TextClause:
    statement = statement.bindparams(
        bindparam("runner_id", type_=Integer()), bindparam("limit", type_=Integer())
    )
    if queue_filter == "list":
        statement = statement.bindparams(bindparam("queues", expanding=not postgresql))
    return statement


@cache
def _pg_reserve(queue_filter: str) -> TextualSelect:
    """Reserve and read what the runs start from, in one statement.

    The pick is materialised: as a subquery of ``IN``, PostgreSQL may scan it again for each
    row updated, and the rows already reserved fail the recheck, letting more in past LIMIT.
    The picked ids are then found by primary key, as an array (a join may scan every scheduled
    run once per picked one)."""
    pick = _pick(_QUEUE_FILTERS[(queue_filter, True)])
    sql = f"""
        WITH picked AS MATERIALIZED ({pick} FOR UPDATE SKIP LOCKED), reserved AS (
            UPDATE "TaskRuns" SET "TaskRunnerId" = :runner_id
            WHERE "TaskRuns"."Id" = ANY(ARRAY(SELECT "Id" FROM picked)) AND "TaskRuns".{_HELD}
            RETURNING "TaskRuns"."Id", "TaskRuns"."TaskQueueId", "TaskRuns"."Priority",
                "TaskRuns"."ErrorCode"
        )
        SELECT reserved."Id", reserved."TaskQueueId", q."TaskHandlerClass", q."TaskData",
            (SELECT r."Checkpoint" FROM "TaskRuns" r
             WHERE r."TaskQueueId" = reserved."TaskQueueId" AND r."Checkpoint" IS NOT NULL
             ORDER BY r."Id" DESC LIMIT 1) AS "Checkpoint", reserved."ErrorCode"
        FROM reserved LEFT JOIN "TaskQueue" q ON q."Id" = reserved."TaskQueueId"
        ORDER BY reserved."Priority" DESC, reserved."Id"
    """
    return _reserve_binds(text(sql), queue_filter, postgresql=True).columns(
        column("Id", Integer()),
        column("TaskQueueId", Integer()),
        column("TaskHandlerClass", String()),
        column("TaskData", JsonDocument),
        column("Checkpoint", JsonDocument),
        column("ErrorCode", String()),
    )


@cache
def _sqlite_reserve(queue_filter: str) -> TextualSelect:
    """Reserve under SQLite's write lock (the input is read by a second statement)."""
    pick = _pick(_QUEUE_FILTERS[(queue_filter, False)])
    sql = f"""
        UPDATE "TaskRuns" SET "TaskRunnerId" = :runner_id
        WHERE "Id" IN ({pick}) AND {_HELD}
        RETURNING "Id", "TaskQueueId", "Priority", "ErrorCode"
    """
    return _reserve_binds(text(sql), queue_filter, postgresql=False).columns(
        column("Id", Integer()),
        column("TaskQueueId", Integer()),
        column("Priority", Integer()),
        column("ErrorCode", String()),
    )


_RESERVED_INPUT = (
    text(
        """
        SELECT q."Id", q."TaskHandlerClass", q."TaskData",
            (SELECT r."Checkpoint" FROM "TaskRuns" r
             WHERE r."TaskQueueId" = q."Id" AND r."Checkpoint" IS NOT NULL
             ORDER BY r."Id" DESC LIMIT 1) AS "Checkpoint"
        FROM "TaskQueue" q WHERE q."Id" IN :task_ids
        """
    )
    .bindparams(bindparam("task_ids", expanding=True))
    .columns(
        column("Id", Integer()),
        column("TaskHandlerClass", String()),
        column("TaskData", JsonDocument),
        column("Checkpoint", JsonDocument),
    )
)
_HELD_BY_RUNNER = """"Id" = :run_id AND "TaskRunnerId" = :runner_id
    AND "Status" IN ('scheduled', 'running')"""
_START_RESERVED = text(
    f"""UPDATE "TaskRuns" SET "Status" = 'running', "StartedOn" = :started_on,
        "ErrorCode" = NULL
    WHERE {_HELD_BY_RUNNER} RETURNING "TaskQueueId\""""
).bindparams(
    bindparam("run_id", type_=Integer()),
    bindparam("runner_id", type_=Integer()),
    bindparam("started_on", type_=UTCDateTime()),
)
_TASK_RUNNING = text("""UPDATE "TaskQueue" SET "LastStatus" = 'running' WHERE "Id" = :task_id""")
_FINISH_RESERVED = text(
    f"""UPDATE "TaskRuns" SET "Status" = 'success', "StartedOn" = COALESCE("StartedOn",
        :started_on), "FinishedOn" = :now, "StandardOutput" = :standard_output,
        "ErrorOutput" = :error_output, "Results" = :results, "ErrorCode" = NULL,
        "ErrorMessage" = NULL, "PercentsCompleted" = :percents_completed
    WHERE {_HELD_BY_RUNNER} RETURNING "TaskQueueId\""""
).bindparams(
    bindparam("run_id", type_=Integer()),
    bindparam("runner_id", type_=Integer()),
    bindparam("started_on", type_=UTCDateTime()),
    bindparam("now", type_=UTCDateTime()),
    bindparam("results", type_=JsonDocument),
)
# One statement for the whole group on PostgreSQL: the outcomes travel as arrays.
_PG_FINISH_RESERVED = text(
    """
    WITH done AS (
        SELECT * FROM unnest(CAST(:run_ids AS bigint[]), CAST(:started AS timestamptz[]),
            CAST(:finished AS timestamptz[]), CAST(:stdout AS text[]), CAST(:stderr AS text[]),
            CAST(:results AS text[]), CAST(:percents AS integer[]))
            AS d(id, started, finished, stdout, stderr, results, percent)
    ), finished AS (
        UPDATE "TaskRuns" SET "Status" = 'success',
            "StartedOn" = COALESCE("TaskRuns"."StartedOn", done.started),
            "FinishedOn" = done.finished, "StandardOutput" = done.stdout,
            "ErrorOutput" = done.stderr, "Results" = CAST(done.results AS jsonb),
            "ErrorCode" = NULL, "ErrorMessage" = NULL, "PercentsCompleted" = done.percent
        FROM done WHERE "TaskRuns"."Id" = done.id AND "TaskRuns"."TaskRunnerId" = :runner_id
            AND "TaskRuns"."Status" IN ('scheduled', 'running')
        RETURNING "TaskRuns"."Id", "TaskRuns"."TaskQueueId"
    ), rolled_up AS (
        UPDATE "TaskQueue" SET "LastStatus" = 'success', "TaskRunsFailed" = 0 FROM finished
        WHERE "TaskQueue"."Id" = finished."TaskQueueId"
    )
    SELECT "Id" FROM finished ORDER BY "Id"
    """
).bindparams(bindparam("runner_id", type_=Integer()))
# The finished run was its task's newest (a task has one open run at a time): the roll-up is
# exact without recounting, as in runs.finish_run.
_TASKS_SUCCEEDED = text(
    """UPDATE "TaskQueue" SET "LastStatus" = 'success', "TaskRunsFailed" = 0
    WHERE "Id" IN :task_ids"""
).bindparams(bindparam("task_ids", expanding=True))
_HAND_BACK = text(
    f"""UPDATE "TaskRuns" SET "TaskRunnerId" = NULL
    WHERE {RUN_RESERVED_SQL} AND "TaskRunnerId" IN :runner_ids RETURNING "Id\""""
).bindparams(bindparam("runner_ids", expanding=True))
_HAND_BACK_ORPHANED = text(
    f"""UPDATE "TaskRuns" SET "TaskRunnerId" = NULL,
        "ErrorCode" = COALESCE(CAST(:code AS VARCHAR(255)), "ErrorCode")
    WHERE {RUN_RESERVED_SQL} AND NOT EXISTS (
        SELECT 1 FROM "TaskRunners" WHERE "TaskRunners"."Id" = "TaskRuns"."TaskRunnerId"
            AND "TaskRunners".{RUNNER_RUNNING_SQL}
    ) RETURNING "Id\""""
)
_RESERVED_OF_RUNNER = text(
    f"""SELECT "Id" FROM "TaskRuns" WHERE {RUN_RESERVED_SQL} AND "TaskRunnerId" = :runner_id
    ORDER BY "Id\""""
)
