"""Errors as responses: JSON ``{"error": "<message>"}`` for the API (and metrics), an HTML page
for pages; and the app's one exception handler, which answers every error the web layer expects
with the status of :mod:`celery_taskq.web.errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from celery_taskq.core.exceptions import (
    DuplicateTaskError,
    TaskqError,
)
from celery_taskq.web.errors import ApiError, status_of, validation_message, wants_json
from celery_taskq.web.templating import render

logger = logging.getLogger(__name__)


def error_response(
    request: Request,
    status_code: int,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    """The error as JSON for API paths, as an HTML page otherwise."""
    if wants_json(request):
        return JSONResponse(
            {"error": message, **(extra or {})}, status_code=status_code, headers=headers
        )
    response = render(
        request,
        "error.html",
        {"status_code": status_code, "message": message},
        status_code=status_code,
    )
    response.headers.update(headers or {})
    return response


async def _handle(request: Request, exc: Exception) -> Response:
    """The one exception handler: every error the web layer expects, as :func:`error_response`."""
    if isinstance(exc, ApiError):
        return error_response(
            request, exc.status_code, exc.message, headers=exc.headers, extra=exc.extra
        )
    if isinstance(exc, TaskqError):
        status_code = status_of(exc)
        if status_code >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, exc)
        extra = {}
        if isinstance(exc, DuplicateTaskError) and exc.existing_id is not None:
            extra["existing_task_id"] = exc.existing_id
        return error_response(request, status_code, str(exc), extra=extra)
    if isinstance(exc, RequestValidationError):
        return error_response(request, 422, validation_message(exc.errors()))
    if isinstance(exc, StarletteHTTPException):
        message = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 404:
            message = f"not found: {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(request, exc.status_code, message, headers=exc.headers)
    raise exc  # pragma: no cover - registered only for the classes above


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through :func:`error_response`."""
    for exception_class in (TaskqError, ApiError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(exception_class, _handle)
