"""Errors of the web layer: :class:`ApiError`, and the HTTP status of each library error.

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

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request

from celery_taskq.core.exceptions import (
    DuplicateTaskError,
    InvalidTaskError,
    NotFoundError,
    StorageError,
    TaskDataLimitError,
    TaskqError,
)

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


def validation_message(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors as one line: ``query.limit: Input should be ...; ...``."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{location}: {error.get('msg', 'invalid')}" if location else error.get("msg"))
    return "invalid request: " + ("; ".join(str(part) for part in parts) or "not accepted")
