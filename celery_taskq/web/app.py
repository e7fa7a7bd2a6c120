"""The FastAPI application: pages, forms, the HTTP API and metrics over one queue service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from celery_taskq import __version__
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web import (
    api_routes,
    bulk_routes,
    forms,
    insight_routes,
    metrics,
    pages,
    probes,
    schedule_routes,
)
from celery_taskq.web.api_routes import API_PATH
from celery_taskq.web.auth import token_routes
from celery_taskq.web.body_limit import BodyLimitMiddleware, body_limit
from celery_taskq.web.error_responses import install_error_handlers
from celery_taskq.web.head import HeadMiddleware
from celery_taskq.web.headers import SecurityHeadersMiddleware
from celery_taskq.web.state import WebState
from celery_taskq.web.templating import create_environment
from celery_taskq.web.token_guard import ApiTokenGuard

OPENAPI_PATH = f"{API_PATH}/openapi.json"


def create_app(
    settings: Settings | None = None,
    *,
    service: TaskQueueService | None = None,
    celery_app: Any = None,
) -> FastAPI:
    """The dashboard app for ``settings`` (default: resolved from ``TASKQ_*``).

    With ``service`` the app uses that queue service (and leaves its database open at
    shutdown); otherwise it makes one on ``settings.database_url`` and closes it at shutdown.
    ``celery_app`` (a ``celery.Celery``) is what re-sends of native tasks are published with;
    without it they are refused.
    """
    settings = settings or (service.settings if service is not None else Settings.resolve())
    owned = service is None
    service = service or TaskQueueService(
        Database(settings.database_url, schema=settings.db_schema), settings
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            service.database.close()

    app = FastAPI(
        title="celery_taskq",
        version=__version__,
        summary="The TaskQueue, TaskRuns and TaskRunners tables over HTTP.",
        openapi_url=OPENAPI_PATH,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    state = WebState(
        settings=settings,
        service=service,
        templates=create_environment(),
        celery_app=celery_app,
    )
    state.templates.globals["live_interval"] = settings.dashboard_refresh_interval
    app.state.taskq = state
    install_error_handlers(app)
    routers = (
        api_routes.router,
        schedule_routes.router,
        metrics.router,
        probes.router,
        pages.router,
        schedule_routes.pages,
        insight_routes.router,
        forms.router,
        bulk_routes.router,
    )
    for router in routers:
        app.include_router(router)
    # The last added runs first: headers on every answer, HEAD as GET, the body cap, then the
    # API token before any body is read.
    guarded = token_routes([route for router in routers for route in router.routes])
    app.add_middleware(ApiTokenGuard, state=state, routes=guarded)
    app.add_middleware(BodyLimitMiddleware, max_bytes=body_limit(settings))
    app.add_middleware(HeadMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    return app
