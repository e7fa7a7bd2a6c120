"""Adding celery_taskq to a Celery app (:func:`install`), and a ready app (:func:`create_app`)."""

from __future__ import annotations

from celery import Celery

from celery_taskq import api
from celery_taskq.celery.audit_signals import connect_audit
from celery_taskq.celery.routing import configure_app
from celery_taskq.celery.state import TaskqCelery, connect_worker_signals, settings_from_celery
from celery_taskq.celery.tasks import register_tasks, runner_request_hook
from celery_taskq.core.settings import Settings


def install(
    app: Celery, *, settings: Settings | None = None, audit_celery_tasks: bool = False
) -> TaskqCelery:
    """Add celery_taskq to ``app``: event and runner tasks, beat entries, routes and signals.

    With ``audit_celery_tasks=True`` every plain task of the app is audited (a ``TaskQueue``
    row per task, a ``TaskRuns`` row per execution attempt); otherwise only tasks whose base
    is :class:`~celery_taskq.celery.audit_signals.AuditedTask`.
    """
    settings = settings or settings_from_celery(app.conf)
    state = TaskqCelery(app=app, settings=settings)
    configure_app(app, settings)
    register_tasks(app, state)
    connect_worker_signals(app, state)
    connect_audit(app, state, audit_all=audit_celery_tasks)
    api.add_enqueue_hook(runner_request_hook(app, state))
    app.taskq = state
    return state


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from the environment, with celery_taskq installed."""
    settings = settings or Settings.resolve()
    celery_app = Celery("celery_taskq", broker=settings.broker_url)
    celery_app.conf.task_ignore_result = True
    install(celery_app, settings=settings)
    return celery_app
