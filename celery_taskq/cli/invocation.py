"""What one invocation of ``celery-taskq`` shares: the settings, resolved once, and the queue
service built from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database


@dataclass
class CliContext:
    """Settings resolved once for the invocation, and the service built from them."""

    settings: Settings
    _service: TaskQueueService | None = None

    @property
    def service(self) -> TaskQueueService:
        """The queue service in CLI mode (runners are started as detached processes)."""
        if self._service is None:
            self._service = TaskQueueService(
                Database(self.settings.database_url), self.settings, cli_mode=True
            )
        return self._service

    def close(self) -> None:
        """Release the database connections."""
        if self._service is not None:
            self._service.database.close()


pass_context = click.make_pass_decorator(CliContext)
"""Decorator handing a command its :class:`CliContext`."""
