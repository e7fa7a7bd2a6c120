"""How a runner executes one run's handler: output captured, time limit kept, outcome made.

Whatever the handler does — returns, raises :class:`~celery_taskq.core.handlers.TaskError`,
overruns its time limit, or fails in any other way — ends as a
:class:`~celery_taskq.core.runner.outcome.RunOutcome` that can be stored, with the retry
backoff its handler asks for. A handler never takes the runner down.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import timedelta
from typing import Any

from celery_taskq.core.clock import Clock
from celery_taskq.core.context import RunContext
from celery_taskq.core.handlers import CANCELLED_CODE, Continue, TaskError, TaskHandler
from celery_taskq.core.intake import check_task_data
from celery_taskq.core.loading import create_task_handler
from celery_taskq.core.models import RunStatus
from celery_taskq.core.runner.backoff import Backoff
from celery_taskq.core.runner.capture import capture_output
from celery_taskq.core.runner.outcome import RunOutcome, storable_outcome
from celery_taskq.core.runner.outcome_values import describe_exception
from celery_taskq.core.runner.time_limit import (
    TIME_LIMIT_CODE,
    RunTimeLimitExceeded,
    TimeLimit,
    abandon_run,
    effective_limit,
)
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.decoding import UnreadableJson

logger = logging.getLogger(__name__)

UNREADABLE_DATA_CODE = "task_data_unreadable"
"""``ErrorCode`` of a run whose task's stored data cannot be decoded: no handler is given it."""


class HandlerExecution:
    """Executing handlers for :class:`~celery_taskq.core.runner.loop.TaskRunner` (a base class
    of the runner, whose ``__init__`` sets the attributes below)."""

    database: Database
    task_runner_id: int
    settings: Settings
    clock: Clock

    def create_handler(self, path: str) -> TaskHandler:
        """A handler by name or path, under the configured allow-list."""
        return create_task_handler(path, self.settings.allowed_handler_prefixes)

    def _execute(self, context: RunContext) -> tuple[RunOutcome, Backoff]:
        backoff = self.default_backoff()
        handler: TaskHandler | None = None
        status = RunStatus.SUCCESS
        results: Any = None
        continuation: Continue | None = None
        error: BaseException | None = None
        error_code: str | None = None
        error_message: str | None = None
        new_data: tuple[Any] | None = None
        with capture_output(self.settings.output_cap_bytes) as captured:
            try:
                if isinstance(context.data, UnreadableJson):
                    raise TaskError(
                        f"the task's data cannot be read as JSON: {context.data}",
                        code=UNREADABLE_DATA_CODE,
                    )
                handler = self.create_handler(context.handler)
                backoff = self.handler_backoff(handler)
                budget = handler.time_budget or self.settings.run_time_budget
                context.deadline = self.clock() + timedelta(seconds=budget)
                with self._time_limit(handler, context):
                    returned = handler.handle_task_run(context)
                if isinstance(returned, Continue):
                    continuation = returned
                    returned = returned.results
                    _as_json_document(continuation.checkpoint, "checkpoint")
                results = _as_json_document(returned)
            except TaskError as exc:
                status, error_code, error_message = RunStatus.ERROR, exc.code, exc.message
                results, error = _json_or_none(exc.results), exc
            except RunTimeLimitExceeded as exc:
                status, error_code, error_message = RunStatus.TIMEOUT, TIME_LIMIT_CODE, str(exc)
                error, continuation = exc, None
                _print_traceback()  # where the handler was when it was stopped
            except BaseException as exc:  # a handler never takes the runner down
                status, error = RunStatus.ERROR, exc
                error_code, error_message = type(exc).__name__, describe_exception(exc)
                continuation = None
                _print_traceback()
            if handler is not None and error is not None and error_code != CANCELLED_CODE:
                new_data = _changed_data(handler, context, error, self.settings.task_data_max_bytes)
        try:
            context.flush_progress()
        except Exception:  # progress is telemetry; the final status below matters more
            logger.exception("could not write progress of run %s", context.id)
        outcome = RunOutcome(
            status=status,
            standard_output=captured.stdout,
            error_output=captured.stderr,
            results=results,
            error_code=error_code,
            error_message=error_message,
            percents_completed=(
                100 if status is RunStatus.SUCCESS and continuation is None else context.percent
            ),
            checkpoint=None if continuation is None else continuation.checkpoint,
            continues=continuation is not None,
            replaces_task_data=new_data is not None,
            task_data=None if new_data is None else new_data[0],
        )
        return storable_outcome(outcome, self.settings.result_max_bytes), backoff

    def _time_limit(self, handler: TaskHandler, context: RunContext) -> TimeLimit:
        """The handler's time limit for this run (see
        :mod:`celery_taskq.core.runner.time_limit`)."""
        limit = effective_limit(handler.time_limit, self.settings.run_time_limit)
        grace = self.settings.run_time_limit_grace

        def record_unstoppable() -> None:
            self.abandoning()
            abandon_run(
                self.database,
                run_id=context.id,
                runner_id=self.task_runner_id,
                limit=limit or 0.0,
                grace=grace,
                percent=context.percent,
                output_cap=self.settings.output_cap_bytes,
                now=self.clock(),
            )

        return TimeLimit(limit, grace=grace, on_unstoppable=record_unstoppable)

    def abandoning(self) -> None:
        """The process is about to record its run abandoned (timed out with its runner) and
        end: what must not end it first lets go (the runner's lease)."""

    def default_backoff(self) -> Backoff:
        """The configured retry backoff."""
        return Backoff(
            self.settings.retry_backoff_base,
            self.settings.retry_backoff_max,
            self.settings.retry_jitter,
        )

    def handler_backoff(self, handler: TaskHandler) -> Backoff:
        """The retry backoff for a handler's tasks: its own base and maximum where it sets them."""
        default = self.default_backoff()
        return Backoff(
            default.base if handler.retry_backoff_base is None else handler.retry_backoff_base,
            default.maximum if handler.retry_backoff_max is None else handler.retry_backoff_max,
            default.jitter,
        )


def _as_json_document(value: Any, what: str = "value") -> Any:
    """Check that a handler's return value can be stored as JSON, and return it."""
    if value is None:
        return None
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(
            f"the handler returned a {what} ({type(value).__name__}) that cannot be stored "
            f"as JSON: {exc}"
        ) from exc


def _json_or_none(value: Any) -> Any:
    """``value`` as JSON, or ``None`` (with a note on stderr) when it cannot be stored."""
    try:
        return _as_json_document(value, "result")
    except TypeError as exc:
        print(f"results not stored: {exc}", file=sys.stderr)
        return None


def _changed_data(
    handler: TaskHandler, context: RunContext, error: BaseException, max_bytes: int
) -> tuple[Any] | None:
    """The handler's new task data after ``error`` (Combodo's ChangeActionParamsOnError).

    Returns a 1-tuple with the new data, or ``None`` to keep the data. Runs inside the output
    capture, so whatever the hook prints, and why new data was refused, lands on the run.
    """
    try:
        new_data = handler.change_data_on_error(context.data, error)
        if new_data is None:
            return None
        new_data = _as_json_document(new_data, "new task data")
        check_task_data(new_data, max_bytes=max_bytes)  # the limits of every intake
        handler.validate(new_data)
    except BaseException as exc:  # a hook's fault never takes the runner down
        print(
            "change_data_on_error failed; the task data is kept: "
            f"{type(exc).__name__}: {describe_exception(exc)}",
            file=sys.stderr,
        )
        return None
    print("change_data_on_error: the task's data was changed for its next run")
    return (new_data,)


def _print_traceback() -> None:
    """The handler's traceback on the captured stderr (never failing the runner)."""
    try:
        traceback.print_exc()
    except Exception:  # a closed or broken stderr: the run's ErrorMessage still says why
        logger.debug("could not print a handler's traceback", exc_info=True)
