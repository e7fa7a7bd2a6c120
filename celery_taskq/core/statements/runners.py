"""Statements on runner rows: registration under TaskRunnerLimit, heartbeat, end and time-out.

A runner timed out takes its ``running`` runs with it (the seed's
``task-runner:OnAfterItemUpdate``), and their tasks roll up in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import (
    Connection,
    func,
    insert,
    select,
    text,
    update,
)

from celery_taskq.core.models import (
    RUN_RUNNING_SQL,
    RUNNER_ROLE_RUNNER_SQL,
    RUNNER_RUNNING_SQL,
    RunnerRole,
    RunnerStatus,
    RunStatus,
    TaskRun,
    TaskRunner,
)
from celery_taskq.core.runner.liveness import RunnerRecord
from celery_taskq.core.statements.reserve import hand_back_orphaned_reservations
from celery_taskq.core.statements.tasks import rollup_tasks

RUNNER_REGISTRY_LOCK_KEY = 0x7461736B71
"""PostgreSQL advisory lock serialising runner registration against TaskRunnerLimit."""


def count_running_runners(connection: Connection, worker_hostname: str | None = None) -> int:
    """Runner loops in ``running`` status, on every host (or in one Celery worker)."""
    query = (
        select(func.count())
        .select_from(TaskRunner)
        .where(text(RUNNER_RUNNING_SQL), text(RUNNER_ROLE_RUNNER_SQL))
    )
    if worker_hostname is not None:
        query = query.where(TaskRunner.worker_hostname == worker_hostname)
    return int(connection.execute(query).scalar_one())


def register_runner(
    connection: Connection,
    *,
    limit: int,
    process_id: int,
    hostname: str,
    process_create_time: float | None,
    now: datetime,
    worker_hostname: str | None = None,
    worker_limit: int | None = None,
    process_namespace: str | None = None,
) -> int | None:
    """Insert a ``running`` runner row unless ``limit`` runners are already running.

    With ``worker_hostname`` the row belongs to a Celery worker, which may hold at most
    ``worker_limit`` running runners. Registrations are serialised (an advisory lock on
    PostgreSQL, the write lock on SQLite) so concurrent starters never overshoot a limit.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(RUNNER_REGISTRY_LOCK_KEY)))
    if count_running_runners(connection) >= limit:
        return None
    if (
        worker_hostname is not None
        and worker_limit is not None
        and count_running_runners(connection, worker_hostname) >= worker_limit
    ):
        return None
    return insert_runner(
        connection,
        role=RunnerRole.RUNNER,
        process_id=process_id,
        hostname=hostname,
        process_create_time=process_create_time,
        worker_hostname=worker_hostname,
        now=now,
        process_namespace=process_namespace,
    )


def insert_runner(
    connection: Connection,
    *,
    role: RunnerRole,
    process_id: int,
    hostname: str,
    process_create_time: float | None,
    worker_hostname: str | None,
    now: datetime,
    process_namespace: str | None = None,
) -> int:
    """Insert a ``running`` runner row of ``role`` and return its id (no limit is checked)."""
    return int(
        connection.execute(
            insert(TaskRunner)
            .values(
                process_id=process_id,
                hostname=hostname,
                process_create_time=process_create_time,
                process_namespace=process_namespace,
                started_on=now,
                heartbeat_on=now,
                status=RunnerStatus.RUNNING,
                worker_hostname=worker_hostname,
                role=role,
            )
            .returning(TaskRunner.id)
        ).scalar_one()
    )


def beat_heart(connection: Connection, runner_id: int, now: datetime) -> bool:
    """Refresh a runner's heartbeat; ``False`` if the runner is no longer ``running``."""
    updated = connection.execute(
        update(TaskRunner)
        .where(TaskRunner.id == runner_id, text(RUNNER_RUNNING_SQL))
        .values(heartbeat_on=now)
        .returning(TaskRunner.id)
    ).first()
    return updated is not None


def finish_runner(connection: Connection, runner_id: int, now: datetime) -> bool:
    """A runner that stops itself ends ``success`` with ``FinishedOn``; the runs it still held
    reserved are handed back (:mod:`celery_taskq.core.statements.reserve`)."""
    updated = connection.execute(
        update(TaskRunner)
        .where(TaskRunner.id == runner_id, text(RUNNER_RUNNING_SQL))
        .values(status=RunnerStatus.SUCCESS, finished_on=now)
        .returning(TaskRunner.id)
    ).first()
    if updated is None:
        return False
    hand_back_orphaned_reservations(connection)  # this runner's, and any left over
    return True


def running_runners(connection: Connection) -> list[RunnerRecord]:
    """Every runner row in ``running`` status."""
    return [
        RunnerRecord(*row)
        for row in connection.execute(
            select(
                TaskRunner.id,
                TaskRunner.process_id,
                TaskRunner.hostname,
                TaskRunner.process_create_time,
                TaskRunner.started_on,
                TaskRunner.heartbeat_on,
                TaskRunner.process_namespace,
                TaskRunner.role == RunnerRole.RUNNER,
            ).where(text(RUNNER_RUNNING_SQL))
        )
    ]


RUNNER_STOPPED_MESSAGE = "the task runner stopped while this run was running"
"""``ErrorMessage`` of a run timed out with its runner."""


def time_out_runners(
    connection: Connection,
    runner_ids: Iterable[int],
    now: datetime,
    *,
    judged: Iterable[RunnerRecord] = (),
) -> list[int]:
    """Move runners to ``timeout``; their ``running`` runs follow, and their tasks roll up.
    The runs they held reserved are handed back, without a failure.

    The seed's ``task-runner:OnAfterItemUpdate``. Returns the ids actually timed out (a runner
    that finished meanwhile is left alone). A runner in ``judged`` is timed out only if its
    heartbeat is still the one it was judged by: one that renewed its lease since is alive.
    """
    ids = set(runner_ids)
    timed_out: list[int] = []
    for record in judged:
        ids.discard(record.id)
        heartbeat = (
            TaskRunner.heartbeat_on.is_(None)
            if record.heartbeat_on is None
            else TaskRunner.heartbeat_on == record.heartbeat_on
        )
        timed_out.extend(
            connection.execute(
                update(TaskRunner)
                .where(TaskRunner.id == record.id, text(RUNNER_RUNNING_SQL), heartbeat)
                .values(status=RunnerStatus.TIMEOUT, finished_on=now)
                .returning(TaskRunner.id)
            ).scalars()
        )
    if ids:
        timed_out.extend(
            connection.execute(
                update(TaskRunner)
                .where(TaskRunner.id.in_(sorted(ids)), text(RUNNER_RUNNING_SQL))
                .values(status=RunnerStatus.TIMEOUT, finished_on=now)
                .returning(TaskRunner.id)
            ).scalars()
        )
    if not timed_out:
        return []
    # Reserved runs never started as far as the database knows: no failure is counted, but
    # they are marked, so that the one that may have killed the runner is started the strict
    # way next time.
    hand_back_orphaned_reservations(connection, lost=True)
    task_ids = connection.execute(
        update(TaskRun)
        .where(TaskRun.task_runner_id.in_(timed_out), text(RUN_RUNNING_SQL))
        .values(
            status=RunStatus.TIMEOUT,
            finished_on=now,
            error_message=RUNNER_STOPPED_MESSAGE,
        )
        .returning(TaskRun.task_queue_id)
    ).scalars()
    rollup_tasks(connection, task_ids)
    return sorted(timed_out)
