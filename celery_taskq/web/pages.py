"""The dashboard's pages: overview, task list, task, runners, sign-in. Read-only HTML.

Tasks and runs are shown through :mod:`celery_taskq.reports.shown`: any stored value renders, cut
and marked where it is too deep or too large.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from celery_taskq import reports
from celery_taskq.core import listing
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.listing import MAX_PAGE_SIZE, STATUS_FILTERS
from celery_taskq.core.models import RunStatus
from celery_taskq.reports.health import HealthThresholds
from celery_taskq.reports.redact import redacted_task
from celery_taskq.reports.series import first_run_moment
from celery_taskq.reports.shown import shown_relations, shown_task
from celery_taskq.reports.task_steps import task_steps
from celery_taskq.web import inputs, views
from celery_taskq.web.charts import bar_chart, chart_span
from celery_taskq.web.inputs import MAX_ID
from celery_taskq.web.state import WebState, get_state
from celery_taskq.web.task_list import task_list_view
from celery_taskq.web.templating import render

State = Annotated[WebState, Depends(get_state)]

OVERVIEW_WINDOWS = ("1h", "6h", "24h", "7d", "30d")
"""The windows the overview offers."""

DEFAULT_PAGE_SIZE = 50

NOTICES = {
    "queued": "Task queued.",
    "existing": "An unfinished task already holds that unique key: this is it.",
    "cancelled": "Task cancelled.",
    "cancelling": "Task cancelled: its running run is asked to stop.",
    "retried": "A new run was created.",
    "resent": "Re-sent: this is the new task, published to Celery again.",
    "signed-in": "Signed in: enqueue, cancel and retry are allowed.",
    "signed-out": "Signed out.",
}
"""Fixed messages a redirect after a form may show (chosen by code, never echoed input)."""

RELATION_LABELS = {
    "parent": "parent",
    "root": "root",
    "group": "group",
    "chord": "chord callback",
    "resent_from": "re-sends task",
}
"""How the task page names each relation of a native Celery task."""

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def overview(
    request: Request,
    state: State,
    since: Annotated[str, Query()] = "24h",
) -> Response:
    """Counts by status, runs over time, failures and due work for a window."""
    if since not in OVERVIEW_WINDOWS:
        raise InvalidArgumentError(f"since must be one of {', '.join(OVERVIEW_WINDOWS)}")
    now = reports.utc_now()
    window = inputs.window(since, None, now)
    report = reports.build_report(
        state.database,
        since=window.since,
        now=now,
        limit=5,
        lost_after=state.settings.native_lost_after,
    )
    whole = reports.ReportWindow(window.since, now)
    span = chart_span(first_run_moment(state.database, whole), whole)
    series = reports.runs_over_time(
        state.database, reports.ReportWindow(span.start, span.end), span.buckets
    )
    return render(
        request,
        "overview.html",
        {
            "since": since,
            "windows": OVERVIEW_WINDOWS,
            "report": report,
            "chart": bar_chart(series),
            "chart_since": span.start if span.start != whole.since else None,
            "statuses": [status.value for status in RunStatus],
        },
    )


@router.get("/tasks", response_class=HTMLResponse)
def tasks(
    request: Request,
    state: State,
    status: str | None = None,
    handler: str | None = None,
    queued_by: str | None = None,
    since: str | None = None,
    until: str | None = None,
    celery_root_id: str | None = None,
    celery_group_id: str | None = None,
    q: str | None = None,
    sort: str | None = None,
    order: str | None = None,
    offset: str | None = None,
    before_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
) -> Response:
    """Tasks, filtered, searched (``q``) and sorted (``sort``, ``order``); newest first pages
    on by ``before_id``, any other order by ``offset`` (see :mod:`celery_taskq.web.task_list`)."""
    filters = {
        "status": status or "",
        "handler": handler or "",
        "queued_by": queued_by or "",
        "since": since or "",
        "until": until or "",
        "celery_root_id": celery_root_id or "",
        "celery_group_id": celery_group_id or "",
    }
    view = task_list_view(
        state,
        filters,
        search=q,
        sort=sort,
        order=order,
        offset=offset,
        before_id=before_id,
        limit=limit,
        default_limit=DEFAULT_PAGE_SIZE,
    )
    return render(
        request,
        "tasks.html",
        {
            **view.context(),
            "filters": filters,
            "statuses": list(STATUS_FILTERS),
            "paged": bool(before_id or offset),
        },
        status_code=400 if view.error else 200,
    )


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task(
    request: Request,
    state: State,
    task_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    done: str | None = None,
) -> Response:
    """A task, its Celery relations, and every run: status, times, runner, output, results,
    live progress."""
    stored = state.service.get_task(task_id)
    relations = shown_relations(listing.related_tasks(state.database, stored))
    snapshot = shown_task(redacted_task(stored, state.settings.redact_patterns))
    return render(
        request,
        "task.html",
        {
            "task": snapshot,
            "relations": relations,
            "relation_labels": RELATION_LABELS,
            "steps": task_steps(snapshot),
            "runs": [
                {
                    "run": run,
                    "duration": views.run_duration(run),
                    "open": views.run_is_open(run),
                    "flower_task_url": views.flower_task_url(state.settings.flower_url, run),
                }
                for run in snapshot.runs
            ],
            "any_open": any(views.run_is_open(run) for run in snapshot.runs),
            "can_cancel": views.can_cancel(snapshot),
            "can_retry": views.can_retry(snapshot, snapshot.runs),
            "native": views.is_native(snapshot),
            "can_resend": views.can_resend(
                snapshot, reports.utc_now(), state.settings.native_lost_after
            ),
            "resend_ready": state.celery_app is not None,
            "notice": NOTICES.get(done or ""),
        },
    )


@router.get("/runs/{run_id}")
def run(state: State, run_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> RedirectResponse:
    """A run's place on its task's page."""
    found = state.service.get_run(run_id)
    return RedirectResponse(f"/tasks/{found.task_queue_id}#run-{found.id}", status_code=303)


@router.get("/runners", response_class=HTMLResponse)
def runners(request: Request, state: State) -> Response:
    """Runners, running first, with heartbeat ages, runs taken and Flower links."""
    now = reports.utc_now()
    found = reports.runners(state.database, reports.ReportWindow(), now=now, limit=200)
    stale_after = HealthThresholds.of(state.settings).stale_heartbeat
    return render(
        request,
        "runners.html",
        {
            "runners": [
                {
                    "runner": runner,
                    "flower_worker_url": views.flower_worker_url(
                        state.settings.flower_url, runner.worker_hostname
                    ),
                    "stale": views.runner_is_stale(runner, now, stale_after),
                }
                for runner in found
            ],
            "counts": reports.runner_counts(state.database),
            "stale_after": stale_after,
        },
    )


@router.get("/login", response_class=HTMLResponse)
def login(request: Request, done: str | None = None) -> Response:
    """The sign-in form (only useful when a token is configured)."""
    return render(request, "login.html", {"notice": NOTICES.get(done or ""), "error": None})
