"""Reading request input: filters, times and text, refused with a clear 400 when wrong.

Text that no database column can hold is refused here rather than failing in the driver:
NUL characters (PostgreSQL text cannot hold them) and lone surrogates (not encodable as UTF-8).
JSON bodies are parsed without Python's recursion limit (:class:`JsonBodyRoute`), so a document
nested too deeply meets the task data limits like any other instead of failing the parser.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from celery_taskq import reports
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.listing import TaskFilter, parse_status
from celery_taskq.core.storage.decoding import loads_json
from celery_taskq.core.storage.storable import (
    json_problem as json_problem,  # re-exported for schemas
)
from celery_taskq.core.storage.storable import text_problem as text_problem

MAX_ID = 2**63 - 1
"""Largest id a path or cursor may name (64-bit keys on both databases)."""

MAX_TEXT = 255
"""Longest handler, queued-by, title or unique key (the columns are varchar(255))."""


def optional_text(value: str | None, name: str) -> str | None:
    """A text filter or field: blank means none; unstorable text is refused."""
    if value is None or not value.strip():
        return None
    problem = text_problem(value)
    if problem is not None:
        raise InvalidArgumentError(f"{name} {problem}")
    return value.strip()


def moment(value: str | None, name: str, now: datetime) -> datetime | None:
    """An ISO 8601 time with an offset, or a duration back from ``now`` (``24h``, ``30m``)."""
    text = optional_text(value, name)
    if text is None:
        return None
    try:
        return reports.resolve_moment(reports.parse_moment(text), now)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{name}: {exc}") from None
    except (OverflowError, ValueError):
        raise InvalidArgumentError(f"{name}: {text!r} is out of range") from None


def window(
    since: str | None, until: str | None, now: datetime, *, default_since: str | None = None
) -> reports.ReportWindow:
    """A report window from ``since``/``until`` text (``default_since`` when ``since`` is blank)."""
    start = moment(since, "since", now)
    if start is None and default_since is not None:
        start = moment(default_since, "since", now)
    end = moment(until, "until", now)
    return reports.ReportWindow(start, end)


def task_filter(
    *,
    status: str | None,
    handler: str | None,
    queued_by: str | None,
    since: str | None,
    until: str | None,
    now: datetime,
    celery_root_id: str | None = None,
    celery_group_id: str | None = None,
) -> TaskFilter:
    """The task list's filter from request text; blank fields filter nothing."""
    start = moment(since, "since", now)
    end = moment(until, "until", now)
    if start is not None and end is not None and start >= end:
        raise InvalidArgumentError("since must be before until")
    return TaskFilter(
        status=parse_status(optional_text(status, "status")),
        handler=optional_text(handler, "handler"),
        queued_by=optional_text(queued_by, "queued_by"),
        queued_since=start,
        queued_until=end,
        celery_root_id=optional_text(celery_root_id, "celery_root_id"),
        celery_group_id=optional_text(celery_group_id, "celery_group_id"),
    )


def cursor(value: str | int | None, name: str = "before_id") -> int | None:
    """A positive id (a page cursor), or ``None``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgumentError(f"{name} must be a whole number") from None
    if not 1 <= number <= MAX_ID:
        raise InvalidArgumentError(f"{name} must be from 1 to {MAX_ID}")
    return number


class _JsonBodyRequest(Request):
    """A request whose JSON body is parsed by
    :func:`~celery_taskq.core.storage.decoding.loads_json`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_json(await self.body())
        return self._json


class JsonBodyRoute(APIRoute):
    """A route whose JSON body is parsed at any depth; the limits are checked by intake."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_with_deep_json(request: Request) -> Response:
            return await handle(_JsonBodyRequest(request.scope, request.receive))

        return handle_with_deep_json
