"""What the native task audit is told of a task, as plain values: :class:`TaskMessage` (a
message or a running task's request), :class:`NotedError` (the text of an error, never the
exception), and :func:`attempt_end`, how an attempt ended as its run records it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery_taskq.core.models import RunStatus
from celery_taskq.core.native_codes import NATIVE_CODE_STATUS, NativeCode
from celery_taskq.core.statements.native_attempts import AttemptEnd
from celery_taskq.core.storage.encoding import JsonText

QUEUED_BY_HEADER = "taskq_queued_by"
"""Message header a caller may set (``apply_async(headers=...)``) to fill ``QueuedById``."""


def json_safe(value: Any) -> Any:
    """``value`` as a JSON document; what JSON cannot hold becomes its ``repr``."""
    return json.loads(json_text(value))


def json_text(value: Any) -> JsonText:
    """:func:`json_safe`'s document as JSON text, serialized once (stored as it is)."""
    return JsonText(json.dumps(value, default=repr, allow_nan=False))


@dataclass(frozen=True)
class TaskMessage:
    """What a Celery message (or a running task's request) tells of a task."""

    task_id: str
    task_name: str
    args: Any = ()
    kwargs: Any = None
    eta: datetime | None = None
    retries: int = 0
    """Celery's ``retries``: the attempt number (0 for the first)."""
    max_retries: int | None = 3
    """The task's retry limit as the sending or running process knows it (``None``: none)."""
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    chord_id: str | None = None
    queued_by: str | None = None
    replaced_nesting: int = 0
    """Celery's ``replaced_task_nesting``: how many ``Task.replace()`` led to this message."""
    eager: bool = False


@dataclass(frozen=True)
class NotedError:
    """The text of an error an attempt ended with (never the exception itself)."""

    code: str
    message: str
    traceback: str = ""
    status: RunStatus = RunStatus.ERROR


def attempt_end(
    state: str | None,
    retval: Any,
    *,
    error: NotedError | None = None,
    requeue: bool = False,
    ignore_result: bool = False,
    replaced: bool = False,
) -> AttemptEnd | None:
    """How an attempt ended, from Celery's state at ``task_postrun`` and what was noted of it;
    ``None`` when Celery gives no state (the attempt was interrupted: its end is recorded by the
    worker's main process, or by the next attempt)."""
    if state == "SUCCESS":
        if ignore_result:
            return coded(NativeCode.RESULT_IGNORED)
        return AttemptEnd(RunStatus.SUCCESS, results=None if retval is None else json_safe(retval))
    if state == "IGNORED":
        return coded(NativeCode.REPLACED if replaced else NativeCode.IGNORED, final=not replaced)
    if state == "REJECTED":
        code = NativeCode.REJECTED_REQUEUED if requeue else NativeCode.REJECTED
        return coded(code, message=_text(retval), final=not requeue)
    if state == "RETRY":
        if error is None:
            return coded(NativeCode.RETRY, message=_text(retval), final=False)
        return AttemptEnd(error.status, error.code, error.message, final=False)
    if state == "FAILURE":
        if error is None:
            return AttemptEnd(RunStatus.ERROR, type(retval).__name__, _text(retval))
        return AttemptEnd(error.status, error.code, error.message)
    return None


def coded(code: NativeCode, *, message: str | None = None, final: bool = True) -> AttemptEnd:
    """An end with ``code`` and its contract status."""
    return AttemptEnd(NATIVE_CODE_STATUS[code], code.value, message, final=final)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return str(value)
    except Exception:
        return repr(type(value))
