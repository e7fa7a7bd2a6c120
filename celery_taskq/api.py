"""The public API: enqueue (one, many, multi-step), get, list, watch, cancel, retry, and
add a schedule.

Calls without an explicit ``database_url`` use the settings resolved from the environment
(``TASKQ_DATABASE_URL``, default a SQLite file in the working directory); one engine is kept per
process and URL.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.orm import Session

from celery_taskq.core import listing
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.intake import TaskSpec
from celery_taskq.core.listing import TaskFilter, TaskPage, parse_status
from celery_taskq.core.models import RunStatus
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.schedules import ScheduleService, ScheduleSnapshot
from celery_taskq.core.schedules_spec import ScheduleSpec
from celery_taskq.core.settings import ENV_PREFIX, Settings
from celery_taskq.core.snapshots import RunSnapshot, TaskSnapshot
from celery_taskq.core.steps import STEPS_HANDLER, Step, steps_data
from celery_taskq.core.storage.database import Database

EnqueueHook = Callable[[TaskQueueService, int, bool], None]
"""Called after :func:`enqueue` with the service, the new task id and whether it is due now."""

_enqueue_hooks: list[EnqueueHook] = []
_services: dict[tuple[int, str], TaskQueueService] = {}
_environment_services: dict[tuple[int, str | None], TaskQueueService] = {}
"""The service of each ``TASKQ_DATABASE_URL`` value seen (``None``: unset), per process."""
_DATABASE_URL_ENV = f"{ENV_PREFIX}DATABASE_URL"
_services_lock = threading.Lock()
logger = logging.getLogger(__name__)


def get_service(
    database_url: str | None = None, settings: Settings | None = None
) -> TaskQueueService:
    """The process-wide queue service for ``database_url`` (default: from settings).

    Without either argument the settings are resolved from the environment once per value of
    ``TASKQ_DATABASE_URL``: a service keeps the settings it was made with, and resolving them
    again costs about as much as a fast ``enqueue()``'s round trip.
    """
    environment_key = None
    if settings is None:  # every enqueue() asks: skip resolving the settings when cached
        pid = os.getpid()
        if database_url is not None:
            cached = _services.get((pid, database_url))
        else:
            environment_key = (pid, os.environ.get(_DATABASE_URL_ENV))
            cached = _environment_services.get(environment_key)
        if cached is not None:
            return cached
    settings = settings or Settings.resolve()
    url = database_url or settings.database_url
    key = (os.getpid(), url)
    with _services_lock:
        service = _services.get(key)
        if service is None:
            settings = replace(settings, database_url=url)
            service = TaskQueueService(Database(url, schema=settings.db_schema), settings)
            _services[key] = service
        if environment_key is not None:
            _environment_services[environment_key] = service
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
    queue: str | None = None,
    priority: int | None = None,
    on_duplicate: str = "return",
    session: Session | None = None,
    connection: Connection | None = None,
    database_url: str | None = None,
) -> int:
    """Queue a task for ``handler`` with JSON ``data``; return its ``TaskQueue.Id``.

    ``handler`` is a registered name or a dotted path. The handler is loaded and its
    ``validate`` given the data, ``data`` must be JSON-serialisable, ``max_retries`` (default
    5) must be at least 1 and ``scheduled_on`` (default now) timezone-aware. Any refusal raises
    a :class:`~celery_taskq.core.exceptions.InvalidTaskError` and writes nothing.

    Its runs go to the named ``queue`` (default ``"default"``; ASCII letters, digits, ``_``,
    ``-`` and ``.``, at most 64 characters), served by runners started with ``--queues``, and
    are claimed by ``priority`` (-1000 to 1000, higher first, default 0), then first in first
    out.

    A task that is due gets its run in the same transaction, so a runner can start it at once
    rather than at the next OnProcess tick. While a task with the same ``unique_key`` is
    unfinished, its id is returned instead (or, with ``on_duplicate="raise"``,
    :class:`~celery_taskq.core.exceptions.DuplicateTaskError` is raised).

    With ``session`` (an SQLAlchemy ORM session) or ``connection`` (a Core connection) on the
    same database, the task is written in the caller's transaction: it commits with the
    caller's own data, or not at all. Nothing is committed here.
    """
    service = get_service(database_url)
    writer = _joined_connection(session, connection)
    task_id = service.add_task(
        handler,
        data,
        scheduled_on=scheduled_on,
        max_retries=max_retries,
        queued_by=queued_by,
        title=title,
        unique_key=unique_key,
        queue=queue,
        priority=priority,
        on_duplicate=on_duplicate,
        create_run=True,
        connection=writer,
    )
    due = scheduled_on is None or scheduled_on <= service.clock()
    _after_commit(session, lambda: _run_enqueue_hooks(service, task_id, due))
    return task_id


def enqueue_many(
    tasks: Sequence[TaskSpec | Mapping[str, Any]],
    *,
    on_duplicate: str = "return",
    session: Session | None = None,
    connection: Connection | None = None,
    database_url: str | None = None,
) -> list[int]:
    """Queue many tasks in one transaction; return their ids, in order.

    Each item is a :class:`TaskSpec` or a mapping with its keys (``handler``, ``data``,
    ``scheduled_on``, ``max_retries``, ``queued_by``, ``title``, ``unique_key``, ``queue``,
    ``priority``). Every item is
    checked as :func:`enqueue` checks it before anything is written; a refusal names the item
    by position and writes none. Tasks go in with one multi-row insert. ``session`` and
    ``connection`` join the caller's transaction as in :func:`enqueue`.
    """
    service = get_service(database_url)
    writer = _joined_connection(session, connection)
    ids = service.add_tasks(tasks, on_duplicate=on_duplicate, create_run=True, connection=writer)
    if ids:
        _after_commit(session, lambda: _run_enqueue_hooks(service, ids[0], True))
    return ids


def enqueue_steps(
    steps: Sequence[Step | Mapping[str, Any]],
    *,
    scheduled_on: datetime | None = None,
    max_retries: int | None = None,
    queued_by: str | None = None,
    title: str | None = None,
    unique_key: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    on_duplicate: str = "return",
    session: Session | None = None,
    connection: Connection | None = None,
    database_url: str | None = None,
) -> int:
    """Queue a multi-step task: ``steps`` run in order in each run (see
    :mod:`celery_taskq.core.steps`).

    Each step names a handler, its settings (the step's ``run.data``) and whether its failure
    interrupts the task. Every step's handler is loaded and validates its settings before
    anything is written. Other arguments as for :func:`enqueue`.
    """
    return enqueue(
        STEPS_HANDLER,
        steps_data(steps),
        scheduled_on=scheduled_on,
        max_retries=max_retries,
        queued_by=queued_by,
        title=title,
        unique_key=unique_key,
        queue=queue,
        priority=priority,
        on_duplicate=on_duplicate,
        session=session,
        connection=connection,
        database_url=database_url,
    )


def _joined_connection(session: Session | None, connection: Connection | None) -> Connection | None:
    if session is not None and connection is not None:
        raise InvalidArgumentError("pass session or connection, not both")
    if session is not None:
        if not isinstance(session, Session):
            raise InvalidArgumentError(
                f"session must be an SQLAlchemy Session, not {type(session).__name__}"
            )
        return session.connection()
    if connection is not None and not isinstance(connection, Connection):
        raise InvalidArgumentError(
            f"connection must be an SQLAlchemy Connection, not {type(connection).__name__}"
        )
    return connection


_PENDING_KEY = "celery_taskq.after_commit"


def _after_commit(session: Session | None, callback: Callable[[], None]) -> None:
    """Run ``callback`` now, or once ``session`` commits (dropped if it rolls back)."""
    if session is None:
        callback()
        return
    pending: list[Callable[[], None]] | None = session.info.get(_PENDING_KEY)
    if pending is None:
        pending = session.info[_PENDING_KEY] = []
        event.listen(session, "after_commit", _run_pending)
        event.listen(session, "after_rollback", _drop_pending)
    pending.append(callback)


def _run_pending(session: Session) -> None:
    callbacks = session.info.get(_PENDING_KEY) or []
    session.info[_PENDING_KEY] = []
    for callback in callbacks:
        callback()


def _drop_pending(session: Session) -> None:
    session.info[_PENDING_KEY] = []


def _run_enqueue_hooks(service: TaskQueueService, task_id: int, due: bool) -> None:
    if due:  # wake idle runners now rather than at their next poll
        service.notifier.announce_work()
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
    celery_root_id: str | None = None,
    celery_group_id: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
    database_url: str | None = None,
) -> TaskPage:
    """Tasks, newest first, filtered by last status (or ``cancelled``, ``never-run``), handler,
    queued-by and queue time, and for native Celery tasks by workflow (``celery_root_id``) or
    group (``celery_group_id``).

    Returns one page; pass its ``next_before_id`` as ``before_id`` for the next one.
    """
    task_filter = TaskFilter(
        status=parse_status(status),
        handler=handler,
        queued_by=queued_by,
        queued_since=queued_since,
        queued_until=queued_until,
        celery_root_id=celery_root_id,
        celery_group_id=celery_group_id,
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


def add_schedule(
    name: str,
    handler: str,
    data: Any = None,
    *,
    every: int | timedelta | None = None,
    crontab: str | Mapping[str, Any] | None = None,
    timezone: str = "UTC",
    misfire_policy: str = "catch_up_once",
    title: str | None = None,
    max_retries: int | None = None,
    paused: bool = False,
    database_url: str | None = None,
) -> ScheduleSnapshot:
    """Add a periodic handler task: ``every`` N seconds, or on a five-field ``crontab`` in
    ``timezone``; each slot enqueues ``handler`` with ``data`` once, however many beats run.

    ``misfire_policy`` is ``catch_up_once`` or ``skip``. A taken name, an unknown handler, data
    the handler refuses, a bad crontab or an unknown timezone is refused and nothing is
    written. Edit, pause and remove with ``celery-taskq schedules`` or the HTTP API.
    """
    interval: Any = every
    if isinstance(every, timedelta):
        seconds = every.total_seconds()
        interval = int(seconds) if seconds.is_integer() else seconds  # refused unless whole
    service = get_service(database_url)
    schedules = ScheduleService(service.database, service.settings, clock=service.clock)
    spec = ScheduleSpec(
        name,
        handler,
        data,
        interval=interval,
        crontab=crontab,
        timezone=timezone,
        misfire_policy=misfire_policy,
        title=title,
        max_retries=max_retries,
    )
    return schedules.add(spec, paused=paused)


def close_all() -> None:
    """Dispose every engine the API opened in this process (tests, clean shutdown)."""
    with _services_lock:
        for service in _services.values():
            service.database.close()
        _services.clear()
        _environment_services.clear()
