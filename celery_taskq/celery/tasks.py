"""The Celery tasks celery_taskq adds to an app: the beat-driven events (OnProcess,
OnCreateTaskRunners), the runner task, and the hook with which ``enqueue()`` asks for a runner.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from celery_taskq import api
from celery_taskq.celery.broker import TRANSPORT_PATH, prune_sql_broker
from celery_taskq.celery.routing import (
    CREATE_RUNNERS_TASK,
    PROCESS_TASK,
    RUNNER_TASK,
    RUNNERS_QUEUE,
)
from celery_taskq.celery.state import TaskqCelery
from celery_taskq.core.overseer import on_process
from celery_taskq.core.queue import TaskQueueService

DUPLICATE_TICK = "skipped: this tick already ran"
"""Result of an event task whose tick another beat already carried out."""


def register_tasks(app: Celery, state: TaskqCelery) -> None:
    """Register the OnProcess, OnCreateTaskRunners and runner tasks on ``app`` only."""
    settings = state.settings

    # shared=False: the tasks belong to this app only, not to every app the process creates.
    @app.task(name=PROCESS_TASK, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def process_task() -> str:
        """OnProcess: time out dead runners, create due runs; prune the SQL broker."""
        if not state.service.claim_beat_tick("process", settings.process_interval):
            return DUPLICATE_TICK
        report = on_process(state.service)
        if app.conf.broker_transport == TRANSPORT_PATH:
            prune_sql_broker(str(app.conf.broker_url))
        return f"timed out {len(report.timed_out_runners)}; runs created {report.tasks_given_runs}"

    @app.task(name=CREATE_RUNNERS_TASK, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def create_runners_task() -> str:
        """OnCreateTaskRunners: send one runner task per missing runner."""
        if not state.service.claim_beat_tick("create_runners", settings.create_runners_interval):
            return DUPLICATE_TICK
        missing = state.service.get_missing_task_runner_count()
        for _ in range(missing):
            runner_task.apply_async(expires=settings.create_runners_interval * 2)
        return f"runner tasks sent: {missing}"

    @app.task(name=RUNNER_TASK, bind=True, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def runner_task(self: Any) -> str:
        """Register this worker process as a task runner and work the queue until it may leave."""
        runner = state.service.get_task_runner(
            worker_hostname=self.request.hostname, worker_limit=state.worker_runner_limit()
        )
        if runner is None:
            return "no runner started: a limit is reached"
        reason = runner.run(
            max_idle=settings.runner_max_idle,
            max_lifetime=settings.runner_max_lifetime,
            should_stop=state.stop_requested,
        )
        return f"runner {runner.task_runner_id} left: {reason.value}; runs: {runner.runs_done}"


RUNNER_REQUEST_MIN_INTERVAL = 1.0
"""Seconds between two runner requests made by enqueue() in one process."""


def runner_request_hook(app: Celery, state: TaskqCelery) -> api.EnqueueHook:
    """The enqueue hook of :func:`~celery_taskq.celery.install.install`: ask for a runner task
    when a due task is queued and no runner is live."""
    last_check = [float("-inf")]

    def request_runner(service: TaskQueueService, task_id: int, due: bool) -> None:
        """Ask for a runner when a due task was queued and no runner is live.

        Runners are counted at most once per RUNNER_REQUEST_MIN_INTERVAL: a count per
        enqueue() would double its cost while runners are busy.
        """
        now = time.monotonic()
        if not due or now - last_check[0] < RUNNER_REQUEST_MIN_INTERVAL:
            return
        last_check[0] = now
        if service.get_task_runner_count() == 0:
            app.send_task(RUNNER_TASK, queue=RUNNERS_QUEUE, expires=state.settings.runner_max_idle)

    return request_runner
