"""The Insight page (``/insight``): per-handler figures over a window, the due backlog per
queue, and beat ticks and runner heartbeats judged by the health checks' thresholds.

Every figure comes from :mod:`celery_taskq.reports`; staleness is judged against
:class:`~celery_taskq.reports.health.HealthThresholds` derived from the settings, so the page
highlights what ``celery-taskq health`` would fail on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from celery_taskq import reports
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import RunnerStatus
from celery_taskq.reports.backlog import BEAT_EVENTS, QueueBacklog, beat_tick_ages, due_backlog
from celery_taskq.reports.handler_table import handler_table
from celery_taskq.reports.health import HealthThresholds
from celery_taskq.reports.runner_report import RunnerReport
from celery_taskq.web import inputs, views
from celery_taskq.web.state import WebState, get_state
from celery_taskq.web.templating import render

State = Annotated[WebState, Depends(get_state)]

INSIGHT_WINDOWS = ("1h", "6h", "24h", "7d", "30d")
"""The windows the page offers."""

HANDLER_ROWS = 100
"""Handlers shown, busiest first."""

RUNNER_ROWS = 200
"""Running runners shown."""

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class BeatTick:
    """A periodic event's last tick: its age (``None``: never ticked) and whether it is stale."""

    event: str
    age: float | None
    stale: bool


@dataclass(frozen=True)
class QueueRow:
    """A queue's due backlog, and whether its oldest due run has waited too long."""

    backlog: QueueBacklog
    stale: bool


@dataclass(frozen=True)
class RunnerRow:
    """A running runner, and whether its heartbeat is older than a live runner's could be."""

    runner: RunnerReport
    stale: bool


@router.get("/insight", response_class=HTMLResponse)
def insight(
    request: Request,
    state: State,
    since: Annotated[str, Query()] = "24h",
) -> Response:
    """Per-handler runs, failure rate, p50/p95 and throughput; queues; beat and heartbeats."""
    if since not in INSIGHT_WINDOWS:
        raise InvalidArgumentError(f"since must be one of {', '.join(INSIGHT_WINDOWS)}")
    now = reports.utc_now()
    window = reports.ReportWindow(inputs.window(since, None, now).since, now)
    limits = HealthThresholds.of(state.settings)
    ages = beat_tick_ages(state.database, now=now)
    running = [
        runner
        for runner in reports.runners(
            state.database, reports.ReportWindow(since=now), now=now, limit=RUNNER_ROWS
        )
        if runner.status is RunnerStatus.RUNNING
    ]
    return render(
        request,
        "insight.html",
        {
            "since": since,
            "windows": INSIGHT_WINDOWS,
            "handlers": handler_table(state.database, window, limit=HANDLER_ROWS),
            "queues": [
                QueueRow(backlog, backlog.oldest_due_age > limits.max_due_age)
                for backlog in due_backlog(state.database, now=now)
            ],
            "ticks": [
                BeatTick(event, ages.get(event), _stale(ages.get(event), limits.max_tick_age))
                for event in BEAT_EVENTS
            ],
            "runners": [
                RunnerRow(runner, views.runner_is_stale(runner, now, limits.stale_heartbeat))
                for runner in running
            ],
            "limits": limits,
        },
    )


def _stale(age: float | None, limit: float) -> bool:
    """An age is stale past ``limit``, and so is one never recorded."""
    return age is None or age > limit
