"""The public API: :func:`enqueue` and :func:`get_task`.

Calls without an explicit ``database_url`` use the settings resolved from the environment
(``TASKQ_DATABASE_URL``, default a SQLite file in the working directory); one engine is kept per
process and URL.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from celery_taskq import listing
from celery_taskq.db import Database
from celery_taskq.listing import TaskFilter, TaskPage, parse_status
from celery_taskq.models import RunStatus
from celery_taskq.queue import TaskQueueService
from celery_taskq.settings import Settings
from celery_taskq.snapshots import RunSnapshot, TaskSnapshot

EnqueueHook = Callable[[TaskQueueService, int, bool], None]
"""Called after :func:`enqueue` with the service, the new task id and whether it is due now."""

_enqueue_hooks: list[EnqueueHook] = []
_services: dict[tuple[int, str], TaskQueueService] = {}
_services_lock = threading.Lock()
logger = logging.getLogger(__name__)


def get_service(
    database_url: str | None = None, settings: Settings | None = None
) -> TaskQueueService:
    """The process-wide queue service for ``database_url`` (default: from settings)."""
    settings = settings or Settings.resolve()
    url = database_url or settings.database_url
    key = (os.getpid(), url)
    with _services_lock:
        service = _services.get(key)
        if service is None:
            settings = replace(settings, database_url=url)
            service = TaskQueueService(Database(url), settings)
            _services[key] = service
        return service


def enqueue(
    handler: str,
    data: Any = None,
    *,
    scheduled_on: datetime | None = None,
    max_retries: int | None = None,
    queued_by: str | None = None,
    title: str | None = None,
    unique_key: str | None = None,
    on_duplicate: str = "return",
    database_url: str | None = None,
) -> int:
    """Queue a task for ``handler`` with JSON ``data``; return its ``TaskQueue.Id``.

    The handler is loaded and checked, ``data`` must be JSON-serialisable, ``max_retries``
    (default 5) must be at least 1 and ``scheduled_on`` (default now) timezone-aware. Any
    refusal raises a :class:`~celery_taskq.exceptions.InvalidTaskError` and writes nothing.

    A task that is due gets its run in the same transaction, so a runner can start it at once
    rather than at the next OnProcess tick. While a task with the same ``unique_key`` is
    unfinished, its id is returned instead (or, with ``on_duplicate="raise"``,
    :class:`~celery_taskq.exceptions.DuplicateTaskError` is raised).
    """
    service = get_service(database_url)
    task_id = service.add_task(
        handler,
        data,
        scheduled_on=scheduled_on,
        max_retries=max_retries,
        queued_by=queued_by,
        title=title,
        unique_key=unique_key,
        on_duplicate=on_duplicate,
        create_run=True,
    )
    due = scheduled_on is None or scheduled_on <= service.clock()
    for hook in list(_enqueue_hooks):
        try:
            hook(service, task_id, due)
        except Exception:  # the task is recorded; a hook only speeds its start up
            logger.exception(
                "enqueue hook %r failed for task %s",
                hook,
                task_id,
                extra={"action": "enqueue_hook_failed", "queue_id": task_id},
            )
    return task_id


def add_enqueue_hook(hook: EnqueueHook) -> None:
    """Call ``hook`` after every :func:`enqueue` in this process (the Celery layer uses it)."""
    if hook not in _enqueue_hooks:
        _enqueue_hooks.append(hook)


def get_task(task_id: int, *, database_url: str | None = None) -> TaskSnapshot:
    """A frozen snapshot of a task and all its runs, oldest run first."""
    return get_service(database_url).get_task(task_id)


def list_tasks(
    *,
    status: str | RunStatus | None = None,
    handler: str | None = None,
    queued_by: str | None = None,
    queued_since: datetime | None = None,
    queued_until: datetime | None = None,
    limit: int = 50,
    before_id: int | None = None,
    database_url: str | None = None,
) -> TaskPage:
    """Tasks, newest first, filtered by last status, handler, queued-by and queue time.

    Returns one page; pass its ``next_before_id`` as ``before_id`` for the next one.
    """
    task_filter = TaskFilter(
        status=parse_status(status),
        handler=handler,
        queued_by=queued_by,
        queued_since=queued_since,
        queued_until=queued_until,
    )
    database = get_service(database_url).database
    return listing.list_tasks(database, task_filter, limit=limit, before_id=before_id)


def watch(
    run_id: int,
    *,
    interval: float = 0.25,
    timeout: float | None = None,
    database_url: str | None = None,
) -> Iterator[RunSnapshot]:
    """Yield a run's snapshot each time it changes (progress, status), until it has finished."""
    return get_service(database_url).watch_run(run_id, interval=interval, timeout=timeout)


def cancel(task_id: int, *, database_url: str | None = None) -> bool:
    """Cancel a task: a queued one never runs; a running one is asked to stop cooperatively.

    Returns whether a run is still running (it ends ``error`` with code ``cancelled`` when its
    handler next reports progress or calls ``run.raise_if_cancelled()``).
    """
    return get_service(database_url).cancel_task(task_id)


def retry(task_id: int, *, database_url: str | None = None) -> int:
    """Give a finished task one more run now, even past its retries; return the run id."""
    return get_service(database_url).retry_task(task_id)


def close_all() -> None:
    """Dispose every engine the API opened in this process (tests, clean shutdown)."""
    with _services_lock:
        for service in _services.values():
            service.database.close()
        _services.clear()
