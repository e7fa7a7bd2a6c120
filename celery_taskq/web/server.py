"""Serving the dashboard with uvicorn (``celery-taskq dashboard``)."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from celery_taskq.core.settings import Settings
from celery_taskq.web.app import create_app

logger = logging.getLogger(__name__)


def serve(
    settings: Settings, *, host: str = "127.0.0.1", port: int = 8000, celery_app: Any = None
) -> None:
    """Serve the dashboard, the HTTP API and ``/metrics`` until interrupted; re-sends of
    native tasks are published with ``celery_app`` when one is given."""
    logger.info(
        "dashboard on http://%s:%s (%s)",
        host,
        port,
        "writes enabled" if settings.dashboard_token else "read-only",
    )
    app = create_app(settings, celery_app=celery_app)
    uvicorn.run(app, host=host, port=port, log_level="info")
