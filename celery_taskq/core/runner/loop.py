"""The task runner (the seed's ``TaskRunner``): claim a scheduled run, execute it, record it.

The loop's exits are parameters (:meth:`TaskRunner.run`): a stop signal (SIGINT, SIGTERM,
SIGHUP end the loop after the current run), resident memory over the limit, one iteration
outside CLI mode (the seed's rule), and ``burst`` / ``max_runs`` / ``max_idle`` for scripts and
tests. A runner that stops itself ends its row ``success``; a heartbeat thread keeps the row's
``HeartbeatOn`` fresh while a long run works.
"""

from __future__ import annotations

import enum
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import Any

import psutil

from celery_taskq.core.clock import Clock, utc_now
from celery_taskq.core.context import RunContext
from celery_taskq.core.exceptions import SchemaNotReadyError, StorageError
from celery_taskq.core.models import RunStatus
from celery_taskq.core.notify import RunListener, RunNotifier, notifier_for
from celery_taskq.core.runner.batch import BatchedRecording
from celery_taskq.core.runner.execution import HandlerExecution
from celery_taskq.core.runner.heartbeat import Heartbeat
from celery_taskq.core.runner.lease import KernelDeadline, Lease, boottime
from celery_taskq.core.runner.outcome import RunOutcome
from celery_taskq.core.runner.recording import STORAGE_RETRY_FIRST_DELAY, STORAGE_RETRY_MAX_DELAY
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import limits, runners, runs
from celery_taskq.core.statements.claim import EVERY_QUEUE, ClaimedRun, ClaimScope
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

MEMORY_CHECK_INTERVAL = 1.0
"""Seconds between two reads of the runner's resident memory."""

WORK_WAIT_SLICE = 0.05
"""Longest single wait on work notices, so that a stop request is seen promptly."""


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


class TaskRunner(BatchedRecording, HandlerExecution):
    """Works the queue as the runner row ``runner_id``.

    How it claims runs and records them is
    :class:`~celery_taskq.core.runner.recording.RunRecording` (with the fast mode of
    :class:`~celery_taskq.core.runner.batch.BatchedRecording`); how it executes a handler is
    :class:`~celery_taskq.core.runner.execution.HandlerExecution`.
    """

    def __init__(
        self,
        database: Database,
        runner_id: int,
        settings: Settings,
        *,
        clock: Clock = utc_now,
        notifier: RunNotifier | None = None,
        registered_at: float | None = None,
        claim_scope: ClaimScope = EVERY_QUEUE,
    ) -> None:
        self.database = database
        self.task_runner_id = runner_id
        self.claim_scope = claim_scope
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
        self._init_batching()

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

    def abandoning(self) -> None:
        """Let the lease go before the run is recorded abandoned: that record times this
        runner's row out, and a heartbeat reading it must not kill the process (it ends with
        its own exit code a moment later, the kernel's hard stop behind it)."""
        if self._watch is not None:  # the run is recorded by finish_run: mark it running
            self._watch.run_now()
        if self._lease is not None:
            self._lease.release()

    def stop(self) -> None:
        """Ask the loop to end after the current run (thread-safe)."""
        self._stop.set()

    # -- one run ---------------------------------------------------------------------------

    def run_once(self) -> bool:
        """Claim and process one run; ``False`` when there was nothing to do.

        Inside :meth:`run` the run may already be claimed: the transaction that recorded the
        previous run claimed it too.
        """
        claimed, self._claimed_ahead = self._claimed_ahead, None
        if self.batching:
            claimed = self.next_reserved_run()
        elif claimed is None:
            claimed = self.get_next_task_run()
        if claimed is None:
            return False
        self._run_in_progress = True
        if self._lease is not None:
            self._lease.hold()  # ends the process here if the lease already ran out
        self.process_task_run(claimed)
        self._run_in_progress = False
        held = self._claimed_ahead is not None or self.holds_reserved_runs()
        if not held and self._lease is not None:
            self._lease.release()
        return True

    def process_task_run(self, claimed: ClaimedRun) -> RunOutcome:
        """Execute a claimed run with output captured and record its final state.

        Strict mode, inside :meth:`run` while the loop goes on: the transaction recording this
        run also claims the next one, the moment before it starts, so a run's outcome is still
        committed before the next run starts; a run claimed ahead and not started is handed
        back when the loop ends. The fast mode (:mod:`celery_taskq.core.runner.batch`) keeps a
        plain success for its group commit instead.
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
        self.arm_start(claimed)
        outcome, backoff = self._execute(context)
        recorded, outcome = self._finish(claimed, outcome, backoff)
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

        def reservation_room() -> int:  # how many more runs the loop may start
            room = self.settings.claim_batch_max if may_claim_ahead() else 1
            return room if max_runs is None else min(room, max_runs - self.runs_done)

        if self.group_commit:  # the fast mode reserves runs instead of claiming ahead
            self.start_batching(reservation_room)
        else:
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
            self.stop_batching()
            heartbeat.stop()
            self._end(crashed=crashed or self._run_in_progress)
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)

    def _end(self, *, crashed: bool) -> None:
        """Close the runner row: ``success`` when the loop stopped itself, ``timeout`` (with
        any run it still held) when it crashed, so that the overseer's rules take the run up.
        A run claimed ahead and never started goes back to ``scheduled``."""
        claimed_ahead, self._claimed_ahead = self._claimed_ahead, None
        self.commit_pending()  # before the end hands back what the runner still holds
        try:
            with self.database.transaction() as connection:
                if (
                    claimed_ahead is not None
                    and runs.release_run(connection, claimed_ahead.run_id, self.task_runner_id)
                    and self.claim_scope.limited
                ):
                    limits.release(connection, claimed_ahead.run_id)
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
