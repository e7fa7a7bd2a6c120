"""What every request handler needs: the settings, the queue service and the templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jinja2
from fastapi import Request

from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database


@dataclass(frozen=True)
class WebState:
    """The app's shared, immutable state (``app.state.taskq``)."""

    settings: Settings
    service: TaskQueueService
    templates: jinja2.Environment
    celery_app: Any = None
    """The Celery app re-sends are published with (``celery-taskq -A … dashboard``), or None."""

    @property
    def database(self) -> Database:
        """The database the service reads and writes."""
        return self.service.database

    @property
    def writes_enabled(self) -> bool:
        """Whether a token is configured, so that enqueue, cancel and retry may be allowed."""
        return bool(self.settings.dashboard_token)


def get_state(request: Request) -> WebState:
    """The :class:`WebState` of the app serving ``request`` (a FastAPI dependency)."""
    state = request.app.state.taskq
    if not isinstance(state, WebState):  # pragma: no cover - create_app always sets it
        raise RuntimeError("the app was not built by celery_taskq.web.create_app")
    return state
