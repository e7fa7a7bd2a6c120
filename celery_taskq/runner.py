"""The task runner (the seed's ``TaskRunner``): claim a scheduled run, execute it, record it.

The loop's exits are parameters (:meth:`TaskRunner.run`): a stop signal (SIGINT, SIGTERM,
SIGHUP end the loop after the current run), resident memory over the limit, one iteration
outside CLI mode (the seed's rule), and ``burst`` / ``max_runs`` / ``max_idle`` for scripts and
tests. A runner that stops itself ends its row ``success``; a heartbeat thread keeps the row's
``HeartbeatOn`` fresh while a long run works.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import psutil

from celery_taskq import transitions
from celery_taskq.backoff import Backoff
from celery_taskq.capture import capture_output
from celery_taskq.context import Progress, RunContext
from celery_taskq.db import ClaimedRun, Database
from celery_taskq.handlers import (
    CANCELLED_CODE,
    Continue,
    TaskError,
    TaskHandler,
    create_task_handler,
)
from celery_taskq.models import RunStatus
from celery_taskq.notify import RunNotifier, notifier_for
from celery_taskq.settings import Settings
from celery_taskq.transitions import RunOutcome

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class StopReason(enum.StrEnum):
    """Why a runner loop ended."""

    STOP_REQUESTED = "stop requested (signal)"
    MEMORY = "memory limit"
    NOT_CLI = "one iteration outside CLI mode"
    BURST = "queue empty (burst)"
    MAX_RUNS = "max runs reached"
    MAX_IDLE = "max idle time reached"
    MAX_LIFETIME = "max lifetime reached"
    TIMED_OUT = "runner was timed out by the overseer"


class TaskRunner:
    """Works the queue as the runner row ``runner_id``."""

    def __init__(
        self,
        database: Database,
        runner_id: int,
        settings: Settings,
        *,
        clock: Clock = utc_now,
        notifier: RunNotifier | None = None,
    ) -> None:
        self.database = database
        self.task_runner_id = runner_id
        self.settings = settings
        self.clock = clock
        self.notifier = notifier_for(settings) if notifier is None else notifier
        self.last_signal: int | None = None
        self.runs_done = 0
        self._stop = threading.Event()
        self._timed_out = threading.Event()

    # -- signals ---------------------------------------------------------------------------

    def signal_handler(self, signum: int, _frame: FrameType | None) -> None:
        """Remember the signal; the loop ends after the current run."""
        self.last_signal = signum
        self._stop.set()
        logger.info(
            "runner %s got signal %s, stopping after the current run",
            self.task_runner_id,
            signum,
            extra={"action": "runner_signal", "runner_id": self.task_runner_id},
        )

    def stop(self) -> None:
        """Ask the loop to end after the current run (thread-safe)."""
        self._stop.set()

    # -- one run ---------------------------------------------------------------------------

    def get_next_task_run(self) -> ClaimedRun | None:
        """Claim the oldest scheduled run (FIFO) in one atomic statement; ``None`` if none."""
        with self.database.transaction() as connection:
            claimed = self.database.claim_next_run(connection, self.task_runner_id, self.clock())
            if claimed is not None:
                transitions.rollup_tasks(connection, [claimed.task_queue_id])
        if claimed is not None:
            logger.info(
                "runner %s claimed run %s of task %s",
                self.task_runner_id,
                claimed.run_id,
                claimed.task_queue_id,
                extra={
                    "action": "run_claimed",
                    "run_id": claimed.run_id,
                    "queue_id": claimed.task_queue_id,
                },
            )
        return claimed

    def run_once(self) -> bool:
        """Claim and process one run; ``False`` when there was nothing to do."""
        claimed = self.get_next_task_run()
        if claimed is None:
            return False
        self.process_task_run(claimed)
        return True

    def process_task_run(self, claimed: ClaimedRun) -> RunOutcome:
        """Execute a claimed run with output captured and record its final state."""
        with self.database.transaction(read_only=True) as connection:
            task = transitions.load_run_input(connection, claimed.task_queue_id)
        if task is None:  # the queue row was deleted after the claim (runs cascade with it)
            return RunOutcome(RunStatus.ERROR, "", "", error_message="task was deleted")
        handler_path, data, checkpoint = task
        context = RunContext(
            run_id=claimed.run_id,
            task_queue_id=claimed.task_queue_id,
            handler=handler_path,
            data=data,
            write_progress=lambda percent: self._write_progress(claimed.run_id, percent),
            is_cancelled=lambda: self._is_cancelled(claimed.task_queue_id),
            checkpoint=checkpoint,
            store_checkpoint=lambda value: self._save_checkpoint(claimed.run_id, value),
            create_handler=self.create_handler,
            wall_clock=self.clock,
        )
        outcome, backoff = self._execute(context)
        with self.database.transaction() as connection:
            now = self.clock()
            recorded = transitions.finish_run(
                connection, claimed.run_id, self.task_runner_id, outcome, now
            )
            if recorded and outcome.status is RunStatus.ERROR:
                transitions.defer_retry(connection, claimed.task_queue_id, now, backoff.delay)
        self.notifier.publish(claimed.run_id)
        self.runs_done += 1
        logger.info(
            "run %s of task %s ended %s%s",
            claimed.run_id,
            claimed.task_queue_id,
            outcome.status.value if recorded else "after the runner was timed out (not recorded)",
            " and continues in a new run" if recorded and outcome.continues else "",
            extra={
                "action": "run_finished" if recorded else "run_outcome_discarded",
                "run_id": claimed.run_id,
                "queue_id": claimed.task_queue_id,
                "status": outcome.status.value,
            },
        )
        return outcome

    def create_handler(self, path: str) -> TaskHandler:
        """A handler by name or path, under the configured allow-list."""
        return create_task_handler(path, self.settings.allowed_handler_prefixes)

    def _save_checkpoint(self, run_id: int, checkpoint: Any) -> None:
        with self.database.transaction() as connection:
            transitions.save_run_checkpoint(connection, run_id, checkpoint)

    def _is_cancelled(self, task_queue_id: int) -> bool:
        with self.database.transaction(read_only=True) as connection:
            return transitions.is_cancelled(connection, task_queue_id)

    def _write_progress(self, run_id: int, progress: Progress) -> None:
        with self.database.transaction() as connection:
            transitions.set_run_progress(connection, run_id, progress)
        self.notifier.publish(run_id)

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
                handler = self.create_handler(context.handler)
                backoff = self.handler_backoff(handler)
                budget = handler.time_budget or self.settings.run_time_budget
                context.deadline = self.clock() + timedelta(seconds=budget)
                returned = handler.handle_task_run(context)
                if isinstance(returned, Continue):
                    continuation = returned
                    returned = returned.results
                    _as_json_document(continuation.checkpoint, "checkpoint")
                results = _as_json_document(returned)
            except TaskError as exc:
                status, error_code, error_message = RunStatus.ERROR, exc.code, exc.message
                results, error = _json_or_none(exc.results), exc
            except (Exception, SystemExit) as exc:  # a handler must never take the runner down
                status, error = RunStatus.ERROR, exc
                error_code, error_message = type(exc).__name__, str(exc)
                continuation = None
                traceback.print_exc()
            if handler is not None and error is not None and error_code != CANCELLED_CODE:
                new_data = _changed_data(handler, context, error)
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
        return outcome, backoff

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

    # -- the loop --------------------------------------------------------------------------

    def run(
        self,
        *,
        cli_mode: bool = True,
        burst: bool = False,
        max_runs: int | None = None,
        max_idle: float | None = None,
        max_lifetime: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        install_signal_handlers: bool = False,
    ) -> StopReason:
        """The seed's ``process()``: claim and run until an exit condition holds.

        ``max_lifetime`` (seconds) ends the loop after the run in progress once the runner has
        lived that long; :meth:`stop` from another thread, or ``should_stop`` returning true (it
        is asked between runs), ends it after the run in progress.
        """
        previous_handlers = self._install_signal_handlers() if install_signal_handlers else {}
        heartbeat = Heartbeat(
            self.database,
            self.task_runner_id,
            self.settings.heartbeat_interval,
            clock=self.clock,
            on_lost=self._on_timed_out,
        )
        heartbeat.start()
        idle_since = started = self.clock()
        try:
            while True:
                if should_stop is not None and should_stop():
                    self._stop.set()
                if self._stop.is_set():
                    return self._stop_reason()
                did_work = self.run_once()
                if did_work:
                    idle_since = self.clock()
                reason = self._exit_reason(
                    cli_mode, burst, did_work, max_runs, max_idle, idle_since
                )
                lived = (self.clock() - started).total_seconds()
                if reason is None and max_lifetime is not None and lived >= max_lifetime:
                    reason = StopReason.MAX_LIFETIME
                if reason is not None:
                    return reason
                if not did_work:
                    self._stop.wait(self.settings.poll_interval)
                elif should_stop is not None and should_stop():
                    self._stop.set()
        finally:
            self._stop.set()
            heartbeat.stop()
            with self.database.transaction() as connection:
                transitions.finish_runner(connection, self.task_runner_id, self.clock())
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)

    def _exit_reason(
        self,
        cli_mode: bool,
        burst: bool,
        did_work: bool,
        max_runs: int | None,
        max_idle: float | None,
        idle_since: datetime,
    ) -> StopReason | None:
        if self._stop.is_set():
            return self._stop_reason()
        if self.memory_exceeded():
            return StopReason.MEMORY
        if not cli_mode:
            return StopReason.NOT_CLI
        if burst and not did_work:
            return StopReason.BURST
        if max_runs is not None and self.runs_done >= max_runs:
            return StopReason.MAX_RUNS
        if max_idle is not None and (self.clock() - idle_since).total_seconds() >= max_idle:
            return StopReason.MAX_IDLE
        return None

    def _stop_reason(self) -> StopReason:
        return StopReason.TIMED_OUT if self._timed_out.is_set() else StopReason.STOP_REQUESTED

    def memory_exceeded(self) -> bool:
        """Whether this process's resident memory is over the configured limit."""
        rss = psutil.Process().memory_info().rss
        return rss > self.settings.runner_memory_limit_mb * 1024 * 1024

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, self.signal_handler)
        return previous

    def _on_timed_out(self) -> None:
        self._timed_out.set()
        self._stop.set()


class Heartbeat:
    """A daemon thread refreshing a runner row's ``HeartbeatOn`` every ``interval`` seconds.

    ``on_lost`` is called once if the row is no longer ``running`` (the overseer timed it out).
    """

    def __init__(
        self,
        database: Database,
        runner_id: int,
        interval: float,
        *,
        clock: Clock = utc_now,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.database = database
        self.runner_id = runner_id
        self.interval = interval
        self.clock = clock
        self.on_lost = on_lost
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="taskq-heartbeat")

    def start(self) -> None:
        """Start beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait briefly for the thread."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                with self.database.transaction() as connection:
                    alive = transitions.beat_heart(connection, self.runner_id, self.clock())
            except Exception:
                logger.exception(
                    "heartbeat of runner %s failed",
                    self.runner_id,
                    extra={"action": "heartbeat_failed", "runner_id": self.runner_id},
                )
                continue
            if not alive:
                logger.warning(
                    "runner %s was timed out by the overseer",
                    self.runner_id,
                    extra={"action": "runner_timed_out", "runner_id": self.runner_id},
                )
                self.on_lost()
                return


def _as_json_document(value: Any, what: str = "value") -> Any:
    """Check that a handler's return value can be stored as JSON, and return it."""
    if value is None:
        return None
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
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
    handler: TaskHandler, context: RunContext, error: BaseException
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
        handler.validate(new_data)
    except Exception as exc:
        print(
            f"change_data_on_error failed; the task data is kept: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return None
    print("change_data_on_error: the task's data was changed for its next run")
    return (new_data,)


def current_process_start_time() -> float:
    """This process's start time as psutil reports it (recorded on the runner row)."""
    return float(psutil.Process(os.getpid()).create_time())
