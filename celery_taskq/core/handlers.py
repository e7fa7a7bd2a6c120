"""What a handler is: the :class:`TaskHandler` base, :class:`TaskError`, :class:`Continue`.

A handler class is named in ``TaskQueue.TaskHandlerClass`` by a registered name
(:mod:`celery_taskq.core.registry`) or a dotted path, and loaded by
:mod:`celery_taskq.core.loading`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_taskq.core.context import RunContext


class TaskError(Exception):
    """A known failure raised by a handler: recorded as the run's ErrorCode and ErrorMessage.

    ``results``, when given, is stored in the failed run's ``Results`` (what was done before
    the failure).
    """

    def __init__(self, message: str, code: str | None = None, *, results: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.results = results


@dataclass(frozen=True)
class Continue:
    """Returned by a handler whose work is not finished: go on from ``checkpoint`` (Combodo).

    The run ends ``success`` with ``checkpoint`` in its ``Checkpoint`` column, the task stays
    open, and its next run is created at once and reads the checkpoint as ``run.checkpoint``.
    ``results``, when given, is stored in the run's ``Results``.
    """

    checkpoint: Any
    results: Any = None


CANCELLED_CODE = "cancelled"
"""``ErrorCode`` of a run that stopped because its task was cancelled."""


class TaskCancelledError(TaskError):
    """Raised inside a handler (by ``run.set_progress`` or ``run.raise_if_cancelled``) once the
    task was cancelled; the run ends ``error`` with code ``cancelled``."""

    def __init__(self, message: str = "the task was cancelled") -> None:
        super().__init__(message, code=CANCELLED_CODE)


class TaskHandler:
    """Base class of every task handler (the seed's ``ITaskHandler``).

    Subclasses implement :meth:`handle_task_run`; its return value is stored as JSON in the
    run's ``Results``. Whatever the handler prints is captured into ``StandardOutput`` and
    ``ErrorOutput``.

    ``retry_backoff_base`` / ``retry_backoff_max`` (seconds), when set on a subclass, override
    the configured retry backoff for its tasks; ``time_budget`` (seconds) overrides the
    configured ``run_time_budget``, which sets ``run.deadline``. ``time_limit`` (seconds)
    overrides the configured ``run_time_limit``: a run still working then is stopped and ends
    ``timeout`` (``0``: no limit; see :mod:`celery_taskq.core.runner.time_limit`).
    """

    retry_backoff_base: float | None = None
    retry_backoff_max: float | None = None
    time_budget: float | None = None
    time_limit: float | None = None

    def validate(self, data: Any) -> None:
        """Refuse ``data`` before it is enqueued by raising an exception; accepts all by default."""

    def change_data_on_error(self, data: Any, error: BaseException) -> Any:
        """Called after a run failed with ``error``: return new task data for the retry.

        Combodo's ``ChangeActionParamsOnError``: for example halve a batch size after a
        timeout from a remote service. Return ``None`` (the default) to keep ``data``. The new
        data must pass :meth:`validate`; if it does not, the old data is kept and the refusal
        is logged.
        """
        return None

    def handle_task_run(self, run: RunContext) -> Any:
        """Do the work of one run. Raise :class:`TaskError` for a known failure."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement handle_task_run")
