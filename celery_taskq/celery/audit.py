"""Audit of native Celery tasks: one ``TaskQueue`` row per task id, one ``TaskRuns`` row per
execution attempt, whatever the path (retry, autoretry, redelivery, replace, eager).

:class:`NativeTaskAuditor` has one method per moment of a task's life and takes plain values
(:class:`TaskMessage`), so it is tested without Celery; :mod:`celery_taskq.celery.audit_signals`
connects it to Celery's signals. Every write is an operation handed to an
:class:`~celery_taskq.celery.audit_writer.AuditWriter`, written in order in this process, so a
caller never waits on the database (an attempt that sends itself again, a retry or a
replacement, waits until its own start is written, so that the next attempt comes after it).
An operation needs nothing back: the end of an attempt finds its run through the
:class:`Attempt` its start operation filled in (same process, same order), or by
``(CeleryTaskId, Attempt, TaskRunnerId)``. What the operations write is idempotent and
order-robust across processes (:mod:`celery_taskq.core.statements.native_attempts`).

Each method is guarded: a failure is logged with the Celery task id and counted in
:attr:`NativeTaskAuditor.failures`, and never breaks the user's task. Nothing here keeps an
exception or a traceback object: only their text, until the attempt's end is handed over.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection

from celery_taskq.celery import audit_processes
from celery_taskq.celery.audit_attempts import Attempt, AttemptFinish, AttemptStart
from celery_taskq.celery.audit_message import (
    QUEUED_BY_HEADER,
    NotedError,
    TaskMessage,
    attempt_end,
    coded,
    json_safe,
    json_text,
)
from celery_taskq.celery.audit_processes import ProcessRunner
from celery_taskq.celery.audit_publish import PublishedTask
from celery_taskq.celery.audit_writer import AuditWriter, Op
from celery_taskq.celery.native_output import start_capture
from celery_taskq.core.native_codes import NativeCode
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.outcome import RunOutcome, storable_outcome
from celery_taskq.core.statements import native, native_attempts
from celery_taskq.core.statements.native_attempts import AttemptEnd

logger = logging.getLogger(__name__)

__all__ = [
    "QUEUED_BY_HEADER",
    "NativeTaskAuditor",
    "NotedError",
    "TaskMessage",
    "json_safe",
]

P = ParamSpec("P")
R = TypeVar("R")


def _guarded(method: Callable[P, R]) -> Callable[P, R | None]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return method(*args, **kwargs)
        except Exception:
            auditor = args[0]
            if isinstance(auditor, NativeTaskAuditor):
                auditor.failures += 1
            task_id = kwargs.get("task_id") or getattr(
                kwargs.get("message") or (args[1] if len(args) > 1 else None), "task_id", None
            )
            logger.exception(
                "audit of Celery task %s failed in %s",
                task_id,
                method.__name__,
                extra={"action": "audit_failed", "celery_task_id": task_id},
            )
            return None

    return wrapper


@dataclass
class NativeTaskAuditor:
    """Writes audit rows for plain Celery tasks as they are published and executed."""

    get_service: Callable[[], TaskQueueService]
    should_audit: Callable[[str], bool]
    writer: AuditWriter | None = None
    """Where the writes of publishers and attempts go (by default: on the service's database)."""
    main_writer: AuditWriter | None = None
    """Where the worker's main process writes: at once, in the calling thread. The main process
    forks pool processes, and a SQLite connection inside a transaction must not be forked (the
    child would find the database locked), so no writer thread of its may be in one."""
    capture_output: bool = True
    worker_hostname: str = ""
    """The worker this process belongs to (set when the worker or a pool process starts)."""
    failures: int = 0
    _local: threading.local = field(default_factory=threading.local)
    _runner: ProcessRunner | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.writer is None:
            self.writer = AuditWriter(lambda: self.get_service().database)
        if self.main_writer is None:
            self.main_writer = AuditWriter(lambda: self.get_service().database)
            self.main_writer.close()  # closed: each write is made before submit() returns

    def _submit_in_main(self, op: Callable[[Connection], None], describe: str) -> None:
        assert self.main_writer is not None  # noqa: S101 - set by __post_init__
        self.main_writer.submit(op, describe=describe)

    def _submit(self, op: Op, describe: str) -> None:
        assert self.writer is not None  # noqa: S101 - set by __post_init__
        self.writer.submit(op, describe=describe)

    def _attempts(self) -> dict[str, list[Attempt]]:
        attempts: dict[str, list[Attempt]] | None = getattr(self._local, "attempts", None)
        if attempts is None:
            attempts = self._local.attempts = {}
        return attempts

    def current_attempt(self, task_id: str) -> Attempt | None:
        """The innermost attempt of ``task_id`` running in this thread, if any."""
        stack = self._attempts().get(task_id)
        return stack[-1] if stack else None

    # -- publisher side ----------------------------------------------------------------------

    @_guarded
    def on_publish(self, message: TaskMessage) -> None:
        """``before_task_publish``: the task's row, unless an attempt of it sends it again."""
        for stack in self._attempts().values():
            for attempt in stack:
                if message.replaced_nesting > attempt.message.replaced_nesting:
                    attempt.replaced = True  # Task.replace() sends the replacement from here
        if not self.should_audit(message.task_name):
            return
        if self.current_attempt(message.task_id) is not None:
            # A retry or a replacement: the next attempt of the same row, which may start at
            # once in another process. This attempt's start is written first, so the attempts
            # keep their order (the caller of .delay() never comes here).
            assert self.writer is not None  # noqa: S101 - set by __post_init__
            self.writer.flush(timeout=5.0)
            return
        task = self._native_task(message, self.get_service().clock())
        self._submit(PublishedTask(task), f"publish {message.task_id}")

    # -- worker side -------------------------------------------------------------------------

    @_guarded
    def on_start(self, message: TaskMessage, *, worker_hostname: str, ignore_result: bool) -> None:
        """``task_prerun``: the attempt's run, ``running``; its output is captured."""
        if not self.should_audit(message.task_name):
            return
        service = self.get_service()
        now = service.clock()
        runner = None if message.eager else self._process_runner(service, worker_hostname)
        capture = start_capture(service.settings.output_cap_bytes) if self.capture_output else None
        attempt = Attempt(message, now, ignore_result, capture)
        attempt.start = AttemptStart(attempt, self._native_task(message, now), runner)
        self._attempts().setdefault(message.task_id, []).append(attempt)
        self._submit(attempt.start, f"start {message.task_id}")

    @_guarded
    def on_outcome(self, *, task_id: str, error: NotedError | None = None) -> None:
        """``task_success``, ``task_failure``, ``task_retry`` in the attempt's process: its
        output ends here (before Celery logs the outcome), with the error if any."""
        attempt = self.current_attempt(task_id)
        if attempt is None:
            return
        attempt.finish_capture()
        if error is not None:
            attempt.error = error

    @_guarded
    def on_end(
        self, *, task_id: str, state: str | None, retval: Any, requeue: bool = False
    ) -> None:
        """``task_postrun``: the attempt's outcome, from Celery's state."""
        stack = self._attempts().get(task_id)
        if not stack:
            return
        attempt = stack.pop()
        if not stack:
            del self._attempts()[task_id]
        stdout, stderr = attempt.finish_capture()
        end = attempt_end(
            state,
            retval,
            error=attempt.error,
            requeue=requeue,
            ignore_result=attempt.ignore_result,
            replaced=attempt.replaced,
        )
        if end is None:
            return  # interrupted (SystemExit): the worker's main process records why
        error = attempt.error
        outcome = storable_outcome(
            RunOutcome(
                status=end.status,
                standard_output=stdout,
                error_output=stderr + (error.traceback if error is not None else ""),
                results=end.results,
                error_code=end.error_code,
                error_message=end.error_message,
            ),
            self.get_service().settings.result_max_bytes,
        )
        end = AttemptEnd(
            status=outcome.status,
            error_code=outcome.error_code,
            error_message=outcome.error_message,
            standard_output=outcome.standard_output,
            error_output=outcome.error_output,
            results=outcome.results,
            final=end.final,
        )
        assert attempt.start is not None  # noqa: S101 - set by on_start
        finish = AttemptFinish(attempt.start, end, self.get_service().clock())
        self._submit(finish, f"end {task_id}")

    # -- the worker's main process -----------------------------------------------------------

    @_guarded
    def on_revoked(self, message: TaskMessage, *, terminated: bool, expired: bool) -> None:
        """``task_revoked`` (main process): terminated while it ran, or discarded unstarted."""
        if not self.should_audit(message.task_name):
            return
        if terminated:
            code = NativeCode.TERMINATED
        else:
            code = NativeCode.EXPIRED if expired else NativeCode.REVOKED
        self._record_seen_end(message, coded(code))

    @_guarded
    def on_main_failure(self, message: TaskMessage, error: NotedError, *, final: bool) -> None:
        """``task_failure`` outside the attempt's process (the worker's main process saw the
        attempt end: its process lost, a hard time limit)."""
        if not self.should_audit(message.task_name):
            return
        end = AttemptEnd(error.status, error.code, error.message, final=final)
        self._record_seen_end(message, end)
        if error.code == NativeCode.WORKER_LOST:
            self._close_dead_processes(self.worker_hostname)

    def _record_seen_end(self, message: TaskMessage, end: AttemptEnd) -> None:
        now = self.get_service().clock()
        task = self._native_task(message, now)

        def record(connection: Connection) -> None:
            native_attempts.record_seen_end(
                connection, task, attempt=message.retries, end=end, now=now
            )

        self._submit_in_main(record, f"{end.error_code} {message.task_id}")

    # -- worker processes --------------------------------------------------------------------

    @_guarded
    def on_process_init(self, worker_hostname: str) -> None:
        """``worker_process_init``: a new pool process; the rows of those that died close."""
        self.worker_hostname = worker_hostname
        self._close_dead_processes(worker_hostname, in_main=False)

    @_guarded
    def on_process_shutdown(self) -> None:
        """``worker_process_shutdown``: this process's runner row ends ``success``."""
        runner = self._runner
        if runner is None or runner.pid != os.getpid():
            return
        self._submit(audit_processes.ending(self.get_service(), runner), "runner end")
        assert self.writer is not None  # noqa: S101 - set by __post_init__
        self.writer.flush(timeout=5.0)

    @_guarded
    def on_worker_shutdown(self, worker_hostname: str) -> None:
        """``worker_shutdown`` (main process): close the rows of its processes that ended
        without closing them (killed), and its own (solo and threads pools)."""
        self._close_dead_processes(worker_hostname, this_process=os.getpid())
        assert self.writer is not None  # noqa: S101 - set by __post_init__
        self.writer.flush(timeout=5.0)  # the solo and threads pools run attempts here

    def _close_dead_processes(
        self, worker_hostname: str, this_process: int | None = None, *, in_main: bool = True
    ) -> None:
        if not worker_hostname:
            return
        close = audit_processes.closing_ended(self.get_service(), worker_hostname, this_process)
        describe = f"close ended processes of {worker_hostname}"
        if in_main:
            self._submit_in_main(close, describe)
        else:
            self._submit(close, describe)

    def _process_runner(self, service: TaskQueueService, worker_hostname: str) -> ProcessRunner:
        """This process's runner row, registered (by an operation) on its first attempt."""
        with self._lock:
            if self._runner is not None and self._runner.pid == os.getpid():
                return self._runner
            runner, register = audit_processes.registration(service, worker_hostname)
            self._runner = runner
        self._submit(register, "runner registration")
        return runner

    def _native_task(self, message: TaskMessage, now: datetime) -> native.NativeTask:
        return native.NativeTask(
            celery_task_id=message.task_id,
            task_name=message.task_name,
            task_data=json_text(
                {"args": list(message.args or ()), "kwargs": dict(message.kwargs or {})}
            ),
            scheduled_on=message.eta or now,
            queued_on=now,
            queued_by=None if message.queued_by is None else message.queued_by[:255],
            max_retries=message.max_retries,
            parent_id=message.parent_id,
            root_id=message.root_id,
            group_id=message.group_id,
            chord_id=message.chord_id,
        )
