"""What a dashboard form must show before it may write: its origin, and its credentials.

``SameSite=Strict`` keeps the session cookie from other *sites*, but not from pages of the same
site: another port of the same host, or a sibling subdomain, is same-site, and a form there
would carry the cookie. So a form sent by the cookie must also:

* come from this dashboard: its ``Origin`` header (else its ``Referer``) has this dashboard's
  scheme, host and port; one that names another origin is refused even before the body is read,
  whatever the form carries, and a form sent by the cookie with neither header is refused;
* carry the session's CSRF token in its hidden ``csrf_token`` field: an HMAC, keyed by the
  dashboard token, of the session cookie, so that it changes with every sign-in and only a page
  of this dashboard (which the same-origin policy keeps from other origins) can know it.

A form that carries the token itself in its ``token`` field (a script or ``curl`` without a
cookie) needs no CSRF token: it is not authenticated by anything a browser adds on its own.
Refusals are 403 with a message that says which check failed; nothing is written.

This dashboard's own origin is the scheme and ``Host`` of the request as uvicorn sees them.
Behind a reverse proxy, the proxy must pass the browser's ``Host`` on and, when it ends TLS,
set ``X-Forwarded-Proto`` from an address uvicorn trusts (``FORWARDED_ALLOW_IPS``).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

from fastapi import Request

from celery_taskq.core.settings import Settings
from celery_taskq.web.auth import (
    UNAUTHORISED,
    keyed_hash,
    refusal_of,
    session_of,
    signed_in,
    token_matches,
)
from celery_taskq.web.errors import ApiError
from celery_taskq.web.state import WebState

CSRF_FIELD = "csrf_token"
"""Name of the hidden form field that carries the CSRF token."""

_CSRF_CONTEXT = b"celery_taskq dashboard csrf v1"

_DEFAULT_PORTS = {"http": 80, "https": 443}

_SHOWN_ORIGIN = 200
"""Characters of a foreign origin quoted in a refusal."""

Origin = tuple[str, str, int]


def csrf_token(request: Request, settings: Settings) -> str:
    """The CSRF token of the request's session ("" when it is not signed in)."""
    session = session_of(request, settings)
    if session is None:
        return ""
    return keyed_hash(settings.dashboard_token, _CSRF_CONTEXT, session)


def origin_of(url: str) -> Origin | None:
    """``(scheme, host, port)`` of an http(s) URL or Origin value; None for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def own_origin(request: Request) -> Origin | None:
    """This dashboard's origin as the request reached it (scheme and Host)."""
    return origin_of(f"{request.url.scheme}://{request.url.netloc}")


def check_origin(request: Request) -> bool:
    """Refuse (403) a request whose Origin, or else Referer, is not this dashboard.

    Returns whether one of the two headers vouched for the request; False when it has neither.
    """
    headers = request.headers
    name = "Origin" if "origin" in headers else "Referer" if "referer" in headers else None
    if name is None:
        return False
    claimed = headers[name]
    own = own_origin(request)
    if own is None or origin_of(claimed) != own:
        shown = f"{own[0]}://{request.url.netloc}" if own else "unknown"
        raise ApiError(
            403,
            f"refused: the form was sent from {claimed[:_SHOWN_ORIGIN]!r} ({name} header), "
            f"not from this dashboard ({shown}); forms may be sent only from its own pages",
        )
    return True


def check_form_credentials(
    request: Request, state: WebState, form: Mapping[str, str], *, origin_vouched: bool
) -> None:
    """The token field, or the session cookie with the CSRF checks (403); 401 without either.

    Writes disabled answers 403 first. ``origin_vouched`` is :func:`check_origin`'s answer.
    """
    refusal = refusal_of(state, True, bearer_challenge=False)
    if refusal is not None:
        raise refusal
    configured = state.settings.dashboard_token
    if form.get("token") and token_matches(form.get("token"), configured):
        return
    if not signed_in(request, state.settings):
        raise ApiError(401, UNAUTHORISED)
    if not origin_vouched:
        raise ApiError(
            403,
            "refused: a form sent with the session cookie must carry an Origin or Referer "
            "header naming this dashboard",
        )
    expected = csrf_token(request, state.settings)
    presented = form.get(CSRF_FIELD, "")
    if not hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode()):
        raise ApiError(
            403,
            "refused: the form's CSRF token is missing or does not belong to this session "
            "(reload the page, then send the form again)",
        )
