"""The HTTP API under ``/api/v1``: JSON over the same layers as the pages.

Reads are open; enqueue, cancel, retry and resend need the dashboard token (see
:mod:`celery_taskq.web.auth`). Errors are ``{"error": "<message>"}`` with the status of
:mod:`celery_taskq.web.errors`. Stored values are answered as :mod:`celery_taskq.reports.shown`
shows them: whatever was stored renders, cut and marked where it is too deep or too large.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response

from celery_taskq import reports
from celery_taskq.core import listing
from celery_taskq.core.exceptions import (
    ConfigurationError,
    DuplicateTaskError,
    InvalidArgumentError,
    PublishError,
)
from celery_taskq.core.listing import MAX_PAGE_SIZE, TaskFilter
from celery_taskq.reports.redact import redacted_task
from celery_taskq.reports.search import (
    MAX_OFFSET,
    MAX_SEARCH_LENGTH,
    TaskQuery,
    find_tasks,
)
from celery_taskq.reports.shown import shown_relations, shown_run, shown_task
from celery_taskq.web import inputs
from celery_taskq.web.auth import require_api_token
from celery_taskq.web.errors import ApiError
from celery_taskq.web.inputs import MAX_ID, JsonBodyRoute
from celery_taskq.web.schemas import (
    CancelOut,
    EnqueueIn,
    EnqueueOut,
    ErrorOut,
    HealthOut,
    ResendOut,
    RetryOut,
    RunnerOut,
    RunnersOut,
    RunOut,
    RunSeriesOut,
    TaskOut,
    TaskPageOut,
    TaskSummaryOut,
)
from celery_taskq.web.state import WebState, get_state

API_PATH = "/api/v1"

State = Annotated[WebState, Depends(get_state)]
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="TaskQueue.Id")]
RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="TaskRuns.Id")]
Since = Annotated[
    str | None,
    Query(description="ISO 8601 time with a UTC offset, or a duration back from now (24h)."),
]
Until = Annotated[str | None, Query(description="End (excluded); same forms as since.")]
Handler = Annotated[str | None, Query(description="Exact TaskHandlerClass.")]

StatusName = Literal[
    "scheduled", "running", "success", "error", "timeout", "cancelled", "never-run"
]
"""A status filter's name (``listing.STATUS_FILTERS``; a test keeps the two equal)."""

SortName = Literal["id", "queued", "handler", "status", "queued_by"]
"""A sortable column's name (``search.SORT_COLUMNS``; a test keeps the two equal)."""


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Bad input (an unknown handler, refused data, a bad filter or time).",
        401: "The dashboard token is missing or wrong.",
        403: "Writes are disabled: no dashboard token is configured.",
        404: "No such task or run.",
        409: "Conflict: the unique key is taken, or the task cannot be cancelled, retried or "
        "re-sent (or this dashboard has no Celery app to re-send with).",
        422: "The request does not match the schema, or its task data is nested too deeply or "
        "too large (the message names the limit).",
        503: "The database is not reachable or its schema is not ready; for a re-send, the "
        "broker could not take the message.",
    }
    return {code: {"model": ErrorOut, "description": descriptions[code]} for code in codes}


READ_ERRORS = _errors(400, 422, 503)
WRITE_ERRORS = _errors(400, 401, 403, 404, 409, 422, 503)

router = APIRouter(prefix=API_PATH, tags=["api"], route_class=JsonBodyRoute)


@router.get("/health", response_model=HealthOut, responses=_errors(503))
def health(state: State) -> HealthOut:
    """The tables can be read."""
    listing.list_tasks(state.database, TaskFilter(), limit=1)
    return HealthOut(status="ok")


@router.get("/tasks", response_model=TaskPageOut, responses=READ_ERRORS)
def list_tasks(
    state: State,
    status: Annotated[
        StatusName | None,
        Query(description="LastStatus, or cancelled (a cancel was asked) or never-run."),
    ] = None,
    handler: Handler = None,
    queued_by: Annotated[str | None, Query(description="QueuedById.")] = None,
    since: Since = None,
    until: Until = None,
    celery_root_id: Annotated[
        str | None, Query(description="A Celery workflow: tasks with this CeleryRootId.")
    ] = None,
    celery_group_id: Annotated[
        str | None, Query(description="A Celery group's members: tasks with this CeleryGroupId.")
    ] = None,
    q: Annotated[
        str | None,
        Query(
            description="Free text, matched case-insensitively and literally in the title, "
            f"handler, queued-by, Celery task id and data (at most {MAX_SEARCH_LENGTH} "
            "characters)."
        ),
    ] = None,
    sort: Annotated[SortName, Query(description="The column to sort by.")] = "id",
    order: Annotated[
        Literal["asc", "desc"], Query(description="Ties are broken by id, in the same order.")
    ] = "desc",
    before_id: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="Page cursor of the default order (id, desc)."),
    ] = None,
    offset: Annotated[
        int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip in any other order.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> TaskPageOut:
    """Tasks, filtered, searched and sorted, a page at a time: newest first by keyset
    pagination, or in another order by a bounded offset."""
    task_filter = inputs.task_filter(
        status=status,
        handler=handler,
        queued_by=queued_by,
        since=since,
        until=until,
        now=reports.utc_now(),
        celery_root_id=celery_root_id,
        celery_group_id=celery_group_id,
    )
    query = TaskQuery(
        task_filter,
        search=q,
        sort=sort,
        order=order,
        limit=limit,
        before_id=before_id,
        offset=offset,
    )
    page = find_tasks(state.database, query)
    return TaskPageOut(
        tasks=[
            TaskSummaryOut.of(shown_task(redacted_task(task, state.settings.redact_patterns)))
            for task in page.tasks
        ],
        next_before_id=page.next_before_id,
        next_offset=page.next_offset,
        search_window_bounded=page.window_bounded,
    )


@router.get("/tasks/{task_id}", response_model=TaskOut, responses=_errors(404, 422, 503))
def get_task(state: State, task_id: TaskId) -> TaskOut:
    """A task with its relations (native Celery tasks: parent, root, group, chord, re-sent
    from, each with the task holding that id) and every run, oldest first."""
    snapshot = state.service.get_task(task_id)
    relations = shown_relations(listing.related_tasks(state.database, snapshot))
    task = redacted_task(snapshot, state.settings.redact_patterns)
    return TaskOut.of_snapshot(shown_task(task), state.settings.flower_url, relations, API_PATH)


@router.get("/runs/{run_id}", response_model=RunOut, responses=_errors(404, 422, 503))
def get_run(state: State, run_id: RunId) -> RunOut:
    """One run: status, times, progress, output, results."""
    return RunOut.of(shown_run(state.service.get_run(run_id)), state.settings.flower_url)


@router.get("/runners", response_model=RunnersOut, responses=READ_ERRORS)
def list_runners(
    state: State,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=reports.MAX_LIMIT)] = 50,
) -> RunnersOut:
    """Runners alive at some time in the window (default: ever): running first, then newest."""
    now = reports.utc_now()
    window = inputs.window(since, until, now)
    found = reports.runners(state.database, window, now=now, limit=limit)
    return RunnersOut(runners=[RunnerOut.of(row, state.settings.flower_url) for row in found])


@router.get("/report", response_model=dict[str, Any], responses=READ_ERRORS)
def report(
    state: State,
    since: Annotated[
        str | None,
        Query(description="Start of the window: ISO 8601 or a duration back from now (24h)."),
    ] = "24h",
    until: Until = None,
    handler: Handler = None,
    limit: Annotated[int, Query(ge=1, le=reports.MAX_LIMIT)] = reports.DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Every figure of ``celery-taskq report --json`` for the window."""
    now = reports.utc_now()
    window = inputs.window(since, until, now)
    built = reports.build_report(
        state.database,
        since=window.since,
        until=window.until,
        handler=inputs.optional_text(handler, "handler"),
        now=now,
        limit=limit,
        lost_after=state.settings.native_lost_after,
    )
    return reports.report_as_dict(built)


@router.get("/runs-over-time", response_model=RunSeriesOut, responses=READ_ERRORS)
def runs_over_time(
    state: State,
    since: Annotated[str | None, Query(description="Start: ISO 8601 or a duration (24h).")] = (
        "24h"
    ),
    until: Annotated[str | None, Query(description="End (default: now).")] = None,
    buckets: Annotated[int, Query(ge=1, le=reports.MAX_BUCKETS)] = 24,
    handler: Handler = None,
) -> RunSeriesOut:
    """Runs by status in equal buckets of the window, oldest first."""
    now = reports.utc_now()
    window = inputs.window(since, until or None, now, default_since="24h")
    if window.until is None:
        window = reports.ReportWindow(window.since, now)
    series = reports.runs_over_time(
        state.database, window, buckets, handler=inputs.optional_text(handler, "handler")
    )
    return RunSeriesOut.of(series)


@router.post(
    "/tasks",
    status_code=201,
    response_model=EnqueueOut,
    responses={200: {"model": EnqueueOut, "description": "The key's task."}, **WRITE_ERRORS},
    dependencies=[Depends(require_api_token)],
)
def enqueue(state: State, body: EnqueueIn, response: Response) -> EnqueueOut:
    """Queue a task (201); with a unique key already taken, the existing task (200) or 409."""
    try:
        task_id = state.service.add_task(
            body.handler,
            body.data,
            scheduled_on=body.scheduled_on,
            max_retries=body.max_retries,
            queued_by=body.queued_by,
            title=body.title,
            unique_key=body.unique_key,
            queue=body.queue,
            priority=body.priority,
            on_duplicate="raise",
            create_run=True,
        )
    except DuplicateTaskError as exc:
        if body.on_duplicate == "raise" or exc.existing_id is None:
            raise
        response.status_code = 200
        return EnqueueOut(task_id=exc.existing_id, created=False)
    return EnqueueOut(task_id=task_id, created=True)


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=CancelOut,
    responses=WRITE_ERRORS,
    dependencies=[Depends(require_api_token)],
)
def cancel(state: State, task_id: TaskId) -> CancelOut:
    """Cancel a task: a queued run never starts; a running one is asked to stop."""
    try:
        still_running = state.service.cancel_task(task_id)
    except InvalidArgumentError as exc:  # cancelled, finished or native: a conflict
        raise ApiError(409, str(exc)) from exc
    return CancelOut(task_id=task_id, cancelled=True, still_running=still_running)


@router.post(
    "/tasks/{task_id}/retry",
    response_model=RetryOut,
    responses=WRITE_ERRORS,
    dependencies=[Depends(require_api_token)],
)
def retry(state: State, task_id: TaskId) -> RetryOut:
    """Give a task one more run now, even past its retries."""
    try:
        run_id = state.service.retry_task(task_id)
    except InvalidArgumentError as exc:  # a run in progress, or native: a conflict
        raise ApiError(409, str(exc)) from exc
    return RetryOut(task_id=task_id, run_id=run_id)


@router.post(
    "/tasks/{task_id}/resend",
    status_code=201,
    response_model=ResendOut,
    responses=WRITE_ERRORS,
    dependencies=[Depends(require_api_token)],
)
def resend(
    state: State,
    task_id: TaskId,
    queued_by: Annotated[
        str | None,
        Query(min_length=1, max_length=255, description="Who asks (QueuedById of the re-send)."),
    ] = None,
) -> ResendOut:
    """Publish a native Celery task that failed for good (or is possibly lost) again, with its
    stored name, args and kwargs, as a new task linked to it (201). Needs the dashboard
    started with the Celery app (``celery-taskq -A <app> dashboard``)."""
    from celery_taskq.celery.resend import resend_task  # Celery only when re-sending

    who = inputs.optional_text(queued_by, "queued_by") or "http-api"
    try:
        resent = resend_task(state.service, state.celery_app, task_id, queued_by=who)
    except (InvalidArgumentError, ConfigurationError) as exc:  # not failed, or no app here
        raise ApiError(409, str(exc)) from exc
    except PublishError as exc:  # the broker: nothing was sent
        raise ApiError(503, str(exc)) from exc
    return ResendOut(
        task_id=resent.task_id,
        celery_task_id=resent.celery_task_id,
        resent_from_id=resent.resent_from_id,
    )
