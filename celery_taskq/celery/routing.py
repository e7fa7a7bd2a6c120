"""Where celery_taskq's tasks go: queue and task names, routes, beat entries, and the Celery
settings :func:`~celery_taskq.celery.install.install` gives an app that does not set them.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Queue

from celery_taskq.celery.broker import TRANSPORT_PATH, split_sql_broker_url
from celery_taskq.core.settings import Settings

EVENTS_QUEUE = "taskq.events"
"""Queue of the beat-driven event tasks."""

RUNNERS_QUEUE = "taskq.runners"
"""Queue of the runner tasks."""

PROCESS_TASK = "taskq.on_process"
CREATE_RUNNERS_TASK = "taskq.on_create_task_runners"
RUNNER_TASK = "taskq.runner"


INSTALL_DEFAULTS: dict[str, Any] = {
    "worker_send_task_events": True,
    "task_send_sent_event": True,
    "task_track_started": True,
    "worker_prefetch_multiplier": 1,
}
"""Celery settings :func:`~celery_taskq.celery.install.install` gives an app that does not set
them."""


def configure_app(app: Celery, settings: Settings) -> None:
    """Routes, queues, beat entries, :data:`INSTALL_DEFAULTS` and the broker, where ``app`` is
    silent."""
    routes = {
        PROCESS_TASK: {"queue": EVENTS_QUEUE},
        CREATE_RUNNERS_TASK: {"queue": EVENTS_QUEUE},
        RUNNER_TASK: {"queue": RUNNERS_QUEUE},
    }
    if not app.conf.task_queues:
        # Workers started without -Q then consume the app's default queue and both of ours.
        app.conf.task_queues = [
            Queue(name)  # type: ignore[no-untyped-call]
            for name in (app.conf.task_default_queue, EVENTS_QUEUE, RUNNERS_QUEUE)
        ]
    existing_routes = app.conf.task_routes
    app.conf.task_routes = [routes, existing_routes] if existing_routes else routes
    app.conf.beat_schedule = {
        **(app.conf.beat_schedule or {}),
        PROCESS_TASK: {
            "task": PROCESS_TASK,
            "schedule": settings.process_interval,
            "options": {"expires": settings.process_interval * 2},
        },
        CREATE_RUNNERS_TASK: {
            "task": CREATE_RUNNERS_TASK,
            "schedule": settings.create_runners_interval,
            "options": {"expires": settings.create_runners_interval * 2},
        },
    }
    # Where the app is silent: Flower and `celery events` see workers, runner tasks and their
    # states, and a worker holds no message behind its long-running runner tasks. What the app
    # sets itself is kept (events cost a Redis publish per task and state change).
    for key, value in INSTALL_DEFAULTS.items():
        if not app.conf.value_set_for(key):
            app.conf[key] = value
    # The app's own broker wins; an app without one takes celery_taskq's setting.
    broker_url = str(app.conf.broker_url or settings.broker_url)
    sql_database = split_sql_broker_url(broker_url)
    if sql_database is not None:
        app.conf.broker_url = sql_database
        app.conf.broker_transport = TRANSPORT_PATH
    else:
        app.conf.broker_url = broker_url


def worker_queues(app: Celery) -> str:
    """The ``-Q`` value for a worker that serves the app's default queue and celery_taskq's."""
    return ",".join((app.conf.task_default_queue, EVENTS_QUEUE, RUNNERS_QUEUE))
