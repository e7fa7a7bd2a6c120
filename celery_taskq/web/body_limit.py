"""A cap on request bodies, applied before anything parses or authenticates them.

:class:`BodyLimitMiddleware` is a pure ASGI middleware: a declared ``Content-Length`` over the
limit is answered 413 at once, without reading a byte; a body without one (chunked) is counted
as it is read, and reading stops with a 413 at the first chunk past the limit. Memory therefore
stays bounded by the limit whatever a client sends. (FastAPI's own ``max_body_size`` lets the
route run when the declared length is over the limit, and answers in its own format.)
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celery_taskq.core.settings import Settings
from celery_taskq.web.error_responses import error_response

MAX_BODY_BYTES = 2 * 1024 * 1024
"""Largest request body the dashboard reads, for the API and forms alike (2 MiB), unless the
task data limit asks for more (:func:`body_limit`)."""


def body_limit(settings: Settings) -> int:
    """The cap for ``settings``: :data:`MAX_BODY_BYTES`, or room for the largest task data the
    intake accepts (``TASKQ_TASK_DATA_MAX_BYTES``) when that is larger, so that such data is
    refused for what it is rather than for the size of its envelope. A form percent-encodes
    non-ASCII text to three bytes a byte, hence the factor."""
    return max(MAX_BODY_BYTES, 3 * settings.task_data_max_bytes + 64 * 1024)


class BodyTooLargeError(HTTPException):
    """The request body is over the limit (413). An ``HTTPException``, so that FastAPI's body
    parsing passes it on to the app's error handlers unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the request body is larger than the dashboard's limit of {limit} bytes"
        )


class BodyLimitMiddleware:
    """Answers 413 to a request whose body is, or turns out to be, over ``max_bytes``."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                await _answer(scope, receive, send, 400, "Content-Length is not a number of bytes")
                return
            if len(declared) > 18 or int(declared) > self.max_bytes:
                await _answer(scope, receive, send, 413, BodyTooLargeError(self.max_bytes).detail)
                return
        received = 0
        started = False

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_limited, send_tracked)
        except BodyTooLargeError as exc:  # read outside FastAPI's error handlers
            if started:
                raise
            await _answer(scope, receive, send, exc.status_code, exc.detail)


async def _answer(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    await error_response(Request(scope), status, message)(scope, receive, send)
