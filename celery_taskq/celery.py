"""The Celery layer: beat drives the periodic events, worker processes are task runners.

:func:`install` adds celery_taskq to an existing Celery app; :data:`app` (resolved lazily) is
a ready one, so ``celery -A celery_taskq worker -B`` works with no user code.

Queues and routing:

``taskq.events``
    the beat ticks (OnProcess, OnCreateTaskRunners): short tasks.
``taskq.runners``
    runner tasks: each holds a pool process while its runner loop works the queue, leaving
    after ``runner_max_idle`` seconds without work or ``runner_max_lifetime`` seconds.

A worker holds at most ``concurrency - 1`` runners (at least 1), so one pool process always
stays free for the event tasks and the app's own tasks: runners cannot starve them.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery, Task, signals
from kombu.entity import Queue
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from celery_taskq import api
from celery_taskq.audit import QUEUED_BY_HEADER, TASK_ID_HEADER, NativeTaskAuditor
from celery_taskq.broker import TRANSPORT_PATH, split_sql_broker_url
from celery_taskq.core.overseer import on_process
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)

EVENTS_QUEUE = "taskq.events"
"""Queue of the beat-driven event tasks."""

RUNNERS_QUEUE = "taskq.runners"
"""Queue of the runner tasks."""

PROCESS_TASK = "taskq.on_process"
CREATE_RUNNERS_TASK = "taskq.on_create_task_runners"
RUNNER_TASK = "taskq.runner"

DUPLICATE_TICK = "skipped: this tick already ran"
"""Result of an event task whose tick another beat already carried out."""

SETTINGS_PREFIX = "taskq_"
"""Celery config keys ``taskq_<setting>`` configure celery_taskq (below ``TASKQ_*`` env vars)."""

BROKER_MESSAGES_KEPT_FOR = timedelta(minutes=10)
"""Delivered messages of the SQLAlchemy broker older than this are deleted by OnProcess."""


@dataclass
class TaskqCelery:
    """What :func:`install` added to an app, and the per-process state its tasks share."""

    app: Celery
    settings: Settings
    _service: TaskQueueService | None = None
    _service_lock: threading.Lock = field(default_factory=threading.Lock)
    worker: Any = None
    shutting_down: Any = None
    auditor: NativeTaskAuditor | None = None

    @property
    def service(self) -> TaskQueueService:
        """This process's queue service (created on first use, so never shared across fork)."""
        with self._service_lock:
            if self._service is None:
                self._service = TaskQueueService(
                    Database(self.settings.database_url), self.settings
                )
            return self._service

    def after_fork(self) -> None:
        """Drop database connections inherited from the parent process."""
        if self._service is not None:
            self._service.database.dispose_after_fork()

    def worker_runner_limit(self) -> int:
        """Runners one worker may hold: all pool processes but one, and at least one."""
        concurrency = getattr(self.worker, "concurrency", None) or 1
        return max(int(concurrency) - 1, 1)

    def stop_requested(self) -> bool:
        """Whether this worker is shutting down (warm): runners leave after their run."""
        return self.shutting_down is not None and self.shutting_down.is_set()


def settings_from_celery(
    conf: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """Resolve settings: ``TASKQ_*`` env vars, then ``taskq_*`` Celery config, then defaults."""
    overrides = {
        setting.name: conf.get(SETTINGS_PREFIX + setting.name)
        for setting in fields(Settings)
        if conf.get(SETTINGS_PREFIX + setting.name) is not None
    }
    return Settings.resolve(overrides=overrides, environ=environ)


class AuditedTask(Task):  # type: ignore[misc]
    """Base class for chosen tasks to audit when the app does not audit all of them.

    ``@app.task(base=AuditedTask)`` records every publish and execution of the task.
    """

    taskq_audit = True


INSTALL_DEFAULTS: dict[str, Any] = {
    "worker_send_task_events": True,
    "task_send_sent_event": True,
    "task_track_started": True,
    "worker_prefetch_multiplier": 1,
}
"""Celery settings :func:`install` gives an app that does not set them itself."""


def install(
    app: Celery, *, settings: Settings | None = None, audit_celery_tasks: bool = False
) -> TaskqCelery:
    """Add celery_taskq to ``app``: event and runner tasks, beat entries, routes and signals.

    With ``audit_celery_tasks=True`` every plain task of the app is audited (a ``TaskQueue``
    row per task, a ``TaskRuns`` row per execution attempt); otherwise only tasks whose base
    is :class:`AuditedTask`.
    """
    settings = settings or settings_from_celery(app.conf)
    state = TaskqCelery(app=app, settings=settings)
    _configure(app, settings)
    _register_tasks(app, state)
    _connect_signals(app, state)
    _connect_audit(app, state, audit_all=audit_celery_tasks)
    api.add_enqueue_hook(_runner_request_hook(app, state))
    app.taskq = state
    return state


def _configure(app: Celery, settings: Settings) -> None:
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


def _register_tasks(app: Celery, state: TaskqCelery) -> None:
    settings = state.settings

    # shared=False: the tasks belong to this app only, not to every app the process creates.
    @app.task(name=PROCESS_TASK, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def process_task() -> str:
        """OnProcess: time out dead runners, create due runs; prune the SQL broker."""
        if not state.service.claim_beat_tick("process", settings.process_interval):
            return DUPLICATE_TICK
        report = on_process(state.service)
        if app.conf.broker_transport == TRANSPORT_PATH:
            _prune_sql_broker(str(app.conf.broker_url))
        return f"timed out {len(report.timed_out_runners)}; runs created {report.tasks_given_runs}"

    @app.task(name=CREATE_RUNNERS_TASK, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def create_runners_task() -> str:
        """OnCreateTaskRunners: send one runner task per missing runner."""
        if not state.service.claim_beat_tick("create_runners", settings.create_runners_interval):
            return DUPLICATE_TICK
        missing = state.service.get_missing_task_runner_count()
        for _ in range(missing):
            runner_task.apply_async(expires=settings.create_runners_interval * 2)
        return f"runner tasks sent: {missing}"

    @app.task(name=RUNNER_TASK, bind=True, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def runner_task(self: Any) -> str:
        """Register this worker process as a task runner and work the queue until it may leave."""
        runner = state.service.get_task_runner(
            worker_hostname=self.request.hostname, worker_limit=state.worker_runner_limit()
        )
        if runner is None:
            return "no runner started: a limit is reached"
        reason = runner.run(
            max_idle=settings.runner_max_idle,
            max_lifetime=settings.runner_max_lifetime,
            should_stop=state.stop_requested,
        )
        return f"runner {runner.task_runner_id} left: {reason.value}; runs: {runner.runs_done}"


def _connect_signals(app: Celery, state: TaskqCelery) -> None:
    uid = f"celery_taskq-{id(app)}"

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        # Created before the pool forks, so every child shares it.
        state.worker = sender
        state.shutting_down = multiprocessing.Event()

    def on_worker_process_init(**_: Any) -> None:
        state.after_fork()

    def on_worker_shutting_down(**_: Any) -> None:
        if state.shutting_down is not None:
            state.shutting_down.set()

    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid=uid + "-init")
    signals.worker_process_init.connect(
        on_worker_process_init, weak=False, dispatch_uid=uid + "-process-init"
    )
    signals.worker_shutting_down.connect(
        on_worker_shutting_down, weak=False, dispatch_uid=uid + "-shutdown"
    )


RUNNER_REQUEST_MIN_INTERVAL = 1.0
"""Seconds between two runner requests made by enqueue() in one process."""


def _connect_audit(app: Celery, state: TaskqCelery, *, audit_all: bool) -> None:
    def should_audit(task_name: str) -> bool:
        if task_name.startswith("taskq."):
            return False
        return audit_all or bool(getattr(app.tasks.get(task_name), "taskq_audit", False))

    auditor = NativeTaskAuditor(get_service=lambda: state.service, should_audit=should_audit)
    state.auditor = auditor
    uid = f"celery_taskq-audit-{id(app)}"

    def before_publish(
        sender: Any = None, body: Any = None, headers: dict[str, Any] | None = None, **_: Any
    ) -> None:
        if headers is None or not isinstance(body, tuple | list) or len(body) < 2:
            return  # only Celery's message protocol 2 carries what the audit needs
        name = str(headers.get("task") or sender)
        task = app.tasks.get(name)
        auditor.on_publish(
            task_id=str(headers.get("id")),
            task_name=name,
            args=body[0],
            kwargs=body[1],
            headers=headers,
            eta=_parse_eta(headers.get("eta")),
            max_retries=getattr(task, "max_retries", None) if task is not None else None,
        )

    def prerun(
        task_id: str = "", task: Any = None, args: Any = None, kwargs: Any = None, **_: Any
    ) -> None:
        request = task.request
        auditor.on_prerun(
            task_id=task_id,
            task_name=task.name,
            args=args,
            kwargs=kwargs,
            headers={
                TASK_ID_HEADER: getattr(request, TASK_ID_HEADER, None),
                QUEUED_BY_HEADER: getattr(request, QUEUED_BY_HEADER, None),
            },
            worker_hostname=str(request.hostname or ""),
        )

    def failure(task_id: str = "", exception: Any = None, einfo: Any = None, **_: Any) -> None:
        auditor.on_failure(task_id=task_id, exception=exception, traceback=str(einfo or ""))

    def retry(request: Any = None, reason: Any = None, einfo: Any = None, **_: Any) -> None:
        # Celery reports the Retry exception; the error that caused the retry is its `exc`.
        reason = getattr(reason, "exc", None) or reason
        reason = reason if isinstance(reason, BaseException) else RuntimeError(str(reason))
        auditor.on_retry(task_id=str(request.id), reason=reason, traceback=str(einfo or ""))

    def postrun(task_id: str = "", retval: Any = None, state: str | None = None, **_: Any) -> None:
        auditor.on_postrun(task_id=task_id, state=state, retval=retval)

    def process_shutdown(**_: Any) -> None:
        auditor.on_process_shutdown()

    for signal, receiver in (
        (signals.before_task_publish, before_publish),
        (signals.task_prerun, prerun),
        (signals.task_failure, failure),
        (signals.task_retry, retry),
        (signals.task_postrun, postrun),
        (signals.worker_process_shutdown, process_shutdown),
    ):
        signal.connect(receiver, weak=False, dispatch_uid=f"{uid}-{receiver.__name__}")


def _parse_eta(value: Any) -> datetime | None:
    if not value:
        return None
    eta = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return eta if eta.tzinfo is not None else eta.replace(tzinfo=UTC)


def _runner_request_hook(app: Celery, state: TaskqCelery) -> api.EnqueueHook:
    last_check = [float("-inf")]

    def request_runner(service: TaskQueueService, task_id: int, due: bool) -> None:
        """Ask for a runner when a due task was queued and no runner is live.

        Runners are counted at most once per RUNNER_REQUEST_MIN_INTERVAL: a count per
        enqueue() would double its cost while runners are busy.
        """
        now = time.monotonic()
        if not due or now - last_check[0] < RUNNER_REQUEST_MIN_INTERVAL:
            return
        last_check[0] = now
        if service.get_task_runner_count() == 0:
            app.send_task(RUNNER_TASK, queue=RUNNERS_QUEUE, expires=state.settings.runner_max_idle)

    return request_runner


def _prune_sql_broker(database_url: str) -> None:
    """Delete delivered messages of kombu's SQLAlchemy transport, which it never deletes."""
    engine = create_engine(make_url(database_url))
    cutoff = datetime.now() - BROKER_MESSAGES_KEPT_FOR  # kombu stores naive local time
    try:
        with engine.begin() as connection:
            connection.execute(
                text("DELETE FROM kombu_message WHERE visible = :false AND timestamp < :cutoff"),
                {"false": False, "cutoff": cutoff},
            )
    except Exception:
        logger.exception("pruning the SQL broker failed", extra={"action": "broker_prune_failed"})
    finally:
        engine.dispose()


def worker_queues(app: Celery) -> str:
    """The ``-Q`` value for a worker that serves the app's default queue and celery_taskq's."""
    return ",".join((app.conf.task_default_queue, EVENTS_QUEUE, RUNNERS_QUEUE))


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from the environment, with celery_taskq installed."""
    settings = settings or Settings.resolve()
    celery_app = Celery("celery_taskq", broker=settings.broker_url)
    celery_app.conf.task_ignore_result = True
    install(celery_app, settings=settings)
    return celery_app


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    # `celery -A celery_taskq` imports this module and reads `app`: build it on first access.
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)
