"""The three tables: ``TaskQueue``, ``TaskRuns`` and ``TaskRunners``.

Table and column names are the documented ones (a contract: reports and users' SQL depend on
them). Python attributes are snake_case; columns keep their names. Models hold columns,
constraints and indexes only: state changes live in :mod:`celery_taskq.core.queue` and
:mod:`celery_taskq.core.runner.loop`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Dialect,
    Double,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    column,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import DateTime, TypeDecorator


class RunStatus(enum.StrEnum):
    """Status of a task run, and of ``TaskQueue.LastStatus``."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"


FAILED_RUN_STATUSES = (RunStatus.ERROR, RunStatus.TIMEOUT)
"""Statuses that count towards ``TaskRunsFailed``."""

OPEN_RUN_STATUSES = (RunStatus.SCHEDULED, RunStatus.RUNNING)
"""Statuses of a run that is not finished; a task has at most one such run."""


class RunnerRole(enum.StrEnum):
    """What a runner row stands for."""

    RUNNER = "runner"
    """A runner loop claiming handler runs; counts against ``TaskRunnerLimit``."""
    CELERY_WORKER = "celery-worker"
    """A Celery worker process whose native tasks are audited; not counted against the limit."""


class RunnerStatus(enum.StrEnum):
    """Status of a task runner."""

    RUNNING = "running"
    SUCCESS = "success"
    TIMEOUT = "timeout"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back as an aware UTC datetime.

    Naive datetimes are refused: a time without a zone cannot be stored in UTC honestly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give a timezone-aware datetime")
        value = value.astimezone(UTC)
        # SQLite has no zone type; a naive UTC text keeps comparisons lexicographic and exact.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Id = BigInteger().with_variant(Integer(), "sqlite")
"""Primary keys: 64-bit where the database has it; SQLite's INTEGER is its 64-bit rowid."""

JsonDocument = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
"""JSON text; ``None`` is stored as SQL NULL, not as the JSON literal ``null``."""


def _status_enum(enum_class: type[enum.StrEnum], name: str) -> Enum:
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


def _sql_in(column: str, statuses: tuple[enum.StrEnum, ...]) -> str:
    values = ", ".join(f"'{status.value}'" for status in statuses)
    return f'"{column}" IN ({values})'


# Index predicates and the queries they serve share these SQL fragments: SQLite uses a partial
# index only when the query repeats the predicate's terms, and PostgreSQL's ON CONFLICT
# inference needs the same predicate too.
CELERY_TASK_ID_SET_SQL = '"CeleryTaskId" IS NOT NULL'
"""Predicate of ``uq_TaskQueue_CeleryTaskId``, which the native audit's ``ON CONFLICT`` names."""


def _not_null(name: str) -> ColumnElement[bool]:
    """The predicate of an index that leaves out the rows whose column ``name`` is NULL."""
    return column(name).is_not(None)


def _index_of_set_values(name: str, column: str, *, unique: bool = False) -> Index:
    """An index over ``column`` without the rows where it is NULL (the column of a handler
    task, or of a run not started or not finished): those rows cost it nothing."""
    return Index(
        name,
        column,
        unique=unique,
        postgresql_where=_not_null(column),
        sqlite_where=_not_null(column),
    )


CELERY_HANDLER_PREFIX = "celery:"
"""``TaskHandlerClass`` of an audited native Celery task: ``celery:<task name>``."""

TASK_OPEN_SQL = (
    f'("LastStatus" IS NULL OR ({_sql_in("LastStatus", FAILED_RUN_STATUSES)}'
    ' AND "TaskRunsFailed" < "MaxRetries"))'
    f" AND \"TaskHandlerClass\" NOT LIKE '{CELERY_HANDLER_PREFIX}%'"
    ' AND "CancelRequestedOn" IS NULL'
)
"""A TaskQueue row that may get a new run: never run, or last run failed with retries left.

Audited native Celery tasks never do (Celery delivers and retries them), nor cancelled tasks."""

TASK_UNFINISHED_SQL = (
    '"UniqueKey" IS NOT NULL AND "CancelRequestedOn" IS NULL AND ("LastStatus" IS NULL'
    f" OR {_sql_in('LastStatus', OPEN_RUN_STATUSES)}"
    f" OR ({_sql_in('LastStatus', FAILED_RUN_STATUSES)}"
    ' AND "TaskRunsFailed" < "MaxRetries"))'
)
"""A task with a unique key that is not finished: not succeeded, exhausted or cancelled."""

TASK_EXHAUSTED_SQL = (
    f'{_sql_in("LastStatus", FAILED_RUN_STATUSES)} AND "TaskRunsFailed" >= "MaxRetries"'
)
"""A task out of retries: its last run failed and no retry is left (a dead letter)."""

TASK_CANCELLED_SQL = '"CancelRequestedOn" IS NOT NULL'
"""A task whose cancel was asked (the task list's ``cancelled`` filter)."""

RUN_SCHEDULED_SQL = f"\"Status\" = '{RunStatus.SCHEDULED.value}'"
RUN_RUNNING_SQL = f"\"Status\" = '{RunStatus.RUNNING.value}'"
RUN_OPEN_SQL = _sql_in("Status", OPEN_RUN_STATUSES)
RUN_RESERVED_SQL = f'{RUN_SCHEDULED_SQL} AND "TaskRunnerId" IS NOT NULL'
"""A run reserved by a runner's batched claim: still ``scheduled``, held under its runner id."""
NATIVE_NEVER_STARTED_SQL = (
    f""""LastStatus" IS NULL AND "TaskHandlerClass" LIKE '{CELERY_HANDLER_PREFIX}%'"""
)
RUNNER_RUNNING_SQL = f"\"Status\" = '{RunnerStatus.RUNNING.value}'"
RUNNER_ROLE_RUNNER_SQL = f"\"Role\" = '{RunnerRole.RUNNER.value}'"

DEFAULT_QUEUE = "default"
"""The queue of a task enqueued without one."""
QUEUE_NAME_MAX_LENGTH = 64
"""Longest queue name (``TaskQueue.Queue``)."""
MIN_PRIORITY = -1000
"""Lowest priority a task may have; higher priorities are claimed first."""
MAX_PRIORITY = 1000
"""Highest priority a task may have."""


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention for every constraint and index."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class TaskQueue(Base):
    """A queued task: what to run, with which data, when, and how it went last."""

    __tablename__ = "TaskQueue"

    id: Mapped[int] = mapped_column("Id", Id, primary_key=True, autoincrement=True)
    task_handler_class: Mapped[str] = mapped_column("TaskHandlerClass", String(255))
    task_data: Mapped[Any] = mapped_column("TaskData", JsonDocument)
    scheduled_on: Mapped[datetime] = mapped_column("ScheduledOn")
    queued_on: Mapped[datetime] = mapped_column("QueuedOn")
    queued_by_id: Mapped[str | None] = mapped_column("QueuedById", String(255))
    last_status: Mapped[RunStatus | None] = mapped_column(
        "LastStatus", _status_enum(RunStatus, "last_status")
    )
    max_retries: Mapped[int] = mapped_column("MaxRetries", Integer)
    task_runs_failed: Mapped[int] = mapped_column(
        "TaskRunsFailed", Integer, server_default=text("0")
    )
    title: Mapped[str | None] = mapped_column("Title", String(255))
    unique_key: Mapped[str | None] = mapped_column("UniqueKey", String(255))
    cancel_requested_on: Mapped[datetime | None] = mapped_column("CancelRequestedOn")
    celery_task_id: Mapped[str | None] = mapped_column("CeleryTaskId", String(255))
    """The Celery task id of an audited native task: one row per id, whatever its attempts."""
    celery_parent_id: Mapped[str | None] = mapped_column("CeleryParentId", String(255))
    celery_root_id: Mapped[str | None] = mapped_column("CeleryRootId", String(255))
    celery_group_id: Mapped[str | None] = mapped_column("CeleryGroupId", String(255))
    celery_chord_id: Mapped[str | None] = mapped_column("CeleryChordId", String(255))
    """The task id of the chord callback this task is a header member of."""
    resent_from_id: Mapped[int | None] = mapped_column(
        "ResentFromId", Id, ForeignKey("TaskQueue.Id", ondelete="SET NULL")
    )
    """The task this one re-sends (``celery-taskq resend``)."""
    queue: Mapped[str] = mapped_column(
        "Queue", String(QUEUE_NAME_MAX_LENGTH), server_default=text(f"'{DEFAULT_QUEUE}'")
    )
    """The named queue whose runners run this task (``runner --queues``)."""
    priority: Mapped[int] = mapped_column("Priority", Integer, server_default=text("0"))
    """Runs of higher-priority tasks are claimed first; FIFO within a priority."""

    __table_args__ = (
        CheckConstraint('"MaxRetries" >= 1', name="max_retries_positive"),
        CheckConstraint(
            f'"Priority" BETWEEN {MIN_PRIORITY} AND {MAX_PRIORITY}', name="priority_range"
        ),
        CheckConstraint('"TaskRunsFailed" >= 0', name="task_runs_failed_not_negative"),
        Index(
            "ix_TaskQueue_due",
            "ScheduledOn",
            postgresql_where=text(TASK_OPEN_SQL),
            sqlite_where=text(TASK_OPEN_SQL),
        ),
        Index("ix_TaskQueue_LastStatus_Id", "LastStatus", "Id"),
        Index("ix_TaskQueue_TaskHandlerClass_Id", "TaskHandlerClass", "Id"),
        Index("ix_TaskQueue_QueuedById_Id", "QueuedById", "Id"),
        Index("ix_TaskQueue_QueuedOn", "QueuedOn"),
        Index(
            "ix_TaskQueue_exhausted",
            "Id",
            postgresql_where=text(TASK_EXHAUSTED_SQL),
            sqlite_where=text(TASK_EXHAUSTED_SQL),
        ),
        Index(
            "ix_TaskQueue_cancelled",
            "Id",
            postgresql_where=text(TASK_CANCELLED_SQL),
            sqlite_where=text(TASK_CANCELLED_SQL),
        ),
        _index_of_set_values("uq_TaskQueue_CeleryTaskId", "CeleryTaskId", unique=True),
        _index_of_set_values("ix_TaskQueue_CeleryRootId", "CeleryRootId"),
        _index_of_set_values("ix_TaskQueue_CeleryGroupId", "CeleryGroupId"),
        Index(
            "ix_TaskQueue_native_never_started",
            "ScheduledOn",
            postgresql_where=text(NATIVE_NEVER_STARTED_SQL),
            sqlite_where=text(NATIVE_NEVER_STARTED_SQL),
        ),
        Index(
            "uq_TaskQueue_UniqueKey_unfinished",
            "UniqueKey",
            unique=True,
            postgresql_where=text(TASK_UNFINISHED_SQL),
            sqlite_where=text(TASK_UNFINISHED_SQL),
        ),
    )


class TaskRunner(Base):
    """A process that claims and runs task runs."""

    __tablename__ = "TaskRunners"

    id: Mapped[int] = mapped_column("Id", Id, primary_key=True, autoincrement=True)
    process_id: Mapped[int] = mapped_column("ProcessId", Integer)
    started_on: Mapped[datetime] = mapped_column("StartedOn")
    finished_on: Mapped[datetime | None] = mapped_column("FinishedOn")
    status: Mapped[RunnerStatus] = mapped_column("Status", _status_enum(RunnerStatus, "status"))
    hostname: Mapped[str] = mapped_column("Hostname", String(255))
    process_create_time: Mapped[float | None] = mapped_column("ProcessCreateTime", Double)
    process_namespace: Mapped[str | None] = mapped_column("ProcessNamespace", String(64))
    heartbeat_on: Mapped[datetime | None] = mapped_column("HeartbeatOn")
    worker_hostname: Mapped[str | None] = mapped_column("WorkerHostname", String(255))
    role: Mapped[RunnerRole] = mapped_column(
        "Role",
        _status_enum(RunnerRole, "role"),
        server_default=text(f"'{RunnerRole.RUNNER.value}'"),
    )

    __table_args__ = (
        Index(
            "ix_TaskRunners_running",
            "Hostname",
            postgresql_where=text(RUNNER_RUNNING_SQL),
            sqlite_where=text(RUNNER_RUNNING_SQL),
        ),
    )


class TaskRun(Base):
    """One attempt at a queued task: its status, output, progress and result."""

    __tablename__ = "TaskRuns"

    id: Mapped[int] = mapped_column("Id", Id, primary_key=True, autoincrement=True)
    task_queue_id: Mapped[int] = mapped_column(
        "TaskQueueId", Id, ForeignKey("TaskQueue.Id", ondelete="CASCADE")
    )
    started_on: Mapped[datetime | None] = mapped_column("StartedOn")
    percents_completed: Mapped[int] = mapped_column(
        "PercentsCompleted", Integer, server_default=text("0")
    )
    finished_on: Mapped[datetime | None] = mapped_column("FinishedOn")
    results: Mapped[Any | None] = mapped_column("Results", JsonDocument)
    status: Mapped[RunStatus] = mapped_column("Status", _status_enum(RunStatus, "status"))
    standard_output: Mapped[str | None] = mapped_column("StandardOutput", Text)
    error_output: Mapped[str | None] = mapped_column("ErrorOutput", Text)
    error_code: Mapped[str | None] = mapped_column("ErrorCode", String(255))
    error_message: Mapped[str | None] = mapped_column("ErrorMessage", Text)
    task_runner_id: Mapped[int | None] = mapped_column(
        "TaskRunnerId", Id, ForeignKey("TaskRunners.Id", ondelete="SET NULL")
    )
    celery_task_id: Mapped[str | None] = mapped_column("CeleryTaskId", String(255))
    progress_step: Mapped[int | None] = mapped_column("ProgressStep", Integer)
    progress_steps: Mapped[int | None] = mapped_column("ProgressSteps", Integer)
    progress_status: Mapped[str | None] = mapped_column("ProgressStatus", String(255))
    checkpoint: Mapped[Any | None] = mapped_column("Checkpoint", JsonDocument)
    attempt: Mapped[int | None] = mapped_column("Attempt", Integer)
    """A native Celery task's attempt number: Celery's ``request.retries`` (0 for the first)."""
    eager: Mapped[bool] = mapped_column(
        "Eager", Boolean(create_constraint=False), server_default=text("false")
    )
    """Whether the attempt ran eagerly in the caller (``task_always_eager``, ``.apply()``)."""
    queue: Mapped[str] = mapped_column(
        "Queue", String(QUEUE_NAME_MAX_LENGTH), server_default=text(f"'{DEFAULT_QUEUE}'")
    )
    """The task's queue, copied when the run is created so that the claim reads one table."""
    priority: Mapped[int] = mapped_column("Priority", Integer, server_default=text("0"))
    """The task's priority, copied when the run is created."""

    __table_args__ = (
        CheckConstraint(
            '"PercentsCompleted" >= 0 AND "PercentsCompleted" <= 100',
            name="percents_completed_range",
        ),
        Index("ix_TaskRuns_TaskQueueId_Id", "TaskQueueId", "Id"),
        _index_of_set_values("ix_TaskRuns_CeleryTaskId", "CeleryTaskId"),
        _index_of_set_values("ix_TaskRuns_FinishedOn", "FinishedOn"),
        _index_of_set_values("ix_TaskRuns_TaskRunnerId", "TaskRunnerId"),
        Index(
            "uq_TaskRuns_one_open_run_per_task",
            "TaskQueueId",
            unique=True,
            postgresql_where=text(RUN_OPEN_SQL),
            sqlite_where=text(RUN_OPEN_SQL),
        ),
        Index(
            "ix_TaskRuns_running_by_runner",
            "TaskRunnerId",
            postgresql_where=text(RUN_RUNNING_SQL),
            sqlite_where=text(RUN_RUNNING_SQL),
        ),
        Index(
            "ix_TaskRuns_reserved",
            "TaskRunnerId",
            postgresql_where=text(RUN_RESERVED_SQL),
            sqlite_where=text(RUN_RESERVED_SQL),
        ),
    )


# The claim's order: highest priority first, then oldest first (FIFO), over scheduled runs only.
# The queue comes last, after the unique Id: it orders nothing, but a runner serving some queues
# skips the others' runs on the index entries alone.
Index(
    "ix_TaskRuns_scheduled",
    TaskRun.priority.desc(),
    TaskRun.id,
    TaskRun.queue,
    postgresql_where=text(RUN_SCHEDULED_SQL),
    sqlite_where=text(RUN_SCHEDULED_SQL),
)


class BeatTick(Base):
    """One periodic event tick that was carried out; the key makes a second beat's tick a no-op."""

    __tablename__ = "TaskqBeatTicks"

    event: Mapped[str] = mapped_column("Event", String(64), primary_key=True)
    slot: Mapped[int] = mapped_column("Slot", BigInteger, primary_key=True)
    ticked_on: Mapped[datetime] = mapped_column("TickedOn")


class Limit(Base):
    """A concurrency and/or rate limit on a queue or a handler, with its counters.

    ``Name`` is ``queue:<queue>`` or ``handler:<dotted path>``. The claim takes a run only
    while every limit naming its queue or handler has room, and counts the run in the same
    statement: ``Running`` (runs running now, decremented when a run ends and recounted by
    the overseer) and ``WindowCount`` (runs started in the window numbered ``Window``: the
    windows are ``RatePeriod`` seconds long, counted from the Unix epoch).
    """

    __tablename__ = "TaskqLimits"

    name: Mapped[str] = mapped_column("Name", String(320), primary_key=True)
    max_running: Mapped[int | None] = mapped_column("MaxRunning", Integer)
    running: Mapped[int] = mapped_column("Running", Integer, server_default=text("0"))
    rate_count: Mapped[int | None] = mapped_column("RateCount", Integer)
    rate_period: Mapped[int | None] = mapped_column("RatePeriod", Integer)
    window: Mapped[int | None] = mapped_column("Window", BigInteger)
    window_count: Mapped[int] = mapped_column("WindowCount", Integer, server_default=text("0"))


ONE_OPEN_RUN_PER_TASK = "uq_TaskRuns_one_open_run_per_task"
"""The unique index that lets a task have at most one scheduled or running run."""
