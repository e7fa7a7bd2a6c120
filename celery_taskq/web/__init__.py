"""The web dashboard, the HTTP API (``/api/v1``) and Prometheus metrics (``/metrics``).

Built with FastAPI, server-rendered Jinja2 templates and uvicorn. Every figure is read through
the reports (:mod:`celery_taskq.reports`) and the core's read side (:mod:`celery_taskq.core.listing`
and the queue service's snapshots); nothing here writes SQL. Neither the core nor the reports
import this package.

Read-only unless ``TASKQ_DASHBOARD_TOKEN`` is set: then enqueue, cancel and retry are open to
requests that present the token (see :mod:`celery_taskq.web.auth`).
"""

from __future__ import annotations

from celery_taskq.web.app import create_app

__all__ = ["create_app"]
