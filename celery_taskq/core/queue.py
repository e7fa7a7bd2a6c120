"""The queue service (the seed's ``TaskQueue`` class) and its three events.

=====================================  ==============================================
seed step                              here
=====================================  ==============================================
``createTaskHandler``                  :meth:`TaskQueueService.create_task_handler`
``addTask``                            :meth:`TaskQueueService.add_task`
``refreshTaskRunnersStatus``           :meth:`TaskQueueService.refresh_task_runners_status`
``createTaskRun``                      :meth:`TaskQueueService.create_task_run`
``createMissingTaskRuns``              :meth:`TaskQueueService.create_missing_task_runs`
``getTaskRunnerCount``                 :meth:`TaskQueueService.get_task_runner_count`
``getMissingTaskRunnerCount``          :meth:`TaskQueueService.get_missing_task_runner_count`
``getTaskRunner``                      :meth:`TaskQueueService.get_task_runner`
``runStandalone``                      :meth:`TaskQueueService.run_standalone`
``createMissingTaskRunners``           :meth:`TaskQueueService.create_missing_task_runners`
``processQueue``                       :meth:`TaskQueueService.process_queue`
``OnProcess``                          :func:`~celery_taskq.core.overseer.on_process`
``OnCreateTaskRunners``                :func:`~celery_taskq.core.overseer.on_create_task_runners`
``OnDebug``                            :func:`~celery_taskq.core.overseer.on_debug`
=====================================  ==============================================

Adding, cancelling, retrying and reading tasks are here; the overseer's steps and the events are
in :mod:`celery_taskq.core.overseer` (:class:`TaskQueueService` inherits the steps).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from celery_taskq.core import intake, registry
from celery_taskq.core.clock import Clock, utc_now
from celery_taskq.core.exceptions import InvalidArgumentError, NotFoundError, TaskNotFoundError
from celery_taskq.core.handlers import TaskHandler
from celery_taskq.core.intake import TaskSpec, check_on_duplicate
from celery_taskq.core.loading import create_task_handler
from celery_taskq.core.models import (
    CELERY_HANDLER_PREFIX,
    FAILED_RUN_STATUSES,
    OPEN_RUN_STATUSES,
    RunStatus,
    TaskQueue,
    TaskRun,
)
from celery_taskq.core.notify import notifier_for
from celery_taskq.core.overseer import QueueOverseer
from celery_taskq.core.settings import Settings
from celery_taskq.core.snapshots import RunSnapshot, TaskSnapshot
from celery_taskq.core.statements import tasks
from celery_taskq.core.statements.claim import ClaimScope
from celery_taskq.core.steps import STEPS_HANDLER, Step, steps_data
from celery_taskq.core.storage.database import Database, translate_errors

logger = logging.getLogger(__name__)


class TaskQueueService(QueueOverseer):
    """Adds tasks, oversees runners, creates runs and starts runners."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        clock: Clock = utc_now,
        cli_mode: bool = False,
    ) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock
        self.cli_mode = cli_mode
        registry.import_modules(settings.imports)
        self.notifier = notifier_for(settings)

    # -- adding tasks ----------------------------------------------------------------------

    def create_task_handler(self, handler_path: str) -> TaskHandler:
        """Instantiate a handler, refusing a missing module or class, or a non-handler."""
        return create_task_handler(handler_path, self.settings.allowed_handler_prefixes)

    def add_task(
        self,
        handler_path: str,
        data: Any = None,
        *,
        scheduled_on: datetime | None = None,
        max_retries: int | None = None,
        queued_by: str | None = None,
        title: str | None = None,
        unique_key: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        on_duplicate: str = "return",
        create_run: bool = False,
        connection: Connection | None = None,
    ) -> int:
        """Validate and queue a task; return its ``TaskQueue.Id``. Nothing is written on refusal.

        While a task with the same ``unique_key`` is unfinished, the existing task's id is
        returned (``on_duplicate="return"``) or :class:`DuplicateTaskError` raised
        (``"raise"``). With ``create_run`` a task that is already due gets its first run in
        the same transaction, so a runner can start it before the next OnProcess tick. Its
        runs go to ``queue`` (default ``default``) and are claimed by ``priority`` (higher
        first, default 0), then FIFO. With
        ``connection`` the rows are written in that connection's transaction, which the caller
        commits or rolls back.
        """
        check_on_duplicate(on_duplicate)
        spec = TaskSpec(
            handler_path,
            data,
            scheduled_on,
            max_retries,
            queued_by,
            title,
            unique_key,
            queue=queue,
            priority=priority,
        )
        values = intake.prepare(
            spec,
            create_handler=self.create_task_handler,
            now=self.clock(),
            max_data_bytes=self.settings.task_data_max_bytes,
        )
        if (
            connection is None
            and self.database.dialect == "postgresql"
            and intake.is_single_statement(values, with_run=create_run)
        ):
            # One statement writes the task and its run: autocommit spares BEGIN and COMMIT.
            writing = self.database.autocommit()
        else:
            writing = self._writing(connection)
        with writing as writer:
            task_id, created = intake.insert_one(
                writer, values, with_run=create_run, raise_duplicate=on_duplicate == "raise"
            )
        if created:
            logger.info(
                "queued task %s (%s)",
                task_id,
                values["task_handler_class"],
                extra={"action": "task_queued", "queue_id": task_id},
            )
        return task_id

    def add_tasks(
        self,
        tasks: Sequence[TaskSpec | Mapping[str, Any]],
        *,
        on_duplicate: str = "return",
        create_run: bool = False,
        connection: Connection | None = None,
    ) -> list[int]:
        """Validate every task, then queue them all in one transaction; return their ids.

        A refusal of any task (its error names it by position) writes none of them.
        """
        check_on_duplicate(on_duplicate)
        rows = intake.prepare_many(
            tasks,
            create_handler=self.create_task_handler,
            now=self.clock(),
            max_data_bytes=self.settings.task_data_max_bytes,
        )
        with self._writing(connection) as writer:
            ids = intake.insert_many(
                writer, rows, with_run=create_run, raise_duplicate=on_duplicate == "raise"
            )
        logger.info("queued %s tasks", len(ids), extra={"action": "tasks_queued"})
        return ids

    def add_steps_task(self, steps: Sequence[Step | Mapping[str, Any]], **options: Any) -> int:
        """Queue a multi-step task (see :mod:`celery_taskq.core.steps`); ``options`` as for
        :meth:`add_task`. Each step's handler is loaded under the allow-list and its
        ``validate`` is given the step's settings before anything is written."""
        return self.add_task(STEPS_HANDLER, steps_data(steps), **options)

    @contextmanager
    def _writing(self, connection: Connection | None) -> Iterator[Connection]:
        """The caller's connection (its transaction, not committed here), or a new transaction."""
        if connection is None:
            with self.database.transaction() as own:
                yield own
        else:
            with translate_errors():
                yield connection

    def cancel_task(self, task_id: int) -> bool:
        """Cancel a task: a run not yet started never runs; a running one is asked to stop.

        Returns whether a run is still running (it stops when its handler next calls
        ``run.set_progress`` or ``run.raise_if_cancelled``, and ends ``error``/``cancelled``).
        """
        with self.database.transaction() as connection:
            task = self._finished_or_refused(connection, task_id)
            tasks.cancel_task(connection, task_id, self.clock())
            still_running = tasks.open_run_id(connection, task_id) is not None
        logger.info(
            "task %s cancelled%s",
            task_id,
            " (its running run is asked to stop)" if still_running else "",
            extra={"action": "task_cancelled", "queue_id": task_id, "handler": task},
        )
        return still_running

    def _finished_or_refused(self, connection: Any, task_id: int) -> str:
        row = connection.execute(
            select(
                TaskQueue.task_handler_class,
                TaskQueue.last_status,
                TaskQueue.task_runs_failed,
                TaskQueue.max_retries,
                TaskQueue.cancel_requested_on,
            ).where(TaskQueue.id == task_id)
        ).first()
        if row is None:
            raise TaskNotFoundError(f"no task with id {task_id}")
        handler, last_status, failed, max_retries, cancelled_on = row
        if handler.startswith(CELERY_HANDLER_PREFIX):
            raise InvalidArgumentError(
                f"task {task_id} is a native Celery task: revoke it in Celery"
            )
        if cancelled_on is not None:
            raise InvalidArgumentError(f"task {task_id} is already cancelled")
        if last_status is RunStatus.SUCCESS or (
            last_status in FAILED_RUN_STATUSES and failed >= max_retries
        ):
            raise InvalidArgumentError(f"task {task_id} has already finished")
        return str(handler)

    def prepare_task(
        self,
        handler_path: str,
        data: Any = None,
        *,
        scheduled_on: datetime | None = None,
        max_retries: int | None = None,
        queued_by: str | None = None,
    ) -> dict[str, Any]:
        """Check every argument of :meth:`add_task` and return the row's column values."""
        spec = TaskSpec(handler_path, data, scheduled_on, max_retries, queued_by)
        return intake.prepare(
            spec,
            create_handler=self.create_task_handler,
            now=self.clock(),
            max_data_bytes=self.settings.task_data_max_bytes,
        )

    def get_task(self, task_id: int) -> TaskSnapshot:
        """A frozen snapshot of a task and all its runs, oldest run first."""
        with self.database.read_session() as session:
            row = session.get(TaskQueue, task_id)
            if row is None:
                raise TaskNotFoundError(f"no task with id {task_id}")
            runs = session.scalars(
                select(TaskRun).where(TaskRun.task_queue_id == task_id).order_by(TaskRun.id)
            ).all()
            return TaskSnapshot.from_row(row, tuple(RunSnapshot.from_row(run) for run in runs))

    def claim_scope(self, queues: tuple[str, ...] | None = None) -> ClaimScope:
        """What a runner of this process claims: runs of ``queues`` (``None``: every queue),
        within the limits this process declares (``concurrency``, ``rate_limits``)."""
        return ClaimScope(queues=queues, limited=bool(self.settings.limits))

    def get_run(self, run_id: int) -> RunSnapshot:
        """A frozen snapshot of one run."""
        with self.database.read_session() as session:
            row = session.get(TaskRun, run_id)
            if row is None:
                raise NotFoundError(f"no run with id {run_id}")
            return RunSnapshot.from_row(row)

    def watch_run(
        self, run_id: int, *, interval: float = 0.25, timeout: float | None = None
    ) -> Iterator[RunSnapshot]:
        """Yield the run each time it changes, until it has finished (or ``timeout`` passes).

        With Redis pub/sub configured (see :mod:`celery_taskq.core.notify`) a change is read as soon
        as the runner announces it; the table is read every ``interval`` seconds regardless.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: RunSnapshot | None = None
        with self.notifier.listen(run_id) as listener:
            while True:
                run = self.get_run(run_id)
                if run != last:
                    yield run
                    last = run
                if run.status not in OPEN_RUN_STATUSES:
                    return
                wait = interval
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        return
                listener.wait(wait)

    def retry_task(self, task_id: int) -> int:
        """Give a finished task (even one out of retries) one more run now; return its id.

        The run does not reset the task's retry count: if it fails too, the task stays
        exhausted. Audited native Celery tasks are refused: Celery delivers and retries them.
        """
        with self.database.transaction() as connection:
            task = tasks.load_task(connection, task_id)
            if task is None:
                raise TaskNotFoundError(f"no task with id {task_id}")
            if task[0].startswith(CELERY_HANDLER_PREFIX):
                raise InvalidArgumentError(
                    f"task {task_id} is a native Celery task: retry it through Celery"
                )
            run_id = tasks.create_manual_run(connection, task_id)
            if run_id is None:
                raise InvalidArgumentError(f"task {task_id} already has a run in progress")
        self.notifier.announce_work()
        logger.info(
            "task %s retried by hand: run %s",
            task_id,
            run_id,
            extra={"action": "task_retried", "queue_id": task_id, "run_id": run_id},
        )
        return run_id
