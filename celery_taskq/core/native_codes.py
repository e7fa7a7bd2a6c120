"""The ``ErrorCode`` of each way a native Celery task's attempt can end, and its run status.

Statuses are the contract's only: an outcome that is not a failure of the task (replaced,
ignored) is ``success`` with a code that says so; a failure is ``error``, or ``timeout`` where the
attempt was cut short from outside (lost, superseded, time limit). A plain exception keeps the
exception's type name as its code, as handler runs do. ``docs/adopting-celery.md`` lists them.
"""

from __future__ import annotations

import enum

from celery_taskq.core.models import RunStatus


class NativeCode(enum.StrEnum):
    """``TaskRuns.ErrorCode`` values written by the native Celery audit."""

    SUPERSEDED = "superseded"
    """A newer attempt of the same task id started while this one was still open."""
    WORKER_LOST = "worker_lost"
    """The process running the attempt died (Celery's ``WorkerLostError``)."""
    SOFT_TIME_LIMIT = "soft_time_limit"
    """``SoftTimeLimitExceeded`` was raised in the task and not handled."""
    TIME_LIMIT = "time_limit"
    """The hard time limit killed the attempt."""
    REVOKED = "revoked"
    """Revoked before it started; the worker discarded the message."""
    TERMINATED = "terminated"
    """Revoked with ``terminate=True`` while it ran."""
    EXPIRED = "expired"
    """Its ``expires`` passed before a worker started it."""
    REJECTED = "rejected"
    """The task raised ``Reject(requeue=False)``: the message went to the dead-letter path."""
    REJECTED_REQUEUED = "rejected_requeued"
    """The task raised ``Reject(requeue=True)``: the message was put back for another attempt."""
    IGNORED = "ignored"
    """The task raised ``Ignore``: no state is stored by Celery; not a failure."""
    REPLACED = "replaced"
    """The task replaced itself (``Task.replace()``); its replacement runs under the same id."""
    RETRY = "retry"
    """Used when the error that made Celery retry is unknown (``self.retry()`` with no ``exc``)."""
    RESULT_IGNORED = "result_ignored"
    """Succeeded; the task has ``ignore_result`` so no result is stored (``Results`` is NULL)."""


NATIVE_CODE_STATUS: dict[NativeCode, RunStatus] = {
    NativeCode.SUPERSEDED: RunStatus.TIMEOUT,
    NativeCode.WORKER_LOST: RunStatus.TIMEOUT,
    NativeCode.SOFT_TIME_LIMIT: RunStatus.TIMEOUT,
    NativeCode.TIME_LIMIT: RunStatus.TIMEOUT,
    NativeCode.REVOKED: RunStatus.ERROR,
    NativeCode.TERMINATED: RunStatus.ERROR,
    NativeCode.EXPIRED: RunStatus.ERROR,
    NativeCode.REJECTED: RunStatus.ERROR,
    NativeCode.REJECTED_REQUEUED: RunStatus.ERROR,
    NativeCode.IGNORED: RunStatus.SUCCESS,
    NativeCode.REPLACED: RunStatus.SUCCESS,
    NativeCode.RETRY: RunStatus.ERROR,
    NativeCode.RESULT_IGNORED: RunStatus.SUCCESS,
}
"""The run status each code is recorded with."""
