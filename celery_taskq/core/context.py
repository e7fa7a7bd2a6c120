"""What a handler receives: :class:`RunContext`, one run's data and its progress reporter."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celery_taskq.core.handlers import TaskCancelledError
from celery_taskq.core.runner.outcome_values import cut_text, storable_json
from celery_taskq.core.storage.storable import MAX_INT32

if TYPE_CHECKING:
    from celery_taskq.core.handlers import TaskHandler

CANCEL_CHECK_INTERVAL_SECONDS = 0.5
"""A running handler looks up whether its task was cancelled at most this often."""

PROGRESS_STATUS_MAX_LENGTH = 255
"""Longest progress status text kept."""

PROGRESS_MIN_INTERVAL_SECONDS = 0.25
"""Progress is written at most this often; the latest value is always written at the end."""


@dataclass(frozen=True)
class Progress:
    """How far a run has got: percent, optionally step ``step`` of ``steps``, and a status text."""

    percent: int = 0
    step: int | None = None
    steps: int | None = None
    status: str | None = None


def _no_checkpoint_store(_value: Any) -> None:
    raise RuntimeError("this run cannot save checkpoints")


def _no_handlers(path: str) -> TaskHandler:
    raise RuntimeError(f"this run cannot create handlers (asked for {path!r})")


class RunContext:
    """One run of a task, as its handler sees it.

    ``data`` is the task's data; ``checkpoint`` is where an earlier run of the task left off
    (the latest checkpoint any run saved or returned with :class:`~celery_taskq.Continue`),
    ``None`` on a first run; ``deadline`` is when this run's time budget ends — a resumable
    handler checks :meth:`time_left` and returns ``Continue(checkpoint)`` before it.
    """

    def __init__(
        self,
        *,
        run_id: int,
        task_queue_id: int,
        handler: str,
        data: Any,
        write_progress: Callable[[Progress], None],
        is_cancelled: Callable[[], bool] = lambda: False,
        monotonic: Callable[[], float] = time.monotonic,
        checkpoint: Any = None,
        deadline: datetime | None = None,
        store_checkpoint: Callable[[Any], None] = _no_checkpoint_store,
        create_handler: Callable[[str], TaskHandler] = _no_handlers,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.id = run_id
        self.task_queue_id = task_queue_id
        self.handler = handler
        self.data = data
        self.checkpoint = checkpoint
        self.deadline = deadline
        self._store_checkpoint = store_checkpoint
        self._create_handler = create_handler
        self._wall_clock = wall_clock
        self._write_progress = write_progress
        self._monotonic = monotonic
        self._progress = Progress()
        self._written = Progress()
        self._last_write: float | None = None
        self._is_cancelled = is_cancelled
        self._cancelled = False
        self._last_cancel_check: float | None = None

    @property
    def percent(self) -> int:
        """The latest progress percentage reported, 0–100."""
        return self._progress.percent

    @property
    def progress(self) -> Progress:
        """The latest progress reported."""
        return self._progress

    def set_progress(
        self,
        percent: float,
        *,
        step: int | None = None,
        steps: int | None = None,
        status: str | None = None,
    ) -> None:
        """Report progress: a percentage from 0 to 100, optionally step of steps and a status.

        Stored in ``PercentsCompleted``, ``ProgressStep``, ``ProgressSteps`` and
        ``ProgressStatus``, written at most every ``PROGRESS_MIN_INTERVAL_SECONDS`` however
        often it is called (the latest value is always written when the run ends). Raises
        :class:`~celery_taskq.core.handlers.TaskCancelledError` once the task was cancelled.
        """
        if isinstance(percent, bool) or not isinstance(percent, int | float) or math.isnan(percent):
            raise ValueError(f"progress must be a number from 0 to 100, not {percent!r}")
        if not 0 <= percent <= 100:
            raise ValueError(f"progress must be from 0 to 100, not {percent!r}")
        for name, value in (("step", step), ("steps", steps)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT32
            ):
                raise ValueError(
                    f"{name} must be a whole number from 0 to {MAX_INT32}, not {value!r}"
                )
        if step is not None and steps is not None and step > steps:
            raise ValueError(f"step {step} is beyond steps {steps}")
        if status is not None and not isinstance(status, str):
            raise ValueError(f"status must be text, not {status!r}")
        self._progress = Progress(
            int(percent),
            step,
            steps,
            None if status is None else cut_text(status, PROGRESS_STATUS_MAX_LENGTH),
        )
        self.raise_if_cancelled()
        now = self._monotonic()
        if self._last_write is None or now - self._last_write >= PROGRESS_MIN_INTERVAL_SECONDS:
            self.flush_progress()

    def flush_progress(self) -> None:
        """Write the latest progress if it has not been written yet."""
        if self._progress != self._written:
            self._write_progress(self._progress)
            self._written = self._progress
        self._last_write = self._monotonic()

    @property
    def cancel_requested(self) -> bool:
        """Whether the task was cancelled; looked up at most every ``CANCEL_CHECK_INTERVAL``."""
        now = self._monotonic()
        if not self._cancelled and (
            self._last_cancel_check is None
            or now - self._last_cancel_check >= CANCEL_CHECK_INTERVAL_SECONDS
        ):
            self._last_cancel_check = now
            self._cancelled = self._is_cancelled()
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~celery_taskq.core.handlers.TaskCancelledError` if the task was cancelled.

        Long handlers call it (or :meth:`set_progress`, which does) between steps, so a
        cancelled task stops cooperatively.
        """
        if self.cancel_requested:
            raise TaskCancelledError()

    # -- resumable work --------------------------------------------------------------------

    def time_left(self) -> float:
        """Seconds until :attr:`deadline` (negative once it passed; infinite without one)."""
        if self.deadline is None:
            return math.inf
        return (self.deadline - self._wall_clock()).total_seconds()

    @property
    def out_of_time(self) -> bool:
        """Whether the run's time budget is spent."""
        return self.time_left() <= 0

    def save_checkpoint(self, checkpoint: Any) -> None:
        """Store ``checkpoint`` on the run now, so that even if this process dies the next run
        of the task starts from it (it becomes that run's :attr:`checkpoint`)."""
        try:
            document = storable_json(json.loads(json.dumps(checkpoint, allow_nan=False)))
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"a checkpoint must be JSON: {exc}") from exc
        self._store_checkpoint(document)
        self.checkpoint = document

    def create_handler(self, path: str) -> TaskHandler:
        """Create another handler by name or path, under this runner's allow-list.

        Used by handlers that compose others, such as the steps of a multi-step task.
        """
        return self._create_handler(path)
