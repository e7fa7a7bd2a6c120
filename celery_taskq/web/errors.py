"""Errors as responses: JSON ``{"error": "<message>"}`` for the API, an HTML page for pages.

=====================================================  ======
what                                                   status
=====================================================  ======
bad input: :class:`InvalidTaskError` (unknown handler,   400
data the handler refuses, a bad filter or time)
a request the schema refuses (FastAPI validation)      422
:class:`TaskDataLimitError` (task data too deep or     422
too large)
no token, or a wrong one (writes enabled)              401
writes disabled (no token configured)                  403
:class:`NotFoundError`, an unknown path                404
:class:`DuplicateTaskError`, cancel/retry conflicts    409
:class:`StorageError` (schema missing, database down)  503
=====================================================  ======
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from celery_taskq.core.exceptions import (
    DuplicateTaskError,
    InvalidTaskError,
    NotFoundError,
    StorageError,
    TaskDataLimitError,
    TaskqError,
)

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
"""Paths under this prefix (and ``/metrics``) answer errors in JSON; the rest in HTML."""


class ApiError(Exception):
    """An HTTP error with a clear message, raised by the web layer itself."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def status_of(exc: TaskqError) -> int:
    """The HTTP status of a library error (see the module's table)."""
    if isinstance(exc, DuplicateTaskError):
        return 409
    if isinstance(exc, TaskDataLimitError):
        return 422
    if isinstance(exc, InvalidTaskError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, StorageError):
        return 503
    return 500


def wants_json(request: Request) -> bool:
    """Whether the request is for the API (or metrics) rather than a page."""
    path = request.url.path
    return path.startswith(API_PREFIX) or path == "/metrics"


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
    from celery_taskq.web.render import render  # the templates need the app's state

    response = render(
        request,
        "error.html",
        {"status_code": status_code, "message": message},
        status_code=status_code,
    )
    response.headers.update(headers or {})
    return response


def validation_message(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors as one line: ``query.limit: Input should be ...; ...``."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{location}: {error.get('msg', 'invalid')}" if location else error.get("msg"))
    return "invalid request: " + ("; ".join(str(part) for part in parts) or "not accepted")


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
