"""The Celery tasks celery_taskq adds to an app: the beat-driven events (OnProcess,
OnCreateTaskRunners), the runner task, and the hook with which ``enqueue()`` asks for runners.

Runner tasks are sent on demand (:func:`send_runners`): none while no handler run is
scheduled, and at most one per scheduled run that no idle runner will take, within
TaskRunnerLimit. A worker registers at most ``concurrency - 1`` of them, so its last pool
process stays free for the app's tasks and the ticks. A runner leaves once it has found the
queue empty for ``runner_max_idle`` seconds (1 s by default). In a worker with one pool
process, a runner works one run and hands the process back, asking for a new runner task
behind whatever else waits. With ``handler_runners`` off (audit-only mode) no runner task is
sent at all.

The internal tasks are quiet (:class:`InternalTask`): no task events and no ``task-sent`` event
unless ``internal_task_events`` is on, and they log at DEBUG when they did nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from celery import Celery, Task

from celery_taskq import api
from celery_taskq.celery.broker import TRANSPORT_PATH, prune_sql_broker
from celery_taskq.celery.routing import (
    CREATE_RUNNERS_TASK,
    PROCESS_TASK,
    RUNNER_TASK,
    own_queue,
    runner_route,
)
from celery_taskq.celery.state import TaskqCelery
from celery_taskq.core.overseer import on_process
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.loop import StopReason
from celery_taskq.core.statements import dispatch

logger = logging.getLogger(__name__)

DUPLICATE_TICK = "skipped: this tick already ran"
"""Result of an event task whose tick another beat already carried out."""

AUDIT_ONLY = "skipped: audit-only mode (handler_runners is off)"
"""Result of a runner or OnCreateTaskRunners task in audit-only mode."""

RUNNER_REQUEST_MIN_INTERVAL = 1.0
"""Seconds between two runner requests made by enqueue() in one process."""


class _NoSentEvent:
    """Stands in for the event dispatcher of one publish: the ``task-sent`` event is dropped.

    Celery sends ``task-sent`` for every task when ``task_send_sent_event`` is on and has no
    per-task switch; ``send_task_message`` takes the dispatcher to use as an option.
    """

    def publish(self, *_: Any, **__: Any) -> None:
        """Send nothing."""


NO_SENT_EVENT = _NoSentEvent()


class InternalTask(Task):  # type: ignore[misc]
    """Base of celery_taskq's own tasks: routed to celery_taskq's queues where the app declares
    them, and silent in Flower unless ``internal_task_events`` is on."""

    taskq_state: ClassVar[TaskqCelery | None] = None

    @property
    def send_events(self) -> bool:
        """Whether the worker sends this task's events (Celery reads it per task)."""
        state = self.taskq_state
        return state is not None and state.settings.internal_task_events

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: Any = None, **options: Any
    ) -> Any:
        """Send the task to its own queue (if the app declares it), without a ``task-sent``
        event unless internal task events are on."""
        queue = own_queue(self.app, self.name)
        if queue is not None:
            options.setdefault("queue", queue)
        if not self.send_events:
            options.setdefault("event_dispatcher", NO_SENT_EVENT)
        return super().apply_async(args, kwargs, task_id, **options)


def register_tasks(app: Celery, state: TaskqCelery) -> None:
    """Register the OnProcess, OnCreateTaskRunners and runner tasks on ``app`` only."""
    base = type("TaskqInternalTask", (InternalTask,), {"taskq_state": state})

    # shared=False: the tasks belong to this app only, not to every app the process creates.
    @app.task(name=PROCESS_TASK, base=base, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def process_task() -> str:
        """OnProcess: time out dead runners, create due runs, send runners for them; prune the
        SQL broker."""
        settings = state.settings
        if not state.service.claim_beat_tick("process", settings.process_interval):
            logger.debug("OnProcess: %s", DUPLICATE_TICK, extra={"action": "tick_skipped"})
            return DUPLICATE_TICK
        report = on_process(state.service)
        if app.conf.broker_transport == TRANSPORT_PATH:
            prune_sql_broker(str(app.conf.broker_url))
        sent = 0
        if report.tasks_given_runs or report.timed_out_runners:
            sent = send_runners(app, state, state.service)
        summary = (
            f"timed out {len(report.timed_out_runners)}; runs created {report.tasks_given_runs}; "
            f"runner tasks sent {sent}"
        )
        if report.pruned.total:
            summary += f"; pruned {report.pruned.summary()}"
        level = (
            logging.INFO
            if report.timed_out_runners or report.tasks_given_runs or report.pruned.total
            else logging.DEBUG
        )
        logger.log(level, "OnProcess: %s", summary, extra={"action": "on_process"})
        return summary

    @app.task(name=CREATE_RUNNERS_TASK, base=base, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def create_runners_task() -> str:
        """OnCreateTaskRunners: send a runner task for each scheduled run that needs one."""
        settings = state.settings
        if not settings.handler_runners:
            logger.debug("OnCreateTaskRunners: %s", AUDIT_ONLY, extra={"action": "audit_only"})
            return AUDIT_ONLY
        if not state.service.claim_beat_tick("create_runners", settings.create_runners_interval):
            logger.debug(
                "OnCreateTaskRunners: %s", DUPLICATE_TICK, extra={"action": "tick_skipped"}
            )
            return DUPLICATE_TICK
        sent = send_runners(app, state, state.service)
        return f"runner tasks sent: {sent}"

    @app.task(name=RUNNER_TASK, base=base, bind=True, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def runner_task(self: Any, queue: str | None = None) -> str:
        """Register this worker process as a task runner and work the queue until it is empty.

        Sent for a named ``queue`` it serves that queue only; without one, every queue."""
        settings = state.settings
        if not settings.handler_runners:
            logger.debug("runner task: %s", AUDIT_ONLY, extra={"action": "audit_only"})
            return AUDIT_ONLY
        runner = state.service.get_task_runner(
            worker_hostname=self.request.hostname,
            worker_limit=state.worker_runner_limit(),
            claim_scope=state.service.claim_scope(None if queue is None else (queue,)),
        )
        if runner is None:
            return "no runner started: a limit is reached"
        # With one pool process the runner takes turns with the app's tasks: one run, then the
        # process is handed back and a new runner task queues up behind what waits.
        takes_turns = state.worker_concurrency() == 1
        reason = runner.run(
            max_idle=settings.runner_max_idle,
            max_lifetime=settings.runner_max_lifetime,
            max_runs=1 if takes_turns else None,
            should_stop=state.stop_requested,
        )
        summary = f"runner {runner.task_runner_id} left: {reason.value}; runs: {runner.runs_done}"
        logger.log(
            logging.INFO if runner.runs_done else logging.DEBUG,
            "%s",
            summary,
            extra={"action": "runner_left", "runner_id": runner.task_runner_id},
        )
        if reason in (StopReason.MAX_RUNS, StopReason.MAX_LIFETIME, StopReason.MEMORY):
            send_runners(app, state, state.service)
        return summary


def send_runners(app: Celery, state: TaskqCelery, service: TaskQueueService) -> int:
    """Send as many runner tasks as scheduled runs want (see
    :meth:`~celery_taskq.core.overseer.QueueOverseer.runners_wanted`); return how many.

    They are shared out among the queues whose runs wait
    (:func:`~celery_taskq.core.statements.dispatch.split_by_queue`); each serves its queue and
    goes to that queue's Celery queue where the app declares one
    (:func:`~celery_taskq.celery.routing.runner_route`). None in audit-only mode. A runner
    task expires after one OnCreateTaskRunners interval: by then the next tick has judged the
    demand afresh.
    """
    settings = state.settings
    if not settings.handler_runners:
        return 0
    wanted = service.runners_wanted()
    if not wanted:
        return 0
    with service.database.transaction(read_only=True) as connection:
        shares = dispatch.split_by_queue(wanted, dispatch.waiting_by_queue(connection))
    runner_task = app.tasks[RUNNER_TASK]
    for queue, share in shares.items():
        route = runner_route(app, queue)
        options: dict[str, Any] = {} if route is None else {"queue": route}
        for _ in range(share):
            runner_task.apply_async(
                kwargs={"queue": queue}, expires=settings.create_runners_interval, **options
            )
    wanted = sum(shares.values())
    if wanted:
        logger.info(
            "sent %s runner tasks for scheduled runs",
            wanted,
            extra={"action": "runners_sent", "count": wanted},
        )
    return wanted


def runner_request_hook(app: Celery, state: TaskqCelery) -> api.EnqueueHook:
    """The enqueue hook of :func:`~celery_taskq.celery.install.install`: ask for runners when
    a due task was queued and no idle runner will take it."""
    last_check = [float("-inf")]

    def request_runner(service: TaskQueueService, task_id: int, due: bool) -> None:
        """Send the runner tasks a due task wants.

        The demand is judged at most once per RUNNER_REQUEST_MIN_INTERVAL: a count per
        enqueue() would double its cost while runners are busy.
        """
        now = time.monotonic()
        if not due or now - last_check[0] < RUNNER_REQUEST_MIN_INTERVAL:
            return
        last_check[0] = now
        send_runners(app, state, service)

    return request_runner
