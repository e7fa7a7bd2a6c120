"""The Celery layer: beat drives the periodic events, worker processes are task runners.

:func:`install` adds celery_taskq to an existing Celery app; :data:`app` (resolved lazily) is
a ready one, so ``celery -A celery_taskq worker -B`` works with no user code.

What an installed app gets:

* beat entries for OnProcess and OnCreateTaskRunners, whose ticks run as short tasks;
* runner tasks, sent only while handler runs are scheduled, one per run that no idle runner
  will take (within TaskRunnerLimit). A worker holds at most ``concurrency - 1`` runners (at
  least 1), so one pool process stays free for the ticks and the app's own tasks; a runner
  leaves after ``runner_max_idle`` seconds (1 s) without work. ``handler_runners = False``
  (audit-only mode) sends none;
* no queue of its own: the tasks follow the app's routing unless the app declares
  ``taskq.events`` and ``taskq.runners`` (the ready app does);
* quiet internal tasks: no task events (Flower shows the app's work) unless
  ``internal_task_events`` is on.

The modules: :mod:`~celery_taskq.celery.install` (``install()``, ``create_app()``),
:mod:`~celery_taskq.celery.routing` (queues, beat entries, Celery defaults),
:mod:`~celery_taskq.celery.startup` (applying them when the app's configuration is final),
:mod:`~celery_taskq.celery.state` (settings from Celery config, per-process state),
:mod:`~celery_taskq.celery.tasks` (the event and runner tasks, runner dispatch),
:mod:`~celery_taskq.celery.audit_signals`, :mod:`~celery_taskq.celery.audit`,
:mod:`~celery_taskq.celery.audit_message`, :mod:`~celery_taskq.celery.audit_processes`,
:mod:`~celery_taskq.celery.audit_writer` and :mod:`~celery_taskq.celery.native_output` (the
native task audit), :mod:`~celery_taskq.celery.resend` (re-sending a recorded task),
:mod:`~celery_taskq.celery.broker` (the SQL broker). This layer imports the core and the
public API's enqueue hook (:func:`celery_taskq.api.add_enqueue_hook`), nothing else of the
project.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from celery_taskq.celery.audit_signals import AuditedTask
from celery_taskq.celery.broker import BROKER_MESSAGES_KEPT_FOR
from celery_taskq.celery.install import create_app, install
from celery_taskq.celery.routing import (
    CREATE_RUNNERS_TASK,
    EVENTS_QUEUE,
    INTERNAL_TASKS,
    PROCESS_TASK,
    READY_APP_EVENTS,
    RUNNER_TASK,
    RUNNERS_QUEUE,
    worker_queues,
)
from celery_taskq.celery.state import SETTINGS_PREFIX, TaskqCelery, settings_from_celery
from celery_taskq.celery.tasks import AUDIT_ONLY, DUPLICATE_TICK, RUNNER_REQUEST_MIN_INTERVAL

__all__ = [
    "AUDIT_ONLY",
    "BROKER_MESSAGES_KEPT_FOR",
    "CREATE_RUNNERS_TASK",
    "DUPLICATE_TICK",
    "EVENTS_QUEUE",
    "INTERNAL_TASKS",
    "PROCESS_TASK",
    "READY_APP_EVENTS",
    "RUNNERS_QUEUE",
    "RUNNER_REQUEST_MIN_INTERVAL",
    "RUNNER_TASK",
    "SETTINGS_PREFIX",
    "AuditedTask",
    "TaskqCelery",
    "app",
    "create_app",
    "install",
    "settings_from_celery",
    "worker_queues",
]


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    # `celery -A celery_taskq` imports this module and reads `app`: build it on first access.
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)
