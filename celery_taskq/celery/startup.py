"""When an app's configuration is final: add what ``install()`` adds, check it is there, quiet
the internal tasks' log lines.

``install()`` may come before or after the app configures itself (``config_from_object``,
``conf.update``, ``beat_schedule = {...}``). So the beat entries, the Celery defaults and the
broker are added (:func:`~celery_taskq.celery.routing.apply_config`, idempotent) each time they
may have been dropped:

* at ``install()``, if the app is configured already;
* on the app's ``on_after_configure`` (sent each time its configuration is loaded, also again
  after a later ``config_from_object``);
* on ``import_modules``, which a worker and a beat send for their app as they start, before
  either reads its configuration (a worker's prefetch and events, beat's schedule).

Then a beat whose schedule still lacks the event entries (a scheduler that does not read
``beat_schedule``), or a worker that does not consume the queue celery_taskq's tasks go to,
says so once, in one line (``action=install_incomplete``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery, signals

from celery_taskq.celery.routing import (
    CREATE_RUNNERS_TASK,
    INTERNAL_TASKS,
    PROCESS_TASK,
    RUNNER_TASK,
    apply_config,
    missing_beat_entries,
    route_queue,
)
from celery_taskq.celery.state import TaskqCelery

QUIETED_LOGGERS = (
    "celery.app.trace",
    "celery.worker.strategy",
    "celery.worker.request",
    "celery.beat",
)
"""Celery's loggers whose per-task INFO lines (sent, received, succeeded, discarded) are DEBUG
lines for celery_taskq's internal tasks, unless ``internal_task_events`` is on."""


def connect_startup(app: Celery, state: TaskqCelery) -> None:
    """Connect the receivers above for ``app`` (and no other app of the process)."""
    uid = f"celery_taskq-startup-{id(app)}"

    def configure(**_: Any) -> None:
        apply_config(app, state.reconfigure())

    def on_import_modules(sender: Any = None, **_: Any) -> None:
        if sender is not app:
            return
        configure()
        if not state.settings.internal_task_events:
            quiet_internal_task_logs()

    def on_beat_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        scheduler = sender.scheduler
        missing = missing_beat_entries(scheduler.schedule, state.settings)
        if missing:
            state.warn_once(
                "beat-entries",
                "celery_taskq: beat's schedule (%s) lacks %s, so celery_taskq's periodic events "
                "do not run; give the scheduler the app's beat_schedule",
                type(scheduler).__name__,
                ", ".join(missing),
            )

    def on_worker_setup(instance: Any = None, **_: Any) -> None:
        if getattr(instance, "app", None) is not app:
            return
        tasks = [PROCESS_TASK]
        if state.settings.handler_runners:
            tasks += [CREATE_RUNNERS_TASK, RUNNER_TASK]
        consumed = set(instance.app.amqp.queues.consume_from or ())
        missing = sorted({route_queue(app, name) for name in tasks} - consumed)
        if missing:
            state.warn_once(
                "worker-queues",
                "celery_taskq: this worker does not consume %s, where celery_taskq's %s go; "
                "add it to the worker's -Q",
                ", ".join(missing),
                "beat ticks and runner tasks" if state.settings.handler_runners else "beat ticks",
            )

    app.on_after_configure.connect(configure, weak=False, dispatch_uid=uid + "-configured")
    signals.import_modules.connect(on_import_modules, weak=False, dispatch_uid=uid + "-start")
    signals.beat_init.connect(on_beat_init, weak=False, dispatch_uid=uid + "-beat")
    signals.celeryd_after_setup.connect(on_worker_setup, weak=False, dispatch_uid=uid + "-worker")
    if app.configured:
        configure()


class InternalTaskLogFilter(logging.Filter):
    """Turns Celery's INFO lines about celery_taskq's internal tasks into DEBUG lines.

    A record passes as DEBUG where its logger is enabled for DEBUG, and is dropped otherwise.
    Warnings and errors about the internal tasks pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is logged (demoted to DEBUG when it is about an internal task)."""
        if record.levelno != logging.INFO or not names_internal_task(record):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True


def names_internal_task(record: logging.LogRecord) -> bool:
    """Whether a log record of Celery's is about one of celery_taskq's internal tasks."""
    data = getattr(record, "data", None)
    if isinstance(data, Mapping) and data.get("name") in INTERNAL_TASKS:
        return True
    args = record.args
    if isinstance(args, Mapping):
        return args.get("name") in INTERNAL_TASKS
    return isinstance(args, tuple) and any(
        isinstance(arg, str) and arg in INTERNAL_TASKS for arg in args
    )


def quiet_internal_task_logs() -> None:
    """Add :class:`InternalTaskLogFilter` to :data:`QUIETED_LOGGERS` (once)."""
    for name in QUIETED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, InternalTaskLogFilter) for existing in logger.filters):
            logger.addFilter(InternalTaskLogFilter())
