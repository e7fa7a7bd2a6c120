"""Concurrency and rate limits of queues and handlers, kept in ``TaskqLimits``.

A limit row is named ``queue:<queue>`` or ``handler:<dotted path>``. Its ``Running`` counts the
runs of that queue or handler that are running: the claim adds one, a runner that records a
run's end takes one off (:func:`release`), and OnProcess recounts it from the runs
(:func:`recount_running`), which repairs what a lost runner never took off. ``WindowCount``
counts the runs started in the rate window ``Window``.

Why counters and not a count of running runs inside the claim: under PostgreSQL's READ
COMMITTED each statement reads one snapshot, taken when it starts. A claim that waited for a
lock held by another claim would still count that claim's run as not running, and both would
take "the last slot". An ``UPDATE`` of the limit row is different: PostgreSQL re-checks its
``WHERE`` (``Running < MaxRunning``) against the row's newest version once the other claim
commits, so of two claims racing for the last slot exactly one gets it, on every host. On
SQLite the claim holds the database's only write lock, so its reads are current anyway.
"""

# ruff: noqa: S608 - the SQL is built from constant fragments only; every value is bound
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import Connection, delete, select, text

from celery_taskq.core.models import Limit
from celery_taskq.core.queues import LimitSpec
from celery_taskq.core.storage.dialects import upsert

# Each fragment below expects the run's row as "TaskRuns" and its task's row as q.
PG_LIMIT_NAMES = """'queue:' || "TaskRuns"."Queue" AS queue_limit,
    'handler:' || q."TaskHandlerClass" AS handler_limit"""
"""The names of the two limits that may apply to a run."""

_WINDOW_NOW = ':epoch / l."RatePeriod"'
_WINDOW_PASSED = f'(l."Window" IS NULL OR l."Window" < {_WINDOW_NOW})'
_ROOM = f"""(l."MaxRunning" IS NULL OR l."Running" < l."MaxRunning")
    AND (l."RateCount" IS NULL OR {_WINDOW_PASSED} OR l."WindowCount" < l."RateCount")"""
"""A limit row ``l`` has room for one more run now (``:epoch``, Unix seconds)."""

FULL_LIMIT = f"""SELECT 1 FROM "TaskqLimits" l
    WHERE l."Name" IN ('queue:' || "TaskRuns"."Queue", 'handler:' || q."TaskHandlerClass")
    AND NOT ({_ROOM})"""
"""A limit of the run has no room left (both dialects)."""

_COUNT_ONE_MORE = f""""Running" = l."Running" + 1,
    "Window" = CASE WHEN l."RateCount" IS NULL OR NOT {_WINDOW_PASSED} THEN l."Window"
        ELSE {_WINDOW_NOW} END,
    "WindowCount" = CASE WHEN l."RateCount" IS NULL THEN l."WindowCount"
        WHEN {_WINDOW_PASSED} THEN 1 ELSE l."WindowCount" + 1 END"""

PG_COUNTED_CTE = f"""counted AS (
    UPDATE "TaskqLimits" l SET {_COUNT_ONE_MORE}
    FROM candidate c
    WHERE l."Name" IN (c.queue_limit, c.handler_limit) AND {_ROOM}
    RETURNING l."Name"
)"""
"""Count the candidate run against each of its limits that still has room (re-checked on the
row's newest version)."""

PG_ALL_COUNTED = """(SELECT count(*) FROM counted) = (
    SELECT count(*) FROM "TaskqLimits" l, candidate c
    WHERE l."Name" IN (c.queue_limit, c.handler_limit))"""
"""Every limit of the candidate counted it: otherwise it is not claimed (a limit that counted
it alone is over by one until the next recount, which only ever holds runs back)."""

_NAMES_OF_RUN = """SELECT 'queue:' || "TaskRuns"."Queue" FROM "TaskRuns"
    WHERE "TaskRuns"."Id" = :run_id
    UNION ALL
    SELECT 'handler:' || q."TaskHandlerClass" FROM "TaskRuns"
    JOIN "TaskQueue" q ON q."Id" = "TaskRuns"."TaskQueueId" WHERE "TaskRuns"."Id" = :run_id"""

_COUNT_CLAIMED = text(
    f"""UPDATE "TaskqLimits" AS l SET {_COUNT_ONE_MORE}
    WHERE l."Name" IN ({_NAMES_OF_RUN})"""
)
_RELEASE = text(
    f"""UPDATE "TaskqLimits" SET "Running" = "Running" - 1
    WHERE "Running" > 0 AND "Name" IN ({_NAMES_OF_RUN})"""
)
_RUNNING_OF_LIMIT = """(
    SELECT count(*) FROM "TaskRuns" JOIN "TaskQueue" q ON q."Id" = "TaskRuns"."TaskQueueId"
    WHERE "TaskRuns"."Status" = 'running' AND q."TaskHandlerClass" NOT LIKE 'celery:%'
        AND "TaskqLimits"."Name" IN
            ('queue:' || "TaskRuns"."Queue", 'handler:' || q."TaskHandlerClass"))"""
_RECOUNT = text(
    f"""UPDATE "TaskqLimits" SET "Running" = {_RUNNING_OF_LIMIT}
    WHERE "Running" <> {_RUNNING_OF_LIMIT}"""
)


def count_claimed(connection: Connection, run_id: int, now: datetime) -> None:
    """Count a run just claimed against its limits (SQLite: inside the claim's write lock,
    where the claim saw every limit with room)."""
    connection.execute(_COUNT_CLAIMED, {"run_id": run_id, "epoch": int(now.timestamp())})


def release(connection: Connection, run_id: int) -> None:
    """Give back the slot of a run that stopped running (its end was recorded, or it was
    handed back unstarted); in the transaction that records it."""
    connection.execute(_RELEASE, {"run_id": run_id})


def recount_running(connection: Connection) -> None:
    """Set every limit's ``Running`` to the runs running now (OnProcess).

    On PostgreSQL the table is locked first, in a statement of its own: claims in progress
    commit before the count's snapshot is taken, and new ones wait for it.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text('LOCK TABLE "TaskqLimits" IN SHARE ROW EXCLUSIVE MODE'))
    connection.execute(_RECOUNT)


def store_limits(connection: Connection, declared: Mapping[str, LimitSpec]) -> None:
    """Make ``TaskqLimits`` hold the declared limits: new ones added, changed ones updated
    (their counters kept), undeclared ones removed. Rows already as declared are not written,
    so a tick with nothing changed takes no row lock a claim could wait for."""
    stored = {
        str(row[0]): LimitSpec(row[1], row[2], row[3])
        for row in connection.execute(
            select(Limit.name, Limit.max_running, Limit.rate_count, Limit.rate_period)
        )
    }
    gone = set(stored) - set(declared)
    if gone:
        connection.execute(delete(Limit).where(Limit.name.in_(sorted(gone))))
    for name, spec in sorted(declared.items()):
        if stored.get(name) == spec:
            continue
        values = {
            "max_running": spec.max_running,
            "rate_count": spec.rate_count,
            "rate_period": spec.rate_period,
        }
        statement = upsert(connection, Limit).values(name=name, **values)
        changed = {"MaxRunning": spec.max_running, "RateCount": spec.rate_count}
        changed["RatePeriod"] = spec.rate_period
        connection.execute(statement.on_conflict_do_update(index_elements=["Name"], set_=changed))


def running_counts(connection: Connection) -> dict[str, int]:
    """Each limit's ``Running`` as stored."""
    return {
        str(name): int(running)
        for name, running in connection.execute(select(Limit.name, Limit.running))
    }
