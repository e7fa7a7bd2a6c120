"""What pages and API answers derive from snapshots: durations, Flower links
(:mod:`celery_taskq.reports.links`), allowed actions."""

from __future__ import annotations

from datetime import datetime

from celery_taskq.core.models import (
    CELERY_HANDLER_PREFIX,
    FAILED_RUN_STATUSES,
    OPEN_RUN_STATUSES,
    RunnerStatus,
    RunStatus,
)
from celery_taskq.core.resend import state_refusal
from celery_taskq.core.snapshots import RunSnapshot, TaskSummary
from celery_taskq.reports.links import flower_task_url as flower_task_url
from celery_taskq.reports.links import flower_worker_url as flower_worker_url
from celery_taskq.reports.runner_report import RunnerReport


def run_duration(run: RunSnapshot) -> float | None:
    """Seconds from ``StartedOn`` to ``FinishedOn``; ``None`` unless both are set."""
    if run.started_on is None or run.finished_on is None:
        return None
    return (run.finished_on - run.started_on).total_seconds()


def run_is_open(run: RunSnapshot) -> bool:
    """Whether the run is ``scheduled`` or ``running`` (its progress may still change)."""
    return run.status in OPEN_RUN_STATUSES


def is_native(task: TaskSummary) -> bool:
    """An audited native Celery task: Celery, not this queue, cancels and retries it."""
    return task.task_handler_class.startswith(CELERY_HANDLER_PREFIX)


def is_finished(task: TaskSummary) -> bool:
    """Succeeded, or out of retries after a failure: no further run comes by itself."""
    if task.last_status is RunStatus.SUCCESS:
        return True
    return task.last_status in FAILED_RUN_STATUSES and task.task_runs_failed >= task.max_retries


def can_cancel(task: TaskSummary) -> bool:
    """Whether the queue would accept a cancel (not native, not cancelled, not finished)."""
    return not is_native(task) and task.cancel_requested_on is None and not is_finished(task)


def can_retry(task: TaskSummary, runs: tuple[RunSnapshot, ...]) -> bool:
    """Whether the queue would accept a manual retry (not native, no run in progress)."""
    return not is_native(task) and not any(run_is_open(run) for run in runs)


def can_resend(task: TaskSummary, now: datetime, lost_after: float) -> bool:
    """Whether a re-send would be accepted: a native task that failed for good, or is
    possibly lost (never started ``lost_after`` seconds past due)."""
    if not is_native(task):
        return False
    refusal = state_refusal(
        task.id,
        task.last_status,
        task.task_runs_failed,
        task.max_retries,
        task.scheduled_on,
        now,
        lost_after,
    )
    return refusal is None


def runner_is_stale(runner: RunnerReport, now: datetime, limit: float) -> bool:
    """A ``running`` runner whose heartbeat (with none yet, its start) is older than ``limit``
    seconds: what the health check's ``runners`` check fails on (``HealthThresholds``'s
    ``stale_heartbeat``)."""
    if runner.status is not RunnerStatus.RUNNING:
        return False
    age = runner.heartbeat_age
    if age is None:
        age = (now - runner.started_on).total_seconds()
    return age > limit
