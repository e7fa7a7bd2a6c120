"""Possibly lost native tasks: published to Celery, never started, and long past due (now).

A native Celery task (``TaskHandlerClass`` ``celery:…``) whose message was lost keeps its
``TaskQueue`` row with no run. Once its ``ScheduledOn`` (its ETA, or when it was sent) is more
than ``native_lost_after`` seconds past, it is reported here. It is never re-published by
itself: ``celery-taskq resend`` does that when asked. The queries read the partial index
``ix_TaskQueue_native_never_started``: its predicate is repeated, and SQLite is told to use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Integer, String, TextClause, bindparam, column, text

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import NATIVE_NEVER_STARTED_SQL, UTCDateTime
from celery_taskq.core.settings import DEFAULT_NATIVE_LOST_AFTER
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.limits import DEFAULT_LIMIT
from celery_taskq.reports.sql import in_seconds, read_with
from celery_taskq.reports.window import check_handler, check_limit, check_now


@dataclass(frozen=True)
class LostTask:
    """A native task that never started, long past its due time."""

    task_id: int
    handler: str
    celery_task_id: str | None
    scheduled_on: datetime
    queued_on: datetime
    age: float
    """Seconds since it became due (``now - ScheduledOn``)."""


@dataclass(frozen=True)
class PossiblyLost:
    """Possibly lost native tasks at ``now``: how many, and the oldest of them."""

    lost_after: float
    """Seconds past ``ScheduledOn`` after which a never-started native task is counted."""
    count: int
    oldest_age: float | None
    """Seconds since the oldest of them became due; ``None`` when there is none."""
    tasks: tuple[LostTask, ...]
    """The oldest first, at most the report's limit."""


def check_lost_after(lost_after: float) -> float:
    """A positive number of seconds, or a clear refusal."""
    if isinstance(lost_after, bool) or not isinstance(lost_after, int | float):
        raise InvalidArgumentError("lost_after must be a number of seconds")
    if not 0 < lost_after < timedelta.max.total_seconds():
        raise InvalidArgumentError("lost_after must be a positive number of seconds")
    return float(lost_after)


# Without statistics SQLite prefers ix_TaskQueue_LastStatus_Id for "LastStatus" IS NULL, which
# also reads every never-run handler task: the partial index is named instead.
_FROM_SQLITE = ' FROM "TaskQueue" INDEXED BY "ix_TaskQueue_native_never_started"'
_FROM = ' FROM "TaskQueue"'
_WHERE = f' WHERE {NATIVE_NEVER_STARTED_SQL} AND "ScheduledOn" <= :cutoff'
_FOR_HANDLER = ' AND "TaskHandlerClass" = :handler'
_SUMMARY = 'SELECT count(*), min("ScheduledOn")'
_LIST = 'SELECT "Id", "TaskHandlerClass", "CeleryTaskId", "ScheduledOn", "QueuedOn"'
_LIST_ORDER = ' ORDER BY "ScheduledOn", "Id" LIMIT :limit'
_STATEMENTS = {
    (dialect, part, filtered): select_part
    + source
    + _WHERE
    + (_FOR_HANDLER if filtered else "")
    + (_LIST_ORDER if part == "list" else "")
    for dialect, source in (("sqlite", _FROM_SQLITE), ("other", _FROM))
    for part, select_part in (("summary", _SUMMARY), ("list", _LIST))
    for filtered in (False, True)
}
"""Each query, by dialect, part and handler filter: constant SQL, every value bound."""


def _never_started(dialect: str, part: str, *, handler: bool) -> TextClause:
    key = (dialect if dialect == "sqlite" else "other", part, handler)
    return text(_STATEMENTS[key]).bindparams(bindparam("cutoff", type_=UTCDateTime()))


def possibly_lost_in(
    connection: Connection, now: datetime, lost_after: float, handler: str | None, limit: int
) -> PossiblyLost:
    """:func:`possibly_lost`, inside the caller's report transaction."""
    try:
        cutoff = now - timedelta(seconds=lost_after)
    except OverflowError:  # reaching back before year 1: nothing is that old
        return PossiblyLost(lost_after, 0, None, ())
    dialect = connection.dialect.name
    values: dict[str, object] = {"cutoff": cutoff, "limit": limit}
    if handler is not None:
        values["handler"] = handler
    summary = _never_started(dialect, "summary", handler=handler is not None).columns(
        column("count", Integer()), column("oldest", UTCDateTime())
    )
    count, oldest = connection.execute(summary, values).one()
    listed = _never_started(dialect, "list", handler=handler is not None).columns(
        column("Id", Integer()),
        column("TaskHandlerClass", String()),
        column("CeleryTaskId", String()),
        column("ScheduledOn", UTCDateTime()),
        column("QueuedOn", UTCDateTime()),
    )
    return PossiblyLost(
        lost_after=lost_after,
        count=count,
        oldest_age=None if oldest is None else in_seconds(now - oldest),
        tasks=tuple(
            LostTask(
                task_id=row[0],
                handler=row[1],
                celery_task_id=row[2],
                scheduled_on=row[3],
                queued_on=row[4],
                age=in_seconds(now - row[3]),
            )
            for row in connection.execute(listed, values)
        ),
    )


def possibly_lost(
    database: Database,
    *,
    now: datetime | None = None,
    lost_after: float = DEFAULT_NATIVE_LOST_AFTER,
    handler: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> PossiblyLost:
    """Native tasks never started whose ``ScheduledOn`` is ``lost_after`` seconds or more
    before ``now`` (default: the current time): their count and the oldest ``limit``."""
    now, handler, limit = check_now(now), check_handler(handler), check_limit(limit)
    lost_after = check_lost_after(lost_after)
    return read_with(
        database,
        lambda connection: possibly_lost_in(connection, now, lost_after, handler, limit),
    )
