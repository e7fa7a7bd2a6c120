"""Rendering pages: one Jinja2 environment with autoescaping on, and the context every page gets."""

from __future__ import annotations

import json
from datetime import datetime
from importlib.resources import files
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from celery_taskq import __version__
from celery_taskq.web.auth import signed_in
from celery_taskq.web.csrf import csrf_token
from celery_taskq.web.headers import csp_nonce
from celery_taskq.web.state import get_state


def _time(value: datetime | None) -> str:
    """A time as ``2026-01-31 08:00:00Z`` (UTC, to the second); ``-`` for none."""
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M:%SZ")


def _seconds(value: float | None) -> str:
    """Seconds with three decimals; ``-`` for none."""
    return "-" if value is None else f"{value:.3f}"


def _pretty_json(value: Any) -> str:
    """JSON indented for reading (the template escapes it)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def create_environment() -> jinja2.Environment:
    """The templates of this package, autoescaped (every value shown is HTML-escaped)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(files("celery_taskq.web") / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["time"] = _time
    environment.filters["seconds"] = _seconds
    environment.filters["pretty_json"] = _pretty_json
    return environment


def render(
    request: Request, template: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    """Render ``template`` with ``context`` plus what the layout needs; an HTML response."""
    state = get_state(request)
    page = {
        "request_path": request.url.path,
        "nonce": csp_nonce(request),
        "writes_enabled": state.writes_enabled,
        "signed_in": signed_in(request, state.settings),
        "csrf_token": csrf_token(request, state.settings),
        "flower_url": state.settings.flower_url,
        "version": __version__,
        **context,
    }
    html = state.templates.get_template(template).render(page)
    # Values are shown through celery_taskq.reports.shown; "replace" keeps any stray lone surrogate
    # from failing the whole page.
    return HTMLResponse(html.encode("utf-8", "replace"), status_code=status_code)
