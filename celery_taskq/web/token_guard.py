"""The API token checked before a request's body is read: :class:`ApiTokenGuard`."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from celery_taskq.web.auth import api_refusal
from celery_taskq.web.error_responses import error_response
from celery_taskq.web.state import WebState


class ApiTokenGuard:
    """Refuses a request to a token route before anything reads its body.

    FastAPI parses a route's JSON body before it runs the route's dependencies; this pure ASGI
    middleware runs the same check as :func:`~celery_taskq.web.auth.require_api_token` first, so
    that a request without the token costs no parsing (the body size is capped before, by
    :class:`celery_taskq.web.body_limit.BodyLimitMiddleware`).
    """

    def __init__(self, app: ASGIApp, *, state: WebState, routes: Sequence[APIRoute]) -> None:
        self.app = app
        self.state = state
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(
            route.matches(scope)[0] is Match.FULL for route in self.routes
        ):
            refusal = api_refusal(self.state, Headers(scope=scope).get("authorization"))
            if refusal is not None:
                response = error_response(
                    Request(scope), refusal.status_code, refusal.message, headers=refusal.headers
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
