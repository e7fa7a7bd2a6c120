"""The public API: :func:`enqueue` and :func:`get_task`.

Calls without an explicit ``database_url`` use the settings resolved from the environment
(``TASKQ_DATABASE_URL``, default a SQLite file in the working directory); one engine is kept per
process and URL.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from datetime import datetime
from typing import Any

from celery_taskq.db import Database
from celery_taskq.queue import TaskQueueService
from celery_taskq.settings import Settings
from celery_taskq.snapshots import TaskSnapshot

_services: dict[tuple[int, str], TaskQueueService] = {}
_services_lock = threading.Lock()


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
    database_url: str | None = None,
) -> int:
    """Queue a task for ``handler`` with JSON ``data``; return its ``TaskQueue.Id``.

    The handler is loaded and checked, ``data`` must be JSON-serialisable, ``max_retries``
    (default 5) must be at least 1 and ``scheduled_on`` (default now) timezone-aware. Any
    refusal raises a :class:`~celery_taskq.exceptions.InvalidTaskError` and writes nothing.
    """
    return get_service(database_url).add_task(
        handler, data, scheduled_on=scheduled_on, max_retries=max_retries, queued_by=queued_by
    )


def get_task(task_id: int, *, database_url: str | None = None) -> TaskSnapshot:
    """A frozen snapshot of a task and all its runs, oldest run first."""
    return get_service(database_url).get_task(task_id)


def close_all() -> None:
    """Dispose every engine the API opened in this process (tests, clean shutdown)."""
    with _services_lock:
        for service in _services.values():
            service.database.close()
        _services.clear()
