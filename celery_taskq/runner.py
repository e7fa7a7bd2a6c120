"""The task runner (the seed's ``TaskRunner``): claim a scheduled run, execute it, record it.

The loop's exits are parameters (:meth:`TaskRunner.run`): a stop signal (SIGINT, SIGTERM,
SIGHUP end the loop after the current run), resident memory over the limit, one iteration
outside CLI mode (the seed's rule), and ``burst`` / ``max_runs`` / ``max_idle`` for scripts and
tests. A runner that stops itself ends its row ``success``; a heartbeat thread keeps the row's
``HeartbeatOn`` fresh while a long run works.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, TypeVar

import psutil

from celery_taskq.backoff import Backoff
from celery_taskq.capture import capture_output
from celery_taskq.context import Progress, RunContext
from celery_taskq.core.exceptions import SchemaNotReadyError, StorageError, StorageRefusedError
from celery_taskq.core.models import RunStatus
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import claim, runners, runs, tasks
from celery_taskq.core.statements.claim import ClaimedRun
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.decoding import UnreadableJson
from celery_taskq.handlers import (
    CANCELLED_CODE,
    Continue,
    TaskError,
    TaskHandler,
    create_task_handler,
)
from celery_taskq.intake import check_task_data
from celery_taskq.lease import KernelDeadline, Lease, boottime
from celery_taskq.notify import RunListener, RunNotifier, notifier_for
from celery_taskq.outcome import RunOutcome, refused_outcome, storable_outcome
from celery_taskq.outcome_values import describe_exception
from celery_taskq.time_limit import (
    TIME_LIMIT_CODE,
    RunTimeLimitExceeded,
    TimeLimit,
    abandon_run,
    effective_limit,
)

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

STORAGE_RETRY_FIRST_DELAY = 0.1
"""Seconds before the first retry when the database is unreachable; doubled per failure."""

STORAGE_RETRY_MAX_DELAY = 5.0
"""The longest wait between two attempts to reach the database."""

_T = TypeVar("_T")

MEMORY_CHECK_INTERVAL = 1.0
"""Seconds between two reads of the runner's resident memory."""

UNREADABLE_DATA_CODE = "task_data_unreadable"
"""``ErrorCode`` of a run whose task's stored data cannot be decoded: no handler is given it."""

WORK_WAIT_SLICE = 0.05
"""Longest single wait on work notices, so that a stop request is seen promptly."""


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
        registered_at: float | None = None,
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
        self._claim_uncertain = False
        self._claimed_ahead: ClaimedRun | None = None
        self._may_claim_ahead: Callable[[], bool] | None = None
        self._process = psutil.Process()
        self._memory_checked_at = float("-inf")
        self._memory_over = False
        self._registered_at = boottime() if registered_at is None else registered_at
        self._lease: Lease | None = None
        self._run_in_progress = False

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
            claimed = None
            if self._claim_uncertain:
                # A transaction that claimed failed with its connection: its commit may have
                # landed all the same, leaving a run ``running`` under this live runner that
                # the overseer would never time out. Such a run is taken up first.
                orphan = runs.running_run_of_runner(connection, self.task_runner_id)
                claimed = None if orphan is None else ClaimedRun(*orphan)
            if claimed is None:
                claimed = claim.claim_next_run(connection, self.task_runner_id, self.clock())
        self._claim_uncertain = False
        self._log_claimed(claimed)
        return claimed

    def _log_claimed(self, claimed: ClaimedRun | None) -> None:
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

    def run_once(self) -> bool:
        """Claim and process one run; ``False`` when there was nothing to do.

        Inside :meth:`run` the run may already be claimed: the transaction that recorded the
        previous run claimed it too.
        """
        claimed, self._claimed_ahead = self._claimed_ahead, None
        if claimed is None:
            claimed = self.get_next_task_run()
        if claimed is None:
            return False
        self._run_in_progress = True
        if self._lease is not None:
            self._lease.hold()  # ends the process here if the lease already ran out
        self.process_task_run(claimed)
        self._run_in_progress = False
        if self._claimed_ahead is None and self._lease is not None:
            self._lease.release()
        return True

    def process_task_run(self, claimed: ClaimedRun) -> RunOutcome:
        """Execute a claimed run with output captured and record its final state.

        Inside :meth:`run`, while the loop will go on, the transaction that records this run
        also claims the next one (one transaction per run instead of two). That claim is the
        same atomic claim as :meth:`get_next_task_run`'s, made the moment before the next
        handler starts, so what a crash can lose is unchanged: a run is ``running`` exactly
        while a handler of this runner is about to run it or runs it, and a run's outcome is
        committed before the next run starts. A claimed run that the loop does not start (it
        was asked to stop meanwhile) is handed back to ``scheduled`` when the loop ends.
        """
        if claimed.handler is None:
            # Once claimed, a run must end recorded: database outages are waited out here.
            task = self._until_stored(
                f"loading run {claimed.run_id}", lambda: self._load_run_input(claimed)
            )
        else:
            task = (claimed.handler, claimed.data, claimed.checkpoint)
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

        recorded, outcome = self._record(claimed, outcome, backoff)
        self._log_claimed(self._claimed_ahead)
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

    def _record(
        self, claimed: ClaimedRun, outcome: RunOutcome, backoff: Backoff
    ) -> tuple[bool, RunOutcome]:
        """Write the run's outcome (waiting out outages); whether it was still this runner's,
        and the outcome as written.

        An outcome the database refuses (not an outage: retrying cannot help) is recorded as
        an ``error`` saying so, and without its output if even that is refused.
        """
        what = f"recording run {claimed.run_id}"
        try:
            return self._until_stored(what, lambda: self._write(claimed, outcome, backoff)), outcome
        except StorageRefusedError as refusal:
            logger.error(
                "the database refused the outcome of run %s: %s",
                claimed.run_id,
                refusal,
                extra={"action": "outcome_refused", "run_id": claimed.run_id},
            )
            outcome = refused_outcome(outcome, refusal)
        try:
            return self._until_stored(what, lambda: self._write(claimed, outcome, backoff)), outcome
        except StorageRefusedError:
            outcome = dataclasses.replace(outcome, standard_output="", error_output="")
            return self._until_stored(what, lambda: self._write(claimed, outcome, backoff)), outcome

    def _write(self, claimed: ClaimedRun, outcome: RunOutcome, backoff: Backoff) -> bool:
        """One attempt at writing the outcome (one transaction), claiming the next run with it
        when the loop goes on."""
        if (
            runs.is_plain_success(outcome)
            and self._may_claim_ahead is not None
            and self._may_claim_ahead()
        ):
            values = runs.success_values(claimed.run_id, self.task_runner_id, outcome, self.clock())
            done = claim.finish_success_and_claim(self.database, values)
            if done is not None:
                recorded, self._claimed_ahead = done
                return recorded
        with self.database.transaction() as connection:
            now = self.clock()
            recorded = runs.finish_run(
                connection, claimed.run_id, self.task_runner_id, outcome, now
            )
            if recorded and outcome.status in (RunStatus.ERROR, RunStatus.TIMEOUT):
                runs.defer_retry(connection, claimed.task_queue_id, now, backoff.delay)
            if self._may_claim_ahead is not None and self._may_claim_ahead():
                self._claimed_ahead = claim.claim_next_run(connection, self.task_runner_id, now)
        return recorded

    def _load_run_input(self, claimed: ClaimedRun) -> tuple[str, Any, Any] | None:
        with self.database.transaction(read_only=True) as connection:
            return runs.load_run_input(connection, claimed.task_queue_id)

    def _until_stored(self, what: str, attempt: Callable[[], _T]) -> _T:
        """``attempt`` (one transaction), repeated until the database is reachable again.

        A claimed run whose outcome is not written would stay ``running`` under a live runner,
        which the overseer never times out; so the runner waits out an outage here. (If the
        overseer times it out meanwhile, ``finish_run`` finds that and writes nothing; if a
        failed commit landed after all, the retry finds the run finished, and a run it had
        claimed ahead is taken up by the next claim.)
        """
        delay = STORAGE_RETRY_FIRST_DELAY
        while True:
            try:
                return attempt()
            except (SchemaNotReadyError, StorageRefusedError):
                raise
            except StorageError as exc:
                self._claim_uncertain = True
                self._claimed_ahead = None
                if self._stop.is_set():
                    # Asked to stop while the database is out: the run stays ``running``
                    # under this runner, which ends ``timeout`` (or, unreachable, is found
                    # dead by the overseer), so the run is taken up again.
                    logger.error(
                        "%s failed and the runner is asked to stop: giving up",
                        what,
                        extra={"action": "storage_given_up", "runner_id": self.task_runner_id},
                    )
                    raise
                logger.warning(
                    "%s failed, retrying in %.1fs: %s",
                    what,
                    delay,
                    exc,
                    extra={"action": "storage_retry", "runner_id": self.task_runner_id},
                )
                self._stop.wait(delay)
                delay = min(delay * 2, STORAGE_RETRY_MAX_DELAY)

    def create_handler(self, path: str) -> TaskHandler:
        """A handler by name or path, under the configured allow-list."""
        return create_task_handler(path, self.settings.allowed_handler_prefixes)

    def _save_checkpoint(self, run_id: int, checkpoint: Any) -> None:
        with self.database.transaction() as connection:
            runs.save_run_checkpoint(connection, run_id, checkpoint)

    def _is_cancelled(self, task_queue_id: int) -> bool:
        with self.database.transaction(read_only=True) as connection:
            return tasks.is_cancelled(connection, task_queue_id)

    def _write_progress(self, run_id: int, progress: Progress) -> None:
        with self.database.transaction() as connection:
            runs.set_run_progress(connection, run_id, progress)
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
        """The handler's time limit for this run (see :mod:`celery_taskq.time_limit`)."""
        limit = effective_limit(handler.time_limit, self.settings.run_time_limit)
        grace = self.settings.run_time_limit_grace
        return TimeLimit(
            limit,
            grace=grace,
            on_unstoppable=lambda: abandon_run(
                self.database,
                run_id=context.id,
                runner_id=self.task_runner_id,
                limit=limit or 0.0,
                grace=grace,
                percent=context.percent,
                output_cap=self.settings.output_cap_bytes,
                now=self.clock(),
            ),
        )

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
        self._lease = Lease(
            self.settings.heartbeat_timeout,
            KernelDeadline.create(),
            renewed_at=self._registered_at,
        )
        heartbeat = Heartbeat(
            self.database,
            self.task_runner_id,
            self.settings.heartbeat_interval,
            clock=self.clock,
            on_lost=self._on_timed_out,
            lease=self._lease,
        )
        heartbeat.start()
        idle_since = started = self.clock()

        def may_claim_ahead() -> bool:
            # Claim the next run with this one's outcome only if the loop will go on to run it.
            return not (
                self._stop.is_set()
                or not cli_mode
                or (max_runs is not None and self.runs_done + 1 >= max_runs)
                or (should_stop is not None and should_stop())
                or (
                    max_lifetime is not None
                    and (self.clock() - started).total_seconds() >= max_lifetime
                )
                or self.memory_exceeded()
            )

        self._may_claim_ahead = may_claim_ahead
        outage_delay = STORAGE_RETRY_FIRST_DELAY
        work_notices = self.notifier.listen_for_work()
        listener = work_notices.__enter__()
        crashed = True
        try:
            while True:
                if should_stop is not None and should_stop():
                    self._stop.set()
                if self._stop.is_set():
                    crashed = False
                    return self._stop_reason()
                try:
                    did_work = self.run_once()
                except SchemaNotReadyError:
                    raise
                except StorageError as exc:  # the claim failed: wait the outage out, go on
                    self._claim_uncertain = True
                    logger.warning(
                        "runner %s cannot reach the database, retrying in %.1fs: %s",
                        self.task_runner_id,
                        outage_delay,
                        exc,
                        extra={"action": "storage_retry", "runner_id": self.task_runner_id},
                    )
                    self._stop.wait(outage_delay)
                    outage_delay = min(outage_delay * 2, STORAGE_RETRY_MAX_DELAY)
                    continue
                outage_delay = STORAGE_RETRY_FIRST_DELAY
                if did_work:
                    idle_since = self.clock()
                reason = self._exit_reason(
                    cli_mode, burst, did_work, max_runs, max_idle, idle_since
                )
                lived = (self.clock() - started).total_seconds()
                if reason is None and max_lifetime is not None and lived >= max_lifetime:
                    reason = StopReason.MAX_LIFETIME
                if reason is not None:
                    crashed = False
                    return reason
                if not did_work:
                    self._wait_for_work(listener)
                elif should_stop is not None and should_stop():
                    self._stop.set()
        except (SystemExit, KeyboardInterrupt):
            # The host process is going down (a Celery pool process told to exit): a stop,
            # not a crash, unless it came in the middle of a run (checked below).
            crashed = False
            raise
        finally:
            self._stop.set()
            self._may_claim_ahead = None
            work_notices.__exit__(None, None, None)
            heartbeat.stop()
            self._end(crashed=crashed or self._run_in_progress)
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)

    def _end(self, *, crashed: bool) -> None:
        """Close the runner row: ``success`` when the loop stopped itself, ``timeout`` (with
        any run it still held) when it crashed, so that the overseer's rules take the run up.
        A run claimed ahead and never started goes back to ``scheduled``."""
        claimed_ahead, self._claimed_ahead = self._claimed_ahead, None
        try:
            with self.database.transaction() as connection:
                if claimed_ahead is not None:
                    runs.release_run(connection, claimed_ahead.run_id, self.task_runner_id)
                if crashed:
                    runners.time_out_runners(connection, [self.task_runner_id], self.clock())
                else:
                    runners.finish_runner(connection, self.task_runner_id, self.clock())
        except Exception:
            # The database is out: the row stays ``running`` and the overseer finds this
            # process gone (or its lease expired) and times it out.
            logger.exception(
                "runner %s could not record its end",
                self.task_runner_id,
                extra={"action": "runner_end_not_recorded", "runner_id": self.task_runner_id},
            )
        finally:
            if self._lease is not None:
                self._lease.close()
                self._lease = None

    def _wait_for_work(self, listener: RunListener | None) -> None:
        """Sleep up to the poll interval; a work notice (Redis pub/sub) or a stop ends it early."""
        if listener is None:
            self._stop.wait(self.settings.poll_interval)
            return
        deadline = time.monotonic() + self.settings.poll_interval
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                if listener.wait(min(left, WORK_WAIT_SLICE)):
                    return
            except Exception:  # pub/sub is only a hint: fall back to polling the table
                logger.warning("waiting for work notices failed", exc_info=True)
                self._stop.wait(left)
                return

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
        """Whether this process's resident memory is over the configured limit.

        Read at most every :data:`MEMORY_CHECK_INTERVAL` seconds: reading it costs a system
        call per run otherwise, and memory does not grow that fast.
        """
        now = time.monotonic()
        if now - self._memory_checked_at >= MEMORY_CHECK_INTERVAL:
            self._memory_checked_at = now
            rss = self._process.memory_info().rss
            self._memory_over = rss > self.settings.runner_memory_limit_mb * 1024 * 1024
        return self._memory_over

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

    Each stored heartbeat renews ``lease`` (see :mod:`celery_taskq.lease`). ``on_lost`` is
    called once if the row is no longer ``running`` (the overseer timed it out); a run the
    runner still holds then must not go on, so the lease ends the process first.
    """

    def __init__(
        self,
        database: Database,
        runner_id: int,
        interval: float,
        *,
        clock: Clock = utc_now,
        on_lost: Callable[[], None] = lambda: None,
        lease: Lease | None = None,
    ) -> None:
        self.database = database
        self.runner_id = runner_id
        self.interval = interval
        self.clock = clock
        self.on_lost = on_lost
        self.lease = lease
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
            sent_at = Lease.renewing()
            try:
                with self.database.transaction() as connection:
                    alive = runners.beat_heart(connection, self.runner_id, self.clock())
            except Exception:
                logger.exception(
                    "heartbeat of runner %s failed",
                    self.runner_id,
                    extra={"action": "heartbeat_failed", "runner_id": self.runner_id},
                )
                continue
            if alive:
                if self.lease is not None:
                    self.lease.renewed(sent_at)
                continue
            logger.warning(
                "runner %s was timed out by the overseer",
                self.runner_id,
                extra={"action": "runner_timed_out", "runner_id": self.runner_id},
            )
            if self.lease is not None:
                self.lease.lost()
            self.on_lost()
            return


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


def current_process_start_time() -> float:
    """This process's start time as psutil reports it (recorded on the runner row)."""
    return float(psutil.Process(os.getpid()).create_time())
