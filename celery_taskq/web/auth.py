"""Who may write: enqueue, cancel and retry need the configured token.

* No ``TASKQ_DASHBOARD_TOKEN`` configured: every write answers 403 (writes are disabled), and
  the dashboard is read-only.
* A token configured: the HTTP API wants ``Authorization: Bearer <token>``; a missing or wrong
  one answers 401, before the request's body is read
  (:class:`~celery_taskq.web.token_guard.ApiTokenGuard`). A cookie never authenticates an API
  request.
* HTML forms carry the token in a ``token`` field, or rely on the session cookie that signing
  in (``POST /login`` with the token) sets: an HttpOnly, ``SameSite=Strict`` cookie holding a
  random session id and its HMAC keyed by the token (never the token itself). A form sent by
  the cookie must also pass the checks of :mod:`celery_taskq.web.csrf`: its Origin (or
  Referer) is this dashboard, and it carries the session's CSRF token.

Tokens are compared with :func:`hmac.compare_digest` (constant time) as UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.routing import BaseRoute

from celery_taskq.core.settings import Settings
from celery_taskq.web.errors import ApiError
from celery_taskq.web.state import WebState, get_state

SESSION_COOKIE = "taskq_session"
"""Name of the cookie that signing in sets."""

_SESSION_CONTEXT = b"celery_taskq dashboard session v2"

WRITES_DISABLED = (
    "writes are disabled: this dashboard has no token configured "
    "(set TASKQ_DASHBOARD_TOKEN to allow enqueue, cancel and retry)"
)

UNAUTHORISED = "a valid dashboard token is required for this action"

bearer = HTTPBearer(
    auto_error=False,
    description="The dashboard token (TASKQ_DASHBOARD_TOKEN); needed by enqueue, cancel, retry.",
)


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def keyed_hash(configured: str, context: bytes, message: str) -> str:
    """HMAC-SHA256 of ``message`` under the configured token, for one ``context``."""
    return hmac.new(_bytes(configured), context + _bytes(message), hashlib.sha256).hexdigest()


def token_matches(presented: str | None, configured: str) -> bool:
    """Whether ``presented`` is the configured token (never true when none is configured)."""
    if not configured or presented is None:
        return False
    return hmac.compare_digest(_bytes(presented), _bytes(configured))


def new_session(configured: str) -> str:
    """A fresh session cookie value: ``<random id>.<HMAC of the id>``, never the token."""
    session_id = secrets.token_urlsafe(18)
    return f"{session_id}.{keyed_hash(configured, _SESSION_CONTEXT, session_id)}"


def session_of(request: Request, settings: Settings) -> str | None:
    """The request's session cookie when it is valid for the configured token, else None."""
    value = request.cookies.get(SESSION_COOKIE)
    if not settings.dashboard_token or value is None:
        return None
    session_id, _, mac = value.partition(".")
    expected = keyed_hash(settings.dashboard_token, _SESSION_CONTEXT, session_id)
    return value if hmac.compare_digest(_bytes(mac), _bytes(expected)) else None


def signed_in(request: Request, settings: Settings) -> bool:
    """Whether the request carries a valid session cookie."""
    return session_of(request, settings) is not None


def refusal_of(state: WebState, authorised: bool, *, bearer_challenge: bool) -> ApiError | None:
    """The refusal of a write: 403 when writes are disabled, 401 when not ``authorised``."""
    if not state.writes_enabled:
        return ApiError(403, WRITES_DISABLED)
    if not authorised:
        headers = {"WWW-Authenticate": "Bearer"} if bearer_challenge else None
        return ApiError(401, UNAUTHORISED, headers=headers)
    return None


def api_refusal(state: WebState, authorization: str | None) -> ApiError | None:
    """Why an API write with this ``Authorization`` header is refused (403, 401), or None."""
    scheme, presented = get_authorization_scheme_param(authorization)
    authorised = scheme.lower() == "bearer" and token_matches(
        presented, state.settings.dashboard_token
    )
    return refusal_of(state, authorised, bearer_challenge=True)


def require_api_token(
    state: Annotated[WebState, Depends(get_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """API dependency: 403 when writes are disabled, 401 without the right bearer token."""
    presented = None if credentials is None else credentials.credentials
    refusal = refusal_of(
        state,
        token_matches(presented, state.settings.dashboard_token),
        bearer_challenge=True,
    )
    if refusal is not None:
        raise refusal


def token_routes(routes: Sequence[BaseRoute]) -> list[APIRoute]:
    """The routes that depend on :func:`require_api_token` (the API's writes)."""
    return [
        route
        for route in routes
        if isinstance(route, APIRoute)
        and any(dependency.call is require_api_token for dependency in route.dependant.dependencies)
    ]
