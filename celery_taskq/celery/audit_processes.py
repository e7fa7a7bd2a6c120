"""The runner rows of the processes that run audited native tasks, as audit operations.

A pool process registers its row with its first attempt and keeps it fresh with a heartbeat;
the row ends ``success`` when the process ends. A process that died without ending its row
(killed) has it closed by the worker: by the pool process that replaces it, and at shutdown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Connection

from celery_taskq.celery.audit_writer import AuditOp
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.heartbeat import Heartbeat
from celery_taskq.core.runner.lease import process_namespace
from celery_taskq.core.runner.liveness import current_process_start_time, process_start_time
from celery_taskq.core.statements import native


@dataclass
class ProcessRunner:
    """This process's runner row; its registration operation fills in ``id``."""

    pid: int
    id: int | None = None
    heartbeat: Heartbeat | None = None


def registration(service: TaskQueueService, worker_hostname: str) -> tuple[ProcessRunner, AuditOp]:
    """A runner for this process, and the operation that registers its row (and starts its
    heartbeat once the row exists)."""
    runner = ProcessRunner(os.getpid())
    now, hostname = service.clock(), service.settings.hostname
    create_time, namespace = current_process_start_time(), process_namespace()
    heartbeat_interval = service.settings.heartbeat_interval

    def register(connection: Connection) -> None:
        runner.id = native.register_celery_worker_process(
            connection,
            process_id=runner.pid,
            hostname=hostname,
            process_create_time=create_time,
            worker_hostname=worker_hostname,
            now=now,
            process_namespace=namespace,
        )
        # Run again after a rolled-back batch, the operation re-points the heartbeat.
        if runner.heartbeat is None:
            runner.heartbeat = Heartbeat(service.database, runner.id, heartbeat_interval)
            runner.heartbeat.start()
        runner.heartbeat.runner_id = runner.id

    return runner, register


def ending(service: TaskQueueService, runner: ProcessRunner) -> AuditOp:
    """The operation that ends ``runner``'s row (its heartbeat stops at once)."""
    if runner.heartbeat is not None:
        runner.heartbeat.stop()
    now = service.clock()

    def end(connection: Connection) -> None:
        if runner.id is not None:
            native.close_runner_process(connection, runner.id, now)

    return end


def closing_ended(
    service: TaskQueueService, worker_hostname: str, this_process: int | None = None
) -> AuditOp:
    """The operation that closes the rows of ``worker_hostname``'s processes on this host that
    ended without closing them (and the row of ``this_process``, which is ending)."""
    hostname, now = service.settings.hostname, service.clock()

    def close(connection: Connection) -> None:
        native.close_worker_processes(
            connection,
            hostname=hostname,
            worker_hostname=worker_hostname,
            alive=alive,
            now=now,
            this_process=this_process,
        )

    return close


def alive(pid: int, create_time: float | None) -> bool:
    """Whether the process with this PID (on this host) is the one that started then."""
    started = process_start_time(pid)
    if started is None:
        return False
    return create_time is None or started < 0 or abs(started - create_time) < 1.0
