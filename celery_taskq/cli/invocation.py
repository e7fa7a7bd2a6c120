"""What one invocation of ``celery-taskq`` shares: the settings, resolved once, the Celery app
given with ``--app`` (if any), and the queue service built from the settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database


@dataclass
class CliContext:
    """Settings resolved once for the invocation, and the service built from them."""

    settings: Settings
    app_name: str | None = None
    """The ``--app`` value, passed on to the runner processes the command starts."""
    celery_app: Any = None
    """The Celery app ``--app`` names (a ``celery.Celery``), or ``None``."""
    _service: TaskQueueService | None = None

    @property
    def service(self) -> TaskQueueService:
        """The queue service in CLI mode (runners are started as detached processes)."""
        if self._service is None:
            database = Database(self.settings.database_url, schema=self.settings.db_schema)
            self._service = TaskQueueService(database, self.settings, cli_mode=True)
        return self._service

    def close(self) -> None:
        """Release the database connections."""
        if self._service is not None:
            self._service.database.close()


pass_context = click.make_pass_decorator(CliContext)
"""Decorator handing a command its :class:`CliContext`."""
