"""Where celery_taskq's tasks go, and what it adds to an app's configuration.

Queues: celery_taskq adds none to an app. Its tasks ride the app's own routing (the app's
``task_routes``, else its default queue), so the queues the app's workers consume are the ones
they consumed before. An app that wants them apart declares :data:`EVENTS_QUEUE` and
:data:`RUNNERS_QUEUE` in its ``task_queues``; the tasks then go there (:func:`own_queue`). The
ready app (:func:`~celery_taskq.celery.install.create_app`) does.

A runner task is sent for one named queue of handler runs and serves only that queue. Where
the app declares ``taskq.runners.<queue>`` (:func:`runner_queue_name`) its runner tasks go
there (:func:`runner_route`), so that only the workers consuming it serve that queue.

Configuration: :func:`apply_config` adds the beat entries and, where the app is silent, the
broker; an app's Celery settings are otherwise its own. It is idempotent and runs whenever the app's
configuration may have changed (see :mod:`celery_taskq.celery.startup`), so it does not matter
whether ``install()`` comes before or after the app configures itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu.entity import Queue

from celery_taskq.celery.broker import TRANSPORT_PATH, split_sql_broker_url
from celery_taskq.core.settings import Settings

EVENTS_QUEUE = "taskq.events"
"""Queue of the beat-driven event tasks, where the app declares it."""

RUNNERS_QUEUE = "taskq.runners"
"""Queue of the runner tasks, where the app declares it."""

PROCESS_TASK = "taskq.on_process"
CREATE_RUNNERS_TASK = "taskq.on_create_task_runners"
RUNNER_TASK = "taskq.runner"

INTERNAL_TASKS = frozenset({PROCESS_TASK, CREATE_RUNNERS_TASK, RUNNER_TASK})
"""celery_taskq's own tasks: quiet unless ``internal_task_events`` is on."""

OWN_QUEUES = {
    PROCESS_TASK: EVENTS_QUEUE,
    CREATE_RUNNERS_TASK: EVENTS_QUEUE,
    RUNNER_TASK: RUNNERS_QUEUE,
}
"""The queue each task goes to when the app declares it."""

READY_APP_EVENTS: dict[str, Any] = {
    "worker_send_task_events": True,
    "task_send_sent_event": True,
}
"""Celery event settings of the ready app (:func:`~celery_taskq.celery.install.create_app`), so
that ``celery events`` and Flower see its tasks with their ``sent`` time.

:func:`~celery_taskq.celery.install.install` gives an app's own configuration nothing: with
celery_taskq installed, an app's workers and callers send the events they sent before. Flower
turns the workers' task events on by itself while it runs (its ``enable_events`` option, on by
default); ``task_send_sent_event`` is the app's to choose, and a task's queued time is in its
``TaskQueue`` row anyway. Nor ``task_track_started`` (it would change what the app's callers
see) nor ``worker_prefetch_multiplier`` (how many messages the app's workers reserve is the
app's choice; Celery's fair scheduling, its default, hands a reserved message only to a free
pool process, so none waits behind a running runner task)."""

READY_APP_PREFETCH = 1
"""``worker_prefetch_multiplier`` of the ready app: a worker busy with runner tasks reserves no
more messages than it has pool processes, so a burst of runner tasks spreads over workers."""


def declared_queues(app: Celery) -> set[str]:
    """Names of the queues in the app's ``task_queues`` (empty when it declares none)."""
    return {_queue_name(queue) for queue in _as_list(app.conf.task_queues)}


def own_queue(app: Celery, task_name: str) -> str | None:
    """The queue of its own that ``task_name`` goes to: the one :data:`OWN_QUEUES` names, if the
    app declares it; ``None`` otherwise (the task follows the app's routing)."""
    queue = OWN_QUEUES.get(task_name)
    return queue if queue is not None and queue in declared_queues(app) else None


RUNNERS_QUEUE_PREFIX = RUNNERS_QUEUE + "."
"""Prefix of the Celery queue of one handler queue's runner tasks."""


def runner_queue_name(queue: str) -> str:
    """The Celery queue an app may declare for the runner tasks of the handler queue
    ``queue``: ``taskq.runners.<queue>``."""
    return RUNNERS_QUEUE_PREFIX + queue


def runner_route(app: Celery, queue: str) -> str | None:
    """Where a runner task for the handler queue ``queue`` goes: its own Celery queue if the
    app declares it, else where every runner task goes (``None``: the app's routing)."""
    name = runner_queue_name(queue)
    return name if name in declared_queues(app) else own_queue(app, RUNNER_TASK)


def route_queue(app: Celery, task_name: str) -> str:
    """The queue ``task_name`` is sent to by this app: its own queue, or the app's route."""
    queue = own_queue(app, task_name)
    if queue is not None:
        return queue
    routed = app.amqp.router.route({}, task_name).get("queue")
    return _queue_name(routed) if routed is not None else str(app.conf.task_default_queue)


def beat_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    """The beat schedule entries of the periodic events (none for runners in audit-only
    mode)."""
    entries = {
        PROCESS_TASK: {
            "task": PROCESS_TASK,
            "schedule": settings.process_interval,
            "options": {"expires": settings.process_interval * 2},
        },
    }
    if settings.handler_runners:
        entries[CREATE_RUNNERS_TASK] = {
            "task": CREATE_RUNNERS_TASK,
            "schedule": settings.create_runners_interval,
            "options": {"expires": settings.create_runners_interval * 2},
        }
    return entries


def missing_beat_entries(schedule: Iterable[str], settings: Settings) -> list[str]:
    """The entries of :func:`beat_entries` that ``schedule`` (entry names) lacks."""
    present = set(schedule)
    return [name for name in beat_entries(settings) if name not in present]


def apply_config(app: Celery, settings: Settings) -> None:
    """Beat entries and the broker, where ``app`` is silent.

    Idempotent: what is already there is left as it is, and the app's own values win.
    """
    conf = app.conf
    schedule = conf.beat_schedule or {}
    missing = missing_beat_entries(schedule, settings)
    if missing:
        entries = beat_entries(settings)
        conf.beat_schedule = {**schedule, **{name: entries[name] for name in missing}}
    # The app's own broker wins; an app without one takes celery_taskq's setting.
    broker_url = str(conf.broker_url or settings.broker_url)
    sql_database = split_sql_broker_url(broker_url)
    if sql_database is not None:
        conf.broker_url = sql_database
        conf.broker_transport = TRANSPORT_PATH
    elif conf.broker_url != broker_url:
        conf.broker_url = broker_url


def declare_own_queues(app: Celery) -> None:
    """Give the app :data:`EVENTS_QUEUE` and :data:`RUNNERS_QUEUE` beside its default queue
    (the ready app does; so may any app that wants celery_taskq's tasks on queues apart)."""
    app.conf.task_queues = [
        Queue(name)  # type: ignore[no-untyped-call]
        for name in (app.conf.task_default_queue, EVENTS_QUEUE, RUNNERS_QUEUE)
    ]


def worker_queues(app: Celery) -> str:
    """The ``-Q`` value for a worker that serves the app's default queue and celery_taskq's."""
    return ",".join((app.conf.task_default_queue, EVENTS_QUEUE, RUNNERS_QUEUE))


def _as_list(value: Any) -> list[Any]:
    if not value:
        return []
    if isinstance(value, dict):
        return list(value.values())
    return list(value)


def _queue_name(queue: Any) -> str:
    return str(getattr(queue, "name", queue))
