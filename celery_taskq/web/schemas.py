"""The HTTP API's bodies as pydantic models (they make the published OpenAPI schema)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import MAX_PRIORITY, MIN_PRIORITY, RunnerRole, RunnerStatus, RunStatus
from celery_taskq.core.queues import check_queue_name
from celery_taskq.core.snapshots import RelatedTask, RunSnapshot, TaskSnapshot, TaskSummary
from celery_taskq.reports import RunnerReport, RunSeries
from celery_taskq.web.inputs import MAX_TEXT, json_problem, text_problem
from celery_taskq.web.views import flower_task_url, flower_worker_url, run_duration

MAX_RETRIES_LIMIT = 2**31 - 1
"""Largest ``max_retries`` (``MaxRetries`` is a 32-bit integer)."""


class ErrorOut(BaseModel):
    """Every error answer: a clear message (a 409 on a duplicate also names the task)."""

    error: str
    existing_task_id: int | None = None


class RunOut(BaseModel):
    """One ``TaskRuns`` row."""

    id: int
    task_id: int
    status: RunStatus
    started_on: datetime | None
    finished_on: datetime | None
    duration_seconds: float | None
    percents_completed: int
    progress_step: int | None
    progress_steps: int | None
    progress_status: str | None
    results: Any
    standard_output: str | None
    error_output: str | None
    error_code: str | None
    error_message: str | None
    task_runner_id: int | None
    celery_task_id: str | None
    flower_task_url: str | None
    attempt: int | None = Field(
        default=None, description="A native Celery task's attempt (request.retries, 0 first)."
    )
    eager: bool = Field(default=False, description="The attempt ran eagerly in the caller.")

    @classmethod
    def of(cls, run: RunSnapshot, flower_url: str) -> RunOut:
        """From a snapshot; ``flower_url`` is the configured Flower base URL (may be empty)."""
        return cls(
            id=run.id,
            task_id=run.task_queue_id,
            status=run.status,
            started_on=run.started_on,
            finished_on=run.finished_on,
            duration_seconds=run_duration(run),
            percents_completed=run.percents_completed,
            progress_step=run.progress_step,
            progress_steps=run.progress_steps,
            progress_status=run.progress_status,
            results=run.results,
            standard_output=run.standard_output,
            error_output=run.error_output,
            error_code=run.error_code,
            error_message=run.error_message,
            task_runner_id=run.task_runner_id,
            celery_task_id=run.celery_task_id,
            flower_task_url=flower_task_url(flower_url, run),
            attempt=run.attempt,
            eager=run.eager,
        )


class TaskSummaryOut(BaseModel):
    """One ``TaskQueue`` row; ``last_status`` is ``null`` until a run exists."""

    id: int
    handler: str
    title: str | None
    data: Any
    scheduled_on: datetime
    queued_on: datetime
    queued_by: str | None
    last_status: RunStatus | None
    max_retries: int
    task_runs_failed: int
    unique_key: str | None
    cancel_requested_on: datetime | None
    celery_task_id: str | None = Field(
        default=None, description="The Celery task id of an audited native task."
    )
    celery_parent_id: str | None = None
    celery_root_id: str | None = None
    celery_group_id: str | None = None
    celery_chord_id: str | None = None
    resent_from_id: int | None = Field(
        default=None, description="The task this one re-sends (TaskQueue.Id)."
    )
    queue: str = Field(default="default", description="The named queue its runs go to.")
    priority: int = Field(default=0, description="Higher priorities are claimed first.")

    @staticmethod
    def fields_of(task: TaskSummary) -> dict[str, Any]:
        """The summary fields of a snapshot."""
        return {
            "id": task.id,
            "handler": task.task_handler_class,
            "title": task.title,
            "data": task.task_data,
            "scheduled_on": task.scheduled_on,
            "queued_on": task.queued_on,
            "queued_by": task.queued_by_id,
            "last_status": task.last_status,
            "max_retries": task.max_retries,
            "task_runs_failed": task.task_runs_failed,
            "unique_key": task.unique_key,
            "cancel_requested_on": task.cancel_requested_on,
            "celery_task_id": task.celery_task_id,
            "celery_parent_id": task.celery_parent_id,
            "celery_root_id": task.celery_root_id,
            "celery_group_id": task.celery_group_id,
            "celery_chord_id": task.celery_chord_id,
            "resent_from_id": task.resent_from_id,
            "queue": task.queue,
            "priority": task.priority,
        }

    @classmethod
    def of(cls, task: TaskSummary) -> TaskSummaryOut:
        """From a snapshot."""
        return cls(**cls.fields_of(task))


class RelationOut(BaseModel):
    """A relation of a native Celery task, and the task that holds the id (if any)."""

    relation: Literal["parent", "root", "group", "chord", "resent_from"]
    value: str = Field(description="The Celery id stored (resent_from: the TaskQueue.Id).")
    task_id: int | None = Field(description="The task holding that id; null when none does.")
    url: str | None = Field(description="That task's document in this API.")

    @classmethod
    def of(cls, relation: RelatedTask, api_path: str) -> RelationOut:
        """From a relation; ``api_path`` is where the API is mounted (``/api/v1``)."""
        url = None if relation.task_id is None else f"{api_path}/tasks/{relation.task_id}"
        return cls(
            relation=relation.relation,  # type: ignore[arg-type]
            value=relation.value,
            task_id=relation.task_id,
            url=url,
        )


class TaskOut(TaskSummaryOut):
    """A task with its relations (native Celery tasks) and every run, oldest first."""

    relations: list[RelationOut] = Field(default_factory=list)
    runs: list[RunOut]

    @classmethod
    def of_snapshot(
        cls,
        task: TaskSnapshot,
        flower_url: str,
        relations: tuple[RelatedTask, ...] = (),
        api_path: str = "/api/v1",
    ) -> TaskOut:
        """From a snapshot with its runs and relations."""
        runs = [RunOut.of(run, flower_url) for run in task.runs]
        return cls(
            **cls.fields_of(task),
            relations=[RelationOut.of(relation, api_path) for relation in relations],
            runs=runs,
        )


class TaskPageOut(BaseModel):
    """A page of tasks. Newest first (the default order): pass ``next_before_id`` as
    ``before_id`` for the next page; in any other order pass ``next_offset`` as ``offset``.
    ``search_window_bounded`` says that a search scanned only the newest tasks."""

    tasks: list[TaskSummaryOut]
    next_before_id: int | None
    next_offset: int | None = None
    search_window_bounded: bool = False


class RunnerOut(BaseModel):
    """A ``TaskRunners`` row with its heartbeat age (seconds) and the runs it took."""

    id: int
    role: RunnerRole
    hostname: str
    process_id: int
    status: RunnerStatus
    started_on: datetime
    finished_on: datetime | None
    heartbeat_on: datetime | None
    heartbeat_age: float | None
    runs: int
    worker_hostname: str | None
    flower_worker_url: str | None

    @classmethod
    def of(cls, runner: RunnerReport, flower_url: str) -> RunnerOut:
        """From a report row."""
        return cls(
            id=runner.runner_id,
            role=runner.role,
            hostname=runner.hostname,
            process_id=runner.process_id,
            status=runner.status,
            started_on=runner.started_on,
            finished_on=runner.finished_on,
            heartbeat_on=runner.heartbeat_on,
            heartbeat_age=runner.heartbeat_age,
            runs=runner.runs,
            worker_hostname=runner.worker_hostname,
            flower_worker_url=flower_worker_url(flower_url, runner.worker_hostname),
        )


class RunnersOut(BaseModel):
    """Runners: running ones first, then newest first."""

    runners: list[RunnerOut]


class RunCountsOut(BaseModel):
    """Runs by status."""

    scheduled: int
    running: int
    success: int
    error: int
    timeout: int
    total: int


class RunBucketOut(BaseModel):
    """Runs that reached their status in ``start <= t < end``."""

    start: datetime
    end: datetime
    runs: RunCountsOut


class RunSeriesOut(BaseModel):
    """Runs by status over time, oldest bucket first."""

    since: datetime
    until: datetime
    handler: str | None
    bucket_seconds: float
    buckets: list[RunBucketOut]

    @classmethod
    def of(cls, series: RunSeries) -> RunSeriesOut:
        """From a report series."""
        return cls(
            since=series.buckets[0].start,
            until=series.buckets[-1].end,
            handler=series.handler,
            bucket_seconds=series.bucket_seconds,
            buckets=[
                RunBucketOut(
                    start=bucket.start,
                    end=bucket.end,
                    runs=RunCountsOut(
                        scheduled=bucket.runs.scheduled,
                        running=bucket.runs.running,
                        success=bucket.runs.success,
                        error=bucket.runs.error,
                        timeout=bucket.runs.timeout,
                        total=bucket.runs.total,
                    ),
                )
                for bucket in series.buckets
            ],
        )


def _storable(value: str | None) -> str | None:
    if value is not None and (problem := text_problem(value)) is not None:
        raise ValueError(problem)
    return value


ShortText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


class EnqueueIn(BaseModel):
    """A task to queue; as :func:`celery_taskq.enqueue` takes it."""

    model_config = ConfigDict(extra="forbid")

    handler: ShortText = Field(description="A registered name or the handler's dotted path.")
    data: Any = Field(default=None, description="JSON data given to the handler (default {}).")
    scheduled_on: AwareDatetime | None = Field(
        default=None, description="When the task is due, with a UTC offset (default: now)."
    )
    max_retries: int | None = Field(
        default=None, ge=1, le=MAX_RETRIES_LIMIT, description="Failed runs before giving up (5)."
    )
    queued_by: ShortText | None = Field(default=None, description="Who queued it (QueuedById).")
    title: ShortText | None = Field(default=None, description="A human-readable title.")
    unique_key: ShortText | None = Field(
        default=None, description="While a task with this key is unfinished, no other is queued."
    )
    queue: str | None = Field(
        default=None,
        description="The named queue its runs go to (default 'default'): ASCII letters, digits,"
        " '_', '-' and '.', at most 64 characters.",
    )
    priority: int | None = Field(
        default=None,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description="Higher priorities are claimed first, then FIFO (default 0).",
    )
    on_duplicate: Literal["return", "raise"] = Field(
        default="return",
        description="With a unique key already taken: answer 200 with the existing task's id "
        "(return), or 409 (raise).",
    )

    @field_validator("handler", "queued_by", "title", "unique_key")
    @classmethod
    def _text_is_storable(cls, value: str | None) -> str | None:
        return _storable(value)

    @field_validator("queue")
    @classmethod
    def _queue_is_a_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_queue_name(value)
        except InvalidArgumentError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("data")
    @classmethod
    def _data_is_storable(cls, value: Any) -> Any:
        problem = json_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("scheduled_on")
    @classmethod
    def _time_is_storable(cls, value: datetime | None) -> datetime | None:
        if value is not None:
            try:
                value.astimezone(UTC)
            except OverflowError:
                raise ValueError("is out of range once converted to UTC") from None
        return value


class EnqueueOut(BaseModel):
    """The queued task (201), or the unfinished task holding the unique key (200)."""

    task_id: int
    created: bool


class CancelOut(BaseModel):
    """A cancelled task; ``still_running``: its running run was asked to stop."""

    task_id: int
    cancelled: bool
    still_running: bool


class RetryOut(BaseModel):
    """The run a manual retry created."""

    task_id: int
    run_id: int


class ResendOut(BaseModel):
    """The new task a re-send created, and the Celery task id its message carries."""

    task_id: int
    celery_task_id: str
    resent_from_id: int


class HealthOut(BaseModel):
    """The dashboard can read the tables."""

    status: Literal["ok"]
