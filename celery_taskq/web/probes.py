"""Probes for orchestrators: ``/healthz`` (liveness) and ``/readyz`` (readiness).

- ``GET /healthz``: 200 ``{"status": "ok"}`` whenever the process serves requests. It reads no
  database, so an outage of the database never gets the dashboard restarted.
- ``GET /readyz``: 200 ``{"status": "ready", ...}`` when the database is reachable and its
  schema is at head (:func:`celery_taskq.reports.health.check_ready`); otherwise 503
  ``{"status": "unready", "reason": "<check>: <why>", ...}``. Both list the two checks.

``HEAD`` answers wherever ``GET`` does (:mod:`celery_taskq.web.head`). The work-flow checks of
``celery-taskq health`` (beat, runners, due work, dead letters) are not readiness: a dashboard
serves fine while beat is down; alert on them from ``/metrics`` or the command instead.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from celery_taskq.reports.health import check_ready
from celery_taskq.web.state import WebState, get_state

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
def readyz(state: Annotated[WebState, Depends(get_state)]) -> JSONResponse:
    """Readiness: the database is reachable and its schema at head (503 with the reason)."""
    checks = check_ready(state.database)
    body: dict[str, Any] = {
        "checks": [
            {"name": check.name, "state": check.state, "reason": check.reason} for check in checks
        ]
    }
    failed = [check for check in checks if check.failed]
    if failed:
        reason = "; ".join(f"{check.name}: {check.reason}" for check in failed)
        return JSONResponse({"status": "unready", "reason": reason, **body}, status_code=503)
    return JSONResponse({"status": "ready", **body})
