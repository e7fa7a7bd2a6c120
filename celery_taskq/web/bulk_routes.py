"""Bulk retry and cancel from the task list: a confirmation page, then the action.

1. ``GET /bulk?action=retry&task_id=…`` (the task list's checkboxes) or
   ``GET /bulk?action=retry&all=1&status=…`` (every task matching the list's filter) shows how
   many tasks would be changed, and which, with a confirm button. It writes nothing. A
   selection above :data:`~celery_taskq.core.bulk.MAX_BULK_TASKS` is refused (400) here.
2. ``POST /bulk/retry`` or ``/bulk/cancel`` with the confirmed ids acts: checked like every
   dashboard write (:func:`celery_taskq.web.forms.write_form`: writes enabled, this origin,
   the token or the session with its CSRF token), then the selection is checked whole, then
   each task is retried or cancelled on its own (:mod:`celery_taskq.core.bulk`). The page shows
   each task's outcome; the log records who asked (action ``tasks_bulk_retry`` or
   ``tasks_bulk_cancel``).

The ids confirmed are the ids acted on: tasks that came to match the filter after the
confirmation page was shown are not touched.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from celery_taskq import reports
from celery_taskq.core.bulk import MAX_BULK_TASKS, apply_bulk, check_selection, parse_action
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.reports.search import TaskQuery, find_tasks
from celery_taskq.web import inputs
from celery_taskq.web.auth import WRITES_DISABLED, token_matches
from celery_taskq.web.errors import ApiError
from celery_taskq.web.forms import write_form
from celery_taskq.web.state import WebState, get_state
from celery_taskq.web.templating import render

State = Annotated[WebState, Depends(get_state)]

FILTER_FIELDS = (
    "status",
    "handler",
    "queued_by",
    "since",
    "until",
    "celery_root_id",
    "celery_group_id",
)
"""The task list's filter fields that "all matching this filter" carries (and ``q``, the
search)."""

router = APIRouter(include_in_schema=False)


def matching_ids(state: WebState, request: Request) -> tuple[tuple[int, ...], bool]:
    """The ids of every task the task list's filter and search (in the query) match, newest
    first, and whether the search looked only at the newest tasks (its window, on SQLite or
    for short text); refused when more than :data:`MAX_BULK_TASKS` match."""
    filters = {name: request.query_params.get(name) for name in FILTER_FIELDS}
    query = TaskQuery(
        inputs.task_filter(now=reports.utc_now(), **filters),
        search=request.query_params.get("q"),
        limit=MAX_BULK_TASKS,
    )
    page = find_tasks(state.database, query)
    if page.next_before_id is not None:
        raise InvalidArgumentError(
            f"a bulk action takes at most {MAX_BULK_TASKS} tasks, and more than that match "
            "this filter: narrow the filter; nothing was changed"
        )
    return tuple(task.id for task in page.tasks), page.window_bounded


@router.get("/bulk")
def confirm(
    request: Request,
    state: State,
    action: str,
    task_id: Annotated[list[str] | None, Query()] = None,
    select_all: Annotated[str | None, Query(alias="all")] = None,
) -> Response:
    """The confirmation page: the action, how many tasks, and which. Writes nothing."""
    if not state.writes_enabled:
        raise ApiError(403, WRITES_DISABLED)
    chosen = parse_action(action)
    window_bounded = False
    if select_all == "1":
        selection, window_bounded = matching_ids(state, request)
        if not selection:
            raise InvalidArgumentError("no task matches this filter; nothing was changed")
    else:
        selection = check_selection(task_id or [])
    return render(
        request,
        "bulk.html",
        {
            "action": chosen.value,
            "selection": selection,
            "task_ids": ",".join(str(task) for task in selection),
            "matching": select_all == "1",
            "window_bounded": window_bounded,
            "report": None,
            "maximum": MAX_BULK_TASKS,
        },
    )


@router.post("/bulk/{action}")
async def act(request: Request, state: State, action: str) -> Response:
    """Retry or cancel the confirmed tasks, each on its own; the page shows every outcome."""
    form = await write_form(request, state)
    chosen = parse_action(action)
    selection = check_selection(part for part in form.get("task_ids", "").split(",") if part)
    how = "token" if token_matches(form.get("token"), state.settings.dashboard_token) else "session"
    client = request.client.host if request.client else "unknown"
    report = await run_in_threadpool(
        apply_bulk, state.service, chosen, selection, by=f"dashboard ({how}, {client})"
    )
    return render(
        request,
        "bulk.html",
        {
            "action": chosen.value,
            "selection": selection,
            "task_ids": "",
            "matching": False,
            "window_bounded": False,
            "report": report,
            "maximum": MAX_BULK_TASKS,
        },
    )
