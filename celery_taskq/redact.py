"""Redaction of secrets in task data wherever it is shown: CLI, dashboard, HTTP API.

The value of every key that matches a configured pattern (``TASKQ_REDACT_PATTERNS``) is shown
as :data:`REDACTED`, at any depth of nested objects and lists. Matching ignores case and the
separators ``_``, ``-``, ``.`` and spaces, and looks for the pattern anywhere in the key: the
pattern ``api_key`` matches ``api_key``, ``X-Api-Key`` and ``stripeApiKey``.

Only what is shown changes: the stored ``TaskData`` and what the handler receives as
``run.data`` stay as queued, and so does :func:`celery_taskq.get_task`, a program's own read.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any, TypeVar

from celery_taskq.listing import TaskPage
from celery_taskq.snapshots import TaskSummary

REDACTED = "[redacted]"
"""What a redacted value is shown as."""

_SEPARATORS = re.compile(r"[\s_.\-]+")

_Task = TypeVar("_Task", bound=TaskSummary)


def _normal(text: str) -> str:
    return _SEPARATORS.sub("", text).casefold()


def key_matcher(patterns: Iterable[str]) -> tuple[str, ...]:
    """The patterns in the form keys are compared with (empty ones dropped)."""
    return tuple(normal for pattern in patterns if (normal := _normal(pattern)))


def is_secret_key(key: Any, patterns: Iterable[str]) -> bool:
    """Whether a key of ``data`` holds a secret under ``patterns``."""
    if not isinstance(key, str):
        return False
    normal = _normal(key)
    return any(pattern in normal for pattern in key_matcher(patterns))


def redact(data: Any, patterns: Iterable[str]) -> Any:
    """A copy of ``data`` with the value of every key matching ``patterns`` replaced."""
    matchers = key_matcher(patterns)
    if not matchers:
        return data
    return _redact(data, matchers)


def _redact(data: Any, matchers: tuple[str, ...]) -> Any:
    if isinstance(data, dict):
        return {
            key: REDACTED
            if isinstance(key, str) and any(m in _normal(key) for m in matchers)
            else _redact(value, matchers)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [_redact(item, matchers) for item in data]
    return data


def redacted_task(task: _Task, patterns: Iterable[str]) -> _Task:
    """The snapshot with its ``task_data`` redacted, for showing."""
    return dataclasses.replace(task, task_data=redact(task.task_data, patterns))


def redacted_page(page: TaskPage, patterns: Iterable[str]) -> TaskPage:
    """The page with every task's ``task_data`` redacted, for showing."""
    patterns = tuple(patterns)
    return dataclasses.replace(
        page, tasks=tuple(redacted_task(task, patterns) for task in page.tasks)
    )
