"""Audit of native Celery tasks: one ``TaskQueue`` row per task, one ``TaskRuns`` row per attempt.

:class:`NativeTaskAuditor` has one method per Celery signal and takes plain values, so it is
tested without Celery; :mod:`celery_taskq.celery` connects it. Each method is guarded: a
failure to write audit rows is logged with the Celery task id and counted in
:attr:`NativeTaskAuditor.failures`, and never breaks the user's task.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import insert

from celery_taskq.core.models import CELERY_HANDLER_PREFIX, RunStatus, TaskQueue
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.capture import CapturedOutput, capture_output
from celery_taskq.core.runner.heartbeat import Heartbeat
from celery_taskq.core.runner.lease import process_namespace
from celery_taskq.core.runner.liveness import current_process_start_time
from celery_taskq.core.runner.outcome import RunOutcome
from celery_taskq.core.statements import native, runners, runs

logger = logging.getLogger(__name__)

TASK_ID_HEADER = "taskq_task_id"
"""Message header carrying the ``TaskQueue.Id`` of an audited task from publisher to worker."""

QUEUED_BY_HEADER = "taskq_queued_by"
"""Message header a caller may set (``apply_async(headers=...)``) to fill ``QueuedById``."""

UNLIMITED_RETRIES = 1_000_000
"""``MaxRetries`` recorded for a Celery task that retries without limit."""

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
            logger.exception(
                "audit of Celery task %s failed in %s",
                kwargs.get("task_id"),
                method.__name__,
                extra={"action": "audit_failed", "celery_task_id": kwargs.get("task_id")},
            )
            return None

    return wrapper


def json_safe(value: Any) -> Any:
    """``value`` as a JSON document; what JSON cannot hold becomes its ``repr``."""
    return json.loads(json.dumps(value, default=repr, allow_nan=False))


@dataclass
class _Attempt:
    run_id: int
    runner_id: int
    output: ExitStack
    captured: CapturedOutput
    error_code: str | None = None
    error_message: str | None = None
    traceback: str = ""
    ended: bool = False


@dataclass
class NativeTaskAuditor:
    """Writes audit rows for plain Celery tasks as they are published and executed."""

    get_service: Callable[[], TaskQueueService]
    should_audit: Callable[[str], bool]
    failures: int = 0
    _attempts: dict[str, _Attempt] = field(default_factory=dict)
    _runner_id: int | None = None
    _runner_pid: int | None = None
    _heartbeat: Heartbeat | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- publisher side ----------------------------------------------------------------------

    @_guarded
    def on_publish(
        self,
        *,
        task_id: str,
        task_name: str,
        args: Any,
        kwargs: Any,
        headers: dict[str, Any],
        eta: datetime | None,
        max_retries: int | None,
    ) -> None:
        """``before_task_publish``: record the task, unless this is a retry of a recorded one."""
        if not self.should_audit(task_name):
            return
        attempt = self._attempts.get(task_id)
        if attempt is not None:
            # Published from inside its own attempt: a Celery retry. The next attempt may start
            # at once, so this one ends now; postrun fills in its output and error.
            self._end_for_retry(attempt)
            return
        if headers.get(TASK_ID_HEADER) is not None:
            return
        service = self.get_service()
        now = service.clock()
        with service.database.transaction() as connection:
            if native.task_of_celery_id(connection, task_id) is not None:
                return  # Celery republished it for a retry: the attempts go on one task
            queue_id = connection.execute(
                insert(TaskQueue)
                .values(
                    task_handler_class=CELERY_HANDLER_PREFIX + task_name,
                    task_data=json_safe({"args": list(args or ()), "kwargs": dict(kwargs or {})}),
                    scheduled_on=eta or now,
                    queued_on=now,
                    queued_by_id=_queued_by(headers),
                    max_retries=UNLIMITED_RETRIES if max_retries is None else max_retries + 1,
                    task_runs_failed=0,
                )
                .returning(TaskQueue.id)
            ).scalar_one()
        headers[TASK_ID_HEADER] = int(queue_id)

    # -- worker side -------------------------------------------------------------------------

    @_guarded
    def on_prerun(
        self,
        *,
        task_id: str,
        task_name: str,
        args: Any,
        kwargs: Any,
        headers: Mapping[str, Any],
        worker_hostname: str,
    ) -> None:
        """``task_prerun``: open a ``running`` run and start capturing output."""
        if not self.should_audit(task_name):
            return
        service = self.get_service()
        runner_id = self._worker_runner_id(service, worker_hostname)
        now = service.clock()
        recorded_id = headers.get(TASK_ID_HEADER)
        # A task its publisher recorded needs one statement on PostgreSQL: autocommit spares
        # the BEGIN and COMMIT round trips.
        fast = recorded_id is not None and service.database.dialect == "postgresql"
        with (
            service.database.autocommit() if fast else service.database.transaction()
        ) as connection:
            queue_id = recorded_id or native.task_of_celery_id(connection, task_id)
            if queue_id is None:  # published by a process that does not audit
                queue_id = connection.execute(
                    insert(TaskQueue)
                    .values(
                        task_handler_class=CELERY_HANDLER_PREFIX + task_name,
                        task_data=json_safe(
                            {"args": list(args or ()), "kwargs": dict(kwargs or {})}
                        ),
                        scheduled_on=now,
                        queued_on=now,
                        queued_by_id=_queued_by(headers),
                        max_retries=UNLIMITED_RETRIES,
                        task_runs_failed=0,
                    )
                    .returning(TaskQueue.id)
                ).scalar_one()
            run_id = native.start_native_run(
                connection,
                task_queue_id=int(queue_id),
                celery_task_id=task_id,
                runner_id=runner_id,
                now=now,
            )
        output = ExitStack()
        captured = output.enter_context(capture_output(service.settings.output_cap_bytes))
        self._attempts[task_id] = _Attempt(run_id, runner_id, output, captured)

    @_guarded
    def on_failure(self, *, task_id: str, exception: BaseException, traceback: str) -> None:
        """``task_failure``: remember the error for the run."""
        attempt = self._attempts.get(task_id)
        if attempt is not None:
            attempt.error_code = type(exception).__name__
            attempt.error_message = str(exception)
            attempt.traceback = traceback

    @_guarded
    def on_retry(self, *, task_id: str, reason: BaseException, traceback: str) -> None:
        """``task_retry``: this attempt failed; Celery will deliver the next one."""
        self.on_failure(task_id=task_id, exception=reason, traceback=traceback)

    @_guarded
    def on_postrun(self, *, task_id: str, state: str | None, retval: Any) -> None:
        """``task_postrun``: stop capturing and record the attempt's final state."""
        attempt = self._attempts.pop(task_id, None)
        if attempt is None:
            return
        attempt.output.close()
        succeeded = state == "SUCCESS"
        error_output = attempt.captured.stderr
        if attempt.traceback:
            error_output += attempt.traceback
        outcome = RunOutcome(
            status=RunStatus.SUCCESS if succeeded else RunStatus.ERROR,
            standard_output=attempt.captured.stdout,
            error_output=error_output,
            results=json_safe(retval) if succeeded and retval is not None else None,
            error_code=None if succeeded else attempt.error_code or state,
            error_message=None if succeeded else attempt.error_message,
            percents_completed=100 if succeeded else None,
        )
        service = self.get_service()
        single_statement = (
            not attempt.ended
            and runs.is_plain_success(outcome)
            and service.database.dialect == "postgresql"
        )
        with (
            service.database.autocommit() if single_statement else service.database.transaction()
        ) as connection:
            if attempt.ended:
                runs.amend_ended_run(connection, attempt.run_id, attempt.runner_id, outcome)
            else:
                runs.finish_run(
                    connection, attempt.run_id, attempt.runner_id, outcome, service.clock()
                )

    def _end_for_retry(self, attempt: _Attempt) -> None:
        if attempt.ended:
            return
        service = self.get_service()
        outcome = RunOutcome(
            RunStatus.ERROR, "", "", error_code="Retry", error_message="Celery retries the task"
        )
        with service.database.transaction() as connection:
            runs.finish_run(connection, attempt.run_id, attempt.runner_id, outcome, service.clock())
        attempt.ended = True

    @_guarded
    def on_process_shutdown(self) -> None:
        """``worker_process_shutdown``: end this process's runner row ``success``."""
        if self._runner_id is None or self._runner_pid != os.getpid():
            return
        if self._heartbeat is not None:
            self._heartbeat.stop()
        service = self.get_service()
        with service.database.transaction() as connection:
            runners.finish_runner(connection, self._runner_id, service.clock())

    def _worker_runner_id(self, service: TaskQueueService, worker_hostname: str) -> int:
        """This worker process's runner row, registered on its first audited task."""
        with self._lock:
            if self._runner_id is None or self._runner_pid != os.getpid():
                with service.database.transaction() as connection:
                    self._runner_id = native.register_celery_worker_process(
                        connection,
                        process_id=os.getpid(),
                        hostname=service.settings.hostname,
                        process_create_time=current_process_start_time(),
                        worker_hostname=worker_hostname,
                        now=service.clock(),
                        process_namespace=process_namespace(),
                    )
                self._runner_pid = os.getpid()
                self._heartbeat = Heartbeat(
                    service.database, self._runner_id, service.settings.heartbeat_interval
                )
                self._heartbeat.start()
            return self._runner_id


def _queued_by(headers: Mapping[str, Any]) -> str | None:
    value = headers.get(QUEUED_BY_HEADER)
    return None if value is None else str(value)[:255]
