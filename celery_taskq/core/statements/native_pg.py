"""The native audit's hot statements on PostgreSQL, one round trip each, run on the driver.

An audited Celery task costs its worker one start and one end. Built with SQLAlchemy per call,
each cost milliseconds of client CPU (statement construction, cache key, compilation lookup);
here each is a constant :class:`~celery_taskq.core.storage.driver.DriverStatement`. They do
what :mod:`celery_taskq.core.statements.native_attempts` does on every database, and fall back
to it where they cannot (``None``): a start older than the task's newest attempt, an end over
a guessed close.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from celery_taskq.core.models import CELERY_TASK_ID_SET_SQL, RUN_OPEN_SQL
from celery_taskq.core.native_codes import NativeCode
from celery_taskq.core.statements import native
from celery_taskq.core.statements.native import NativeTask, attempts_allowed
from celery_taskq.core.storage.driver import DriverStatement
from celery_taskq.core.storage.encoding import write_json

_TASK_OF_MESSAGE = '(SELECT "Id" FROM "TaskQueue" WHERE "CeleryTaskId" = :celery_task_id)'
"""The id of the task row of the attempt's Celery task id (a scalar subquery)."""


def _closing_older(at: str, *, unless_newer: bool = False) -> str:
    """The ``closed`` CTE's UPDATE: the task's open attempts that started by ``at`` (a bind)
    closed as lost (the same attempt) or superseded; with ``unless_newer``, nothing when the
    statement's ``newer`` CTE found a newer attempt."""
    guard = " AND NOT EXISTS (SELECT 1 FROM newer)" if unless_newer else ""
    return f"""UPDATE "TaskRuns" SET "Status" = 'timeout', "FinishedOn" = {at},
                "ErrorCode" = CASE WHEN "Attempt" = :attempt THEN :lost ELSE :superseded END,
                "ErrorMessage" = CASE WHEN "Attempt" = :attempt
                    THEN :lost_message ELSE :superseded_message END
            WHERE "TaskQueueId" = {_TASK_OF_MESSAGE} AND {RUN_OPEN_SQL}
                AND ("StartedOn" IS NULL OR "StartedOn" <= {at}){guard}
            RETURNING 1"""  # noqa: S608 - constant SQL, values are bound


_TASK_COLUMNS = (
    '"TaskHandlerClass", "TaskData", "ScheduledOn", "QueuedOn", "QueuedById", "MaxRetries", '
    '"TaskRunsFailed", "LastStatus", "CeleryTaskId", "CeleryParentId", "CeleryRootId", '
    '"CeleryGroupId", "CeleryChordId"'
)
"""The columns a worker's upsert of the task row writes, in the order of its VALUES."""

_KEEP_RELATIONS = ", ".join(
    f'"{column}" = COALESCE("TaskQueue"."{column}", EXCLUDED."{column}")'
    for column in ("CeleryParentId", "CeleryRootId", "CeleryGroupId", "CeleryChordId")
)
"""The upsert fills in the relations the row lacks and keeps those it has."""

_FAILED_BEFORE = '"TaskQueue"."TaskRunsFailed" + (SELECT count(*) FROM closed)'
"""The task's failed attempts once the ``closed`` CTE's are counted (upsert of a known row)."""

_LATE_FAILURES = "(SELECT count(*) FROM closed) + CASE WHEN :succeeded THEN 0 ELSE 1 END"
"""Failures an attempt recorded after a newer, finished one adds to its task."""

_LATE_FAILED = (
    f'CASE WHEN "TaskQueue"."LastStatus" = \'success\' THEN "TaskQueue"."TaskRunsFailed"'
    f' ELSE "TaskQueue"."TaskRunsFailed" + {_LATE_FAILURES} END'
)
_LATE_MAX_RETRIES = (
    f'CASE WHEN "TaskQueue"."LastStatus" = \'success\' THEN "TaskQueue"."MaxRetries"'
    f' ELSE "TaskQueue"."MaxRetries" + {_LATE_FAILURES} END'
)
"""An attempt recorded after a newer attempt of its task finished (pool processes' writers
commit in their own order) is not the task's newest: it leaves ``LastStatus``, and adds its
failures to both ``TaskRunsFailed`` and ``MaxRetries``, so that a task the newer attempt left a
dead letter stays one, and one with retries left keeps them; after a success it changes
nothing."""

_CLOSE_OLDER_UNLESS_LATER = _closing_older(":now", unless_newer=True)
"""A start's ``closed`` CTE: the open attempts that started by now, unless an attempt of the
task started later (its ``newer`` CTE)."""

_CLOSE_OLDER_UNLESS_NEWER = _closing_older(":started_on", unless_newer=True)
"""A finished attempt's ``closed`` CTE: those that started by its start, unless a newer one
is open."""

_START = DriverStatement(
    text(
        f"""
        WITH newer AS (
            SELECT 1 FROM "TaskRuns"
            WHERE "TaskQueueId" = {_TASK_OF_MESSAGE} AND "StartedOn" > :now
            LIMIT 1
        ), closed AS ({_CLOSE_OLDER_UNLESS_LATER}
        ), task AS (
            INSERT INTO "TaskQueue" ({_TASK_COLUMNS}) VALUES (
                :task_handler_class, :task_data, :scheduled_on, :queued_on, :queued_by_id,
                COALESCE(CAST(:allowed AS INTEGER), (SELECT count(*) FROM closed) + 1),
                (SELECT count(*) FROM closed), 'running', :celery_task_id, :celery_parent_id,
                :celery_root_id, :celery_group_id, :celery_chord_id
            )
            ON CONFLICT ("CeleryTaskId") WHERE {CELERY_TASK_ID_SET_SQL} DO UPDATE SET
                "LastStatus" = 'running',
                "TaskRunsFailed" = {_FAILED_BEFORE},
                "MaxRetries" = COALESCE(CAST(:allowed AS INTEGER), {_FAILED_BEFORE} + 1),
                {_KEEP_RELATIONS}
            WHERE NOT EXISTS (SELECT 1 FROM newer)
            RETURNING "Id"
        )
        INSERT INTO "TaskRuns" (
            "TaskQueueId", "Status", "StartedOn", "CeleryTaskId", "TaskRunnerId", "Attempt", "Eager"
        )
        SELECT "Id", 'running', :now, :celery_task_id, CAST(:runner_id AS BIGINT), :attempt, :eager
        FROM task
        ON CONFLICT ("TaskQueueId") WHERE {RUN_OPEN_SQL} DO NOTHING
        RETURNING "Id"
        """  # noqa: S608 - constant SQL, values are bound
    ),
    json_params=frozenset({"task_data"}),
)


def start_attempt(
    connection: Connection,
    task: NativeTask,
    *,
    attempt: int,
    eager: bool,
    runner_id: int | None,
    started_on: datetime,
    lost_message: str,
    superseded_message: str,
) -> int | None:
    """Close the task's older open attempt, upsert its row and insert the ``running`` run, in
    one statement; the run's id, or ``None`` (nothing written) when an attempt of the task
    started later, open or finished: this start reached the database late."""
    row = _START.first(
        connection,
        {
            "now": started_on,
            "attempt": attempt,
            "lost": NativeCode.WORKER_LOST.value,
            "superseded": NativeCode.SUPERSEDED.value,
            "lost_message": lost_message,
            "superseded_message": superseded_message,
            **native.published_params(task),
            "allowed": attempts_allowed(task.max_retries),
            "runner_id": runner_id,
            "eager": eager,
        },
    )
    return None if row is None else int(row[0])


_END = DriverStatement(
    text(
        """
        WITH ended AS (
            UPDATE "TaskRuns" SET "Status" = :status, "FinishedOn" = :now,
                "ErrorCode" = :error_code, "ErrorMessage" = :error_message,
                "StandardOutput" = COALESCE(:standard_output, "StandardOutput"),
                "ErrorOutput" = COALESCE(:error_output, "ErrorOutput"),
                "Results" = :results,
                "PercentsCompleted" = COALESCE(CAST(:percents AS INTEGER), "PercentsCompleted")
            WHERE "Id" = :run_id AND "Status" = 'running'
            RETURNING "TaskQueueId"
        )
        UPDATE "TaskQueue" SET "LastStatus" = :status,
            "TaskRunsFailed" = CASE WHEN :succeeded THEN 0
                ELSE "TaskQueue"."TaskRunsFailed" + 1 END,
            "MaxRetries" = CASE WHEN :succeeded THEN "TaskQueue"."MaxRetries"
                WHEN :final THEN LEAST("TaskQueue"."MaxRetries", "TaskQueue"."TaskRunsFailed" + 1)
                ELSE GREATEST("TaskQueue"."MaxRetries", "TaskQueue"."TaskRunsFailed" + 2) END
        FROM ended WHERE "TaskQueue"."Id" = ended."TaskQueueId"
        RETURNING "TaskQueue"."Id"
        """
    ),
    json_params=frozenset({"results"}),
)


def end_attempt(
    connection: Connection, run_id: int, values: dict[str, Any], *, final: bool
) -> bool:
    """Write a ``running`` run's end and roll it up (the task's newest attempt) in one
    statement; ``False`` when the run is not ``running``. ``values`` are the run's columns
    as :func:`~celery_taskq.core.statements.native_attempts.end_attempt` sets them."""
    status = str(values["status"])
    row = _END.first(
        connection,
        {
            "run_id": run_id,
            "status": status,
            "now": values["finished_on"],
            "error_code": values["error_code"],
            "error_message": values["error_message"],
            "standard_output": values.get("standard_output"),
            "error_output": values.get("error_output"),
            "results": values["results"],
            "percents": values.get("percents_completed"),
            "succeeded": status == "success",
            "final": final,
        },
    )
    return row is not None


_COMPLETE = DriverStatement(
    text(
        f"""
        WITH newer AS (
            SELECT 1 FROM "TaskRuns"
            WHERE "TaskQueueId" = {_TASK_OF_MESSAGE} AND {RUN_OPEN_SQL}
                AND "StartedOn" > :started_on
            LIMIT 1
        ), later AS (
            SELECT 1 FROM "TaskRuns"
            WHERE "TaskQueueId" = {_TASK_OF_MESSAGE} AND NOT {RUN_OPEN_SQL}
                AND "StartedOn" > :started_on
            LIMIT 1
        ), closed AS ({_CLOSE_OLDER_UNLESS_NEWER}
        ), task AS (
            INSERT INTO "TaskQueue" ({_TASK_COLUMNS}) VALUES (
                :task_handler_class, :task_data, :scheduled_on, :queued_on, :queued_by_id,
                CASE WHEN :succeeded THEN COALESCE(CAST(:allowed AS INTEGER), 1)
                    WHEN :final THEN 1
                    ELSE GREATEST(COALESCE(CAST(:allowed AS INTEGER), 1), 2) END,
                CASE WHEN :succeeded THEN 0 ELSE 1 END,
                :status, :celery_task_id, :celery_parent_id,
                :celery_root_id, :celery_group_id, :celery_chord_id
            )
            ON CONFLICT ("CeleryTaskId") WHERE {CELERY_TASK_ID_SET_SQL} DO UPDATE SET
                "LastStatus" = CASE WHEN EXISTS (SELECT 1 FROM later)
                    THEN "TaskQueue"."LastStatus" ELSE :status END,
                "TaskRunsFailed" = CASE
                    WHEN EXISTS (SELECT 1 FROM later) THEN {_LATE_FAILED}
                    WHEN :succeeded THEN 0 ELSE {_FAILED_BEFORE} + 1 END,
                "MaxRetries" = CASE
                    WHEN EXISTS (SELECT 1 FROM later) THEN {_LATE_MAX_RETRIES}
                    WHEN :succeeded THEN COALESCE(CAST(:allowed AS INTEGER), {_FAILED_BEFORE} + 1)
                    WHEN :final THEN LEAST(
                        COALESCE(CAST(:allowed AS INTEGER), {_FAILED_BEFORE} + 1),
                        {_FAILED_BEFORE} + 1
                    )
                    ELSE GREATEST(
                        COALESCE(CAST(:allowed AS INTEGER), {_FAILED_BEFORE} + 1),
                        {_FAILED_BEFORE} + 2
                    ) END,
                {_KEEP_RELATIONS}
            WHERE NOT EXISTS (SELECT 1 FROM newer)
            RETURNING "Id"
        )
        INSERT INTO "TaskRuns" (
            "TaskQueueId", "Status", "StartedOn", "FinishedOn", "CeleryTaskId", "TaskRunnerId",
            "Attempt", "Eager", "ErrorCode", "ErrorMessage", "StandardOutput", "ErrorOutput",
            "Results", "PercentsCompleted"
        )
        SELECT "Id", :status, :started_on, :now, :celery_task_id, CAST(:runner_id AS BIGINT),
            :attempt, :eager, :error_code, :error_message, :standard_output, :error_output,
            :results, COALESCE(CAST(:percents AS INTEGER), 0)
        FROM task
        RETURNING "Id"
        """  # noqa: S608 - constant SQL, values are bound
    ),
    json_params=frozenset({"task_data", "results"}),
)


def complete_attempts(connection: Connection, attempts: list[dict[str, Any]]) -> list[int | None]:
    """Record attempts that started and ended before either was written, each as one finished
    run (closing the task's older open attempt, upserting its row and rolling it up, as a start
    then an end would), in one round trip; for each, its run's id, or ``None`` (nothing
    written) when a newer attempt of its task is open. ``attempts`` are
    :func:`complete_params`."""
    return [None if row is None else int(row[0]) for row in _COMPLETE.firsts(connection, attempts)]


def complete_params(
    task: NativeTask,
    *,
    attempt: int,
    eager: bool,
    runner_id: int | None,
    started_on: datetime,
    values: dict[str, Any],
    final: bool,
    lost_message: str,
    superseded_message: str,
) -> dict[str, Any]:
    """The parameters of one attempt for :func:`complete_attempts`; ``values`` are the run's
    end columns as :func:`~celery_taskq.core.statements.native_attempts.end_attempt` sets
    them."""
    status = str(values["status"])
    return {
        **native.published_params(task),
        "allowed": attempts_allowed(task.max_retries),
        "attempt": attempt,
        "eager": eager,
        "runner_id": runner_id,
        "started_on": started_on,
        "now": values["finished_on"],
        "status": status,
        "succeeded": status == "success",
        "final": final,
        "error_code": values["error_code"],
        "error_message": values["error_message"],
        "standard_output": values.get("standard_output"),
        "error_output": values.get("error_output"),
        "results": values["results"],
        "percents": values.get("percents_completed"),
        "lost": NativeCode.WORKER_LOST.value,
        "superseded": NativeCode.SUPERSEDED.value,
        "lost_message": lost_message,
        "superseded_message": superseded_message,
    }


_PUBLISHED = DriverStatement(
    text(
        f"""
        INSERT INTO "TaskQueue" (
            "TaskHandlerClass", "TaskData", "ScheduledOn", "QueuedOn", "QueuedById",
            "MaxRetries", "TaskRunsFailed", "CeleryTaskId", "CeleryParentId", "CeleryRootId",
            "CeleryGroupId", "CeleryChordId"
        )
        SELECT * FROM unnest(
            CAST(:handler_classes AS TEXT[]), CAST(:task_data AS JSONB[]),
            CAST(:scheduled_on AS TIMESTAMPTZ[]), CAST(:queued_on AS TIMESTAMPTZ[]),
            CAST(:queued_by AS TEXT[]), CAST(:max_retries AS INTEGER[]),
            CAST(:failed AS INTEGER[]), CAST(:celery_task_ids AS TEXT[]),
            CAST(:parent_ids AS TEXT[]), CAST(:root_ids AS TEXT[]), CAST(:group_ids AS TEXT[]),
            CAST(:chord_ids AS TEXT[])
        )
        ON CONFLICT ("CeleryTaskId") WHERE {CELERY_TASK_ID_SET_SQL} DO NOTHING
        """  # noqa: S608 - constant SQL, values are bound
    ),
    binary=True,
)

_PUBLISHED_COLUMNS = {
    "handler_classes": "task_handler_class",
    "task_data": "task_data",
    "scheduled_on": "scheduled_on",
    "queued_on": "queued_on",
    "queued_by": "queued_by_id",
    "max_retries": "max_retries",
    "failed": "task_runs_failed",
    "celery_task_ids": "celery_task_id",
    "parent_ids": "celery_parent_id",
    "root_ids": "celery_root_id",
    "group_ids": "celery_group_id",
    "chord_ids": "celery_chord_id",
}


def record_published(connection: Connection, tasks: Sequence[NativeTask]) -> None:
    """The rows of tasks just published, inserted unless their ids have one, in order, in one
    statement: each column bound as one array, so the client's cost per row is a few list
    appends (``TaskData`` goes as JSON text)."""
    if not tasks:
        return
    columns: dict[str, list[Any]] = {name: [] for name in _PUBLISHED_COLUMNS}
    for task in tasks:
        values = native.published_params(task)
        data = values["task_data"]
        values["task_data"] = None if data is None else write_json(data)
        for name, column in _PUBLISHED_COLUMNS.items():
            columns[name].append(values[column])
    _PUBLISHED.first(connection, columns)
