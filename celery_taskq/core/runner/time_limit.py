"""Per-run time limits: a handler that works too long is stopped and its run ends ``timeout``.

A handler's limit is its ``time_limit`` class attribute, else the ``run_time_limit`` setting
(``TASKQ_RUN_TIME_LIMIT``); ``0`` or ``None`` means no limit. While a limited handler works, a
watchdog thread waits for the limit, then stops the handler in two stages:

1. **Soft stop.** :class:`RunTimeLimitExceeded` is raised inside the handler. When the run is
   executed by the main thread (a standalone runner, a Celery prefork pool process), the
   watchdog sends ``SIGALRM`` to that thread; the signal handler raises the exception, which
   interrupts ``time.sleep``, blocking I/O and pure-Python loops alike. In any other thread
   the exception is set asynchronously, which a thread notices between two bytecodes (so a
   Python loop stops, a long sleep does not). The exception derives from ``BaseException`` so
   that a handler's ``except Exception`` does not swallow it; once the limit has fired the run
   is recorded ``timeout`` whatever the handler does afterwards. The runner records the output
   so far and goes on to its next run.
2. **Hard stop.** A handler still working ``run_time_limit_grace`` seconds later (it swallowed
   the exception, or is stuck in C code that never returns to Python) cannot be stopped from
   inside the process. The watchdog then records the run ``timeout`` with the output so far,
   marks its runner ``timeout``, and ends the process with :data:`UNSTOPPABLE_EXIT_CODE`;
   OnCreateTaskRunners (or Celery's pool) starts a replacement.

Celery's own ``task_time_limit`` cannot serve here: a runner task is one long Celery task that
works many runs, so Celery's limit would measure the runner's life, not a run's.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable
from datetime import datetime
from types import FrameType, TracebackType
from typing import Any

from celery_taskq.core.models import RunStatus
from celery_taskq.core.runner import stop_points
from celery_taskq.core.runner.capture import peek_output
from celery_taskq.core.runner.lease import KernelDeadline, boottime
from celery_taskq.core.runner.outcome import RunOutcome
from celery_taskq.core.runner.stop_points import StopPoints
from celery_taskq.core.statements import runners, runs
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)

TIME_LIMIT_CODE = "time_limit"
"""``ErrorCode`` of a run stopped by its time limit."""

UNSTOPPABLE_EXIT_CODE = 70
"""Exit status of a runner process ended because a handler could not be stopped."""

HARD_STOP_SLACK = 1.0
"""Seconds after ``limit + grace`` at which the kernel ends a process the watchdog could not."""

RECORDING_SLACK = 10.0
"""Seconds the watchdog has to record an unstoppable run before the kernel ends the process."""

_RUNNING, _FIRED, _DONE, _ABANDONING = "running", "fired", "done", "abandoning"


class RunTimeLimitExceeded(BaseException):
    """Raised inside a handler that outlived its time limit.

    A ``BaseException``, like ``KeyboardInterrupt``, so that ``except Exception`` in a handler
    does not swallow it.
    """

    def __init__(self, limit: float | None = None) -> None:
        message = (
            "the run exceeded its time limit"
            if limit is None
            else f"the run exceeded its time limit of {limit:g} s"
        )
        super().__init__(message)
        self.limit = limit


def effective_limit(handler_limit: float | None, configured: float | None) -> float | None:
    """The limit in seconds that applies to a run, or ``None`` for none.

    ``handler_limit`` (the handler's ``time_limit``) wins when set; ``0`` means no limit.
    """
    value = configured if handler_limit is None else handler_limit
    if value is None or value <= 0:
        return None
    return float(value)


class TimeLimit:
    """Context manager enforcing ``limit`` seconds on the code inside it (see the module doc).

    ``on_unstoppable`` is called by the watchdog thread, just before the process ends, when the code
    is still running ``grace`` seconds after the soft stop. A ``None`` limit does nothing. On
    leaving, a limit that fired always surfaces as :class:`RunTimeLimitExceeded`. ``hard_stop`` (a
    :class:`~celery_taskq.core.runner.lease.KernelDeadline`, made here by default) ends the process
    from outside the interpreter :data:`HARD_STOP_SLACK` seconds after the watchdog should have, in
    case the watchdog cannot run (a handler holding the GIL, a stopped process).
    """

    def __init__(
        self,
        limit: float | None,
        *,
        grace: float,
        on_unstoppable: Callable[[], None],
        exit_process: Callable[[int], Any] = os._exit,
        hard_stop: Callable[[], KernelDeadline | None] = KernelDeadline.create,
    ) -> None:
        self.limit = limit
        self.grace = grace
        self.on_unstoppable = on_unstoppable
        self._exit_process = exit_process
        self._make_hard_stop = hard_stop
        self._hard_stop: KernelDeadline | None = None
        self._lock = threading.Lock()
        self._stop_points = StopPoints(self._lock)
        self._finished = threading.Event()
        self._state = _RUNNING
        self._raised = False
        self._thread_id = 0
        self._in_main_thread = False
        self._previous_handler: Any = None
        self._watchdog: threading.Thread | None = None

    @property
    def fired(self) -> bool:
        """Whether the limit was reached."""
        return self._state in (_FIRED, _ABANDONING)

    def __enter__(self) -> TimeLimit:
        if self.limit is None:
            return self
        self._thread_id = threading.get_ident()
        self._in_main_thread = threading.current_thread() is threading.main_thread()
        if self._in_main_thread:
            self._previous_handler = signal.signal(signal.SIGALRM, self._on_alarm)
        stop_points.watch(self._thread_id, self._stop_points)
        self._hard_stop = self._make_hard_stop()
        if self._hard_stop is not None:
            self._hard_stop.arm_at(boottime() + self.limit + self.grace + HARD_STOP_SLACK)
        self._watchdog = threading.Thread(target=self._watch, name="taskq-time-limit", daemon=True)
        self._watchdog.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.limit is None:
            return
        with self._lock:
            abandoning = self._state == _ABANDONING
            fired = self._state == _FIRED
            if not abandoning:
                self._state = _DONE
                self._finished.set()
                self._disarm(fired)
        if abandoning:
            # The watchdog is recording this run as unstoppable and ends the process: a
            # result from here must not be recorded as well.
            threading.Event().wait()
        if self._watchdog is not None:
            self._watchdog.join()
        if fired or abandoning:
            if isinstance(exc, RunTimeLimitExceeded) and exc.limit is not None:
                return
            raise RunTimeLimitExceeded(self.limit) from exc

    def _disarm(self, fired: bool) -> None:
        if self._hard_stop is not None:
            self._hard_stop.close()
        stop_points.unwatch(self._thread_id)
        if self._in_main_thread:
            previous = self._previous_handler
            if fired and previous in (signal.SIG_DFL, None):
                # The alarm sent may still be pending; its default action would end the process.
                previous = signal.SIG_IGN
            signal.signal(signal.SIGALRM, previous)
        elif fired:
            _set_async_exception(self._thread_id, None)

    def _on_alarm(self, _signum: int, _frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes, maybe while this very thread holds
        # the lock: only the stop points' depth is read here (a plain attribute).
        if self._state == _FIRED and not self._raised:
            if self._stop_points.depth > 0:
                self._stop_points.deferred = self._raise_once
                return
            self._raise_once()

    def _raise_once(self) -> None:
        if not self._raised:
            self._raised = True
            raise RunTimeLimitExceeded(self.limit)

    def _raise_cancelling_async(self) -> None:
        _set_async_exception(self._thread_id, None)
        self._raise_once()

    def _watch(self) -> None:
        limit = self.limit
        if limit is None or self._finished.wait(limit):
            return
        with self._lock:
            if self._state != _RUNNING:
                return
            self._state = _FIRED
            logger.warning(
                "a run exceeded its time limit of %g s: stopping its handler",
                limit,
                extra={"action": "run_time_limit"},
            )
            if self._in_main_thread:
                signal.pthread_kill(self._thread_id, signal.SIGALRM)
            elif self._stop_points.deliverable(self._raise_once):
                # Not yet delivered if the thread enters a transaction first: it is raised
                # there instead, before the transaction begins.
                self._stop_points.on_enter = self._raise_cancelling_async
                _set_async_exception(self._thread_id, RunTimeLimitExceeded)
        if self._finished.wait(self.grace):
            return
        with self._lock:
            if self._state != _FIRED:
                return
            self._state = _ABANDONING
            if self._hard_stop is not None:
                # The watchdog runs, so the interpreter is not stuck: give the recording time
                # (a busy database) before the kernel ends the process in its place.
                self._hard_stop.arm_at(boottime() + RECORDING_SLACK)
        logger.error(
            "a handler did not stop within %g s of its time limit: ending this runner process",
            self.grace,
            extra={"action": "run_unstoppable"},
        )
        try:
            self.on_unstoppable()
        except Exception:
            logger.exception("could not record the unstoppable run")
        finally:
            self._exit_process(UNSTOPPABLE_EXIT_CODE)


def _set_async_exception(thread_id: int, exception: type[BaseException] | None) -> None:
    """Raise ``exception`` in thread ``thread_id`` at its next bytecode (``None``: cancel it)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), None if exception is None else ctypes.py_object(exception)
    )


def abandon_run(
    database: Database,
    *,
    run_id: int,
    runner_id: int,
    limit: float,
    grace: float,
    percent: int,
    output_cap: int,
    now: datetime,
) -> None:
    """Record a run whose handler could not be stopped: ``timeout``, with the output so far;
    its runner ends ``timeout`` too (the process is about to end)."""
    stdout, stderr = peek_output(output_cap)
    message = (
        f"the run exceeded its time limit of {limit:g} s and its handler did not stop within "
        f"{grace:g} s more: the runner process was ended"
    )
    outcome = RunOutcome(
        status=RunStatus.TIMEOUT,
        standard_output=stdout,
        error_output=stderr + f"[celery_taskq: {message}]\n",
        error_code=TIME_LIMIT_CODE,
        error_message=message,
        percents_completed=percent,
    )
    with database.transaction() as connection:
        runs.finish_run(connection, run_id, runner_id, outcome, now)
        runners.time_out_runners(connection, [runner_id], now)
