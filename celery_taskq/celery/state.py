"""What :func:`~celery_taskq.celery.install.install` added to an app, and the per-process state
its tasks share: the queue service (never shared across fork), the worker and its shutdown.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from celery import Celery, signals

from celery_taskq.celery.audit import NativeTaskAuditor
from celery_taskq.celery.preload import preload_before_fork
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)

SETTINGS_PREFIX = "taskq_"
"""Celery config keys ``taskq_<setting>`` configure celery_taskq (below ``TASKQ_*`` env vars)."""


@dataclass
class TaskqCelery:
    """What :func:`~celery_taskq.celery.install.install` added to an app, and the per-process state
    its tasks share.

    Its :attr:`settings` are those given to ``install()``, or else resolved from the app's
    configuration when first needed and again whenever that configuration may have changed
    (:meth:`reconfigure`): ``install()`` may come before the app configures itself.
    """

    app: Celery
    given_settings: Settings | None = None
    _settings: Settings | None = None
    _service: TaskQueueService | None = None
    _service_lock: threading.Lock = field(default_factory=threading.Lock)
    worker: Any = None
    shutting_down: Any = None
    auditor: NativeTaskAuditor | None = None
    warned: set[str] = field(default_factory=set)
    """What this process has already warned about (each warning is given once)."""

    @property
    def settings(self) -> Settings:
        """celery_taskq's settings: the given ones, else ``TASKQ_*`` env vars, then the app's
        ``taskq_*`` config keys, then the defaults."""
        if self._settings is None:
            self._settings = self.given_settings or settings_from_celery(self.app.conf)
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        self.given_settings = self._settings = value

    def reconfigure(self) -> Settings:
        """Resolve the settings again from the app's configuration (unless they were given);
        a queue service made with other settings is dropped. Returns the settings."""
        if self.given_settings is None:
            resolved = settings_from_celery(self.app.conf)
            if resolved != self._settings:
                self._settings = resolved
                with self._service_lock:
                    if self._service is not None and self._service.settings != resolved:
                        self._service.database.close()
                        self._service = None
        return self.settings

    @property
    def service(self) -> TaskQueueService:
        """This process's queue service (created on first use, so never shared across fork)."""
        settings = self.settings
        with self._service_lock:
            if self._service is None:
                self._service = TaskQueueService(
                    Database(settings.database_url, schema=settings.db_schema), settings
                )
            return self._service

    def after_fork(self) -> None:
        """Drop database connections inherited from the parent process."""
        if self._service is not None:
            self._service.database.dispose_after_fork()

    def worker_concurrency(self) -> int:
        """Pool processes of this worker (1 when unknown)."""
        return int(getattr(self.worker, "concurrency", None) or 1)

    def worker_runner_limit(self) -> int:
        """Runners one worker may hold: all pool processes but one, and at least one."""
        return max(self.worker_concurrency() - 1, 1)

    def stop_requested(self) -> bool:
        """Whether this worker is shutting down (warm): runners leave after their run."""
        return self.shutting_down is not None and self.shutting_down.is_set()

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        """Log a one-line warning, the first time only (per process and ``key``)."""
        if key in self.warned:
            return
        self.warned.add(key)
        logger.warning(message, *args, extra={"action": "install_incomplete", "what": key})


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


def connect_worker_signals(app: Celery, state: TaskqCelery) -> None:
    """Keep ``state`` informed of the worker: its start, each forked pool process, its shutdown."""
    uid = f"celery_taskq-{id(app)}"

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        # Created before the pool forks, so every child shares it.
        state.worker = sender
        state.shutting_down = multiprocessing.Event()
        if state.settings.fork_preload:
            preload_before_fork(state.settings.database_url)

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
