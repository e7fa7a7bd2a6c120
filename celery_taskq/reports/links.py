"""Links from what is shown to where else it can be seen: the dashboard's task page and
Flower's task and worker pages (the dashboard, the HTTP API and ``celery-taskq show`` build
them here). A link is ``None`` when its base URL is not configured or the id is unknown."""

from __future__ import annotations

from urllib.parse import quote

from celery_taskq.core.snapshots import RunSnapshot


def flower_task_url(flower_url: str, run: RunSnapshot) -> str | None:
    """Flower's page of the run's Celery task, when Flower is configured and the id known."""
    return flower_celery_task_url(flower_url, run.celery_task_id)


def flower_celery_task_url(flower_url: str, celery_task_id: str | None) -> str | None:
    """Flower's page of a Celery task id, when Flower is configured and the id known."""
    if not flower_url or not celery_task_id:
        return None
    return f"{flower_url.rstrip('/')}/task/{quote(celery_task_id, safe='')}"


def flower_worker_url(flower_url: str, worker_hostname: str | None) -> str | None:
    """Flower's page of a Celery worker (``celery@host``), when Flower is configured."""
    if not flower_url or not worker_hostname:
        return None
    return f"{flower_url.rstrip('/')}/worker/{quote(worker_hostname, safe='@')}"


def dashboard_task_url(dashboard_url: str, task_id: int) -> str | None:
    """The dashboard's page of a task, when the dashboard's address is configured."""
    if not dashboard_url:
        return None
    return f"{dashboard_url.rstrip('/')}/tasks/{task_id}"
