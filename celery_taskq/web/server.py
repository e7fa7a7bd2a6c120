"""Serving the dashboard with uvicorn (``celery-taskq dashboard``)."""

from __future__ import annotations

import logging

import uvicorn

from celery_taskq.core.settings import Settings
from celery_taskq.web.app import create_app

logger = logging.getLogger(__name__)


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the dashboard, the HTTP API and ``/metrics`` until interrupted."""
    logger.info(
        "dashboard on http://%s:%s (%s)",
        host,
        port,
        "writes enabled" if settings.dashboard_token else "read-only",
    )
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
