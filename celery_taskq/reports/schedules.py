"""Schedules as shown by the CLI's ``--json`` and the HTTP API: task data with secrets
redacted, and every stored value bounded so that any stored row renders
(:mod:`celery_taskq.reports.shown`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery_taskq.core.schedules import ScheduleSnapshot, snapshot_json
from celery_taskq.reports.redact import redact
from celery_taskq.reports.shown import (
    SHOWN_SHORT_MAX_CHARS,
    shown_json,
    shown_optional_text,
    shown_text,
)

_SHORT_TEXTS = ("name", "handler", "timezone", "misfire_policy", "source")
_OPTIONAL_TEXTS = ("crontab", "title", "last_status")


def shown_schedule(snapshot: ScheduleSnapshot, redact_patterns: Iterable[str]) -> dict[str, Any]:
    """The schedule as JSON values: times in ISO 8601, data redacted, texts bounded."""
    document = snapshot_json(snapshot)
    for key in _SHORT_TEXTS:
        document[key] = shown_text(document[key], SHOWN_SHORT_MAX_CHARS)
    for key in _OPTIONAL_TEXTS:
        document[key] = shown_optional_text(document[key], SHOWN_SHORT_MAX_CHARS)
    document["data"] = shown_json(redact(snapshot.data, redact_patterns))
    return document
