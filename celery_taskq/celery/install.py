"""Adding celery_taskq to a Celery app (:func:`install`), and a ready app (:func:`create_app`)."""

from __future__ import annotations

from celery import Celery

from celery_taskq import api
from celery_taskq.celery.audit_signals import connect_audit
from celery_taskq.celery.routing import READY_APP_EVENTS, READY_APP_PREFETCH, declare_own_queues
from celery_taskq.celery.schedule_sync import connect_schedule_sync
from celery_taskq.celery.startup import connect_startup
from celery_taskq.celery.state import TaskqCelery, connect_worker_signals
from celery_taskq.celery.tasks import register_tasks, runner_request_hook
from celery_taskq.core.settings import Settings


def install(
    app: Celery, *, settings: Settings | None = None, audit_celery_tasks: bool = False
) -> TaskqCelery:
    """Add celery_taskq to ``app``: event and runner tasks, beat entries and signals.

    The call may come before or after the app configures itself: what depends on the app's
    configuration (the ``taskq_*`` settings, the beat entries, the broker where the app has
    none) is added again whenever that configuration is loaded, and when a worker or beat
    starts (:mod:`celery_taskq.celery.startup`). No queue is added: celery_taskq's tasks follow
    the app's routing, unless the app declares celery_taskq's queues
    (:mod:`celery_taskq.celery.routing`). Nor is any Celery setting of the app changed: its
    workers and callers send the events, and reserve the messages, they did before.

    With ``audit_celery_tasks=True`` every plain task of the app is audited (a ``TaskQueue``
    row per task, a ``TaskRuns`` row per execution attempt); otherwise only tasks whose base
    is :class:`~celery_taskq.celery.audit_signals.AuditedTask`.
    """
    state = TaskqCelery(app=app, given_settings=settings)
    register_tasks(app, state)
    connect_worker_signals(app, state)
    connect_audit(app, state, audit_all=audit_celery_tasks)
    api.add_enqueue_hook(runner_request_hook(app, state))
    app.taskq = state
    connect_startup(app, state)
    connect_schedule_sync(app, state)  # taskq_schedules, at a worker's or beat's start
    return state


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from the environment, with celery_taskq installed.

    Its beat ticks and runner tasks have queues of their own (``taskq.events``,
    ``taskq.runners``), which ``celery-taskq worker`` consumes beside the default queue, and
    its workers reserve one message per pool process (:data:`READY_APP_PREFETCH`) and send
    task events (:data:`READY_APP_EVENTS`).
    """
    settings = settings or Settings.resolve()
    celery_app = Celery("celery_taskq", broker=settings.broker_url)
    celery_app.conf.task_ignore_result = True
    celery_app.conf.worker_prefetch_multiplier = READY_APP_PREFETCH
    celery_app.conf.update(READY_APP_EVENTS)
    declare_own_queues(celery_app)
    install(celery_app, settings=settings)
    return celery_app
