"""Who may write: enqueue, cancel and retry need the configured token.

* No ``TASKQ_DASHBOARD_TOKEN`` configured: every write answers 403 (writes are disabled), and
  the dashboard is read-only.
* A token configured: the HTTP API wants ``Authorization: Bearer <token>``; a missing or wrong
  one answers 401. HTML forms carry the token in a ``token`` field, or rely on the session
  cookie that signing in (``POST /login`` with the token) sets: an HttpOnly, ``SameSite=Strict``
  cookie holding an HMAC of the token (never the token itself), so another site's form cannot
  send it along.

Tokens are compared with :func:`hmac.compare_digest` (constant time) as UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from celery_taskq.settings import Settings
from celery_taskq.web.errors import ApiError
from celery_taskq.web.state import WebState, get_state

SESSION_COOKIE = "taskq_session"
"""Name of the cookie that signing in sets."""

_SESSION_CONTEXT = b"celery_taskq dashboard session v1"

WRITES_DISABLED = (
    "writes are disabled: this dashboard has no token configured "
    "(set TASKQ_DASHBOARD_TOKEN to allow enqueue, cancel and retry)"
)

bearer = HTTPBearer(
    auto_error=False,
    description="The dashboard token (TASKQ_DASHBOARD_TOKEN); needed by enqueue, cancel, retry.",
)


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def token_matches(presented: str | None, configured: str) -> bool:
    """Whether ``presented`` is the configured token (never true when none is configured)."""
    if not configured or presented is None:
        return False
    return hmac.compare_digest(_bytes(presented), _bytes(configured))


def session_value(configured: str) -> str:
    """The session cookie's value for the configured token: an HMAC, not the token."""
    return hmac.new(_bytes(configured), _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def signed_in(request: Request, settings: Settings) -> bool:
    """Whether the request carries a valid session cookie."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not settings.dashboard_token or cookie is None:
        return False
    return hmac.compare_digest(_bytes(cookie), _bytes(session_value(settings.dashboard_token)))


def _refuse(state: WebState, authorised: bool, *, bearer_challenge: bool) -> None:
    if not state.writes_enabled:
        raise ApiError(403, WRITES_DISABLED)
    if not authorised:
        headers = {"WWW-Authenticate": "Bearer"} if bearer_challenge else None
        raise ApiError(401, "a valid dashboard token is required for this action", headers=headers)


def require_api_token(
    state: Annotated[WebState, Depends(get_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """API dependency: 403 when writes are disabled, 401 without the right bearer token."""
    presented = None if credentials is None else credentials.credentials
    _refuse(
        state,
        token_matches(presented, state.settings.dashboard_token),
        bearer_challenge=True,
    )


def check_form_token(request: Request, state: WebState, presented: str | None) -> None:
    """Form check: 403 when writes are disabled, 401 unless the field or the cookie is right."""
    authorised = bool(presented) and token_matches(presented, state.settings.dashboard_token)
    _refuse(state, authorised or signed_in(request, state.settings), bearer_challenge=False)
