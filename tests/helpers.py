"""Small helpers for reading the tables in assertions."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from celery_taskq.core.models import Base, TaskQueue, TaskRun, TaskRunner
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.storage.database import Database
from tests.conftest import CLI


def count(database: Database, model: type[Base]) -> int:
    """Rows in a table."""
    with database.transaction(read_only=True) as connection:
        return int(connection.execute(select(func.count()).select_from(model)).scalar_one())


def task_row(database: Database, task_id: int) -> TaskQueue:
    """A detached copy of a TaskQueue row."""
    with Session(database.engine, expire_on_commit=False) as session:
        row = session.get(TaskQueue, task_id)
        assert row is not None
        return row


def runs_of(database: Database, task_id: int) -> list[TaskRun]:
    """Runs of a task, oldest first (detached)."""
    with Session(database.engine, expire_on_commit=False) as session:
        return list(
            session.scalars(
                select(TaskRun).where(TaskRun.task_queue_id == task_id).order_by(TaskRun.id)
            )
        )


def results(run: TaskRun) -> Any:
    """A run's ``Results``, which the test expects to be there."""
    assert run.results is not None, f"run {run.id} has no results"
    return run.results


def runners(database: Database) -> list[TaskRunner]:
    """All runner rows (detached)."""
    with Session(database.engine, expire_on_commit=False) as session:
        return list(session.scalars(select(TaskRunner).order_by(TaskRunner.id)))


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def drive(service: TaskQueueService, cycles: int = 1) -> None:
    """Run OnProcess, then a runner until the queue is empty, ``cycles`` times."""
    for _ in range(cycles):
        service.process_queue()
        runner = service.get_task_runner()
        assert runner is not None
        runner.run(burst=True)


def insert_task_row(database: Database, handler: str, now: datetime) -> int:
    """A TaskQueue row written directly, bypassing every check (as a user's SQL could)."""
    with database.transaction() as connection:
        return int(
            connection.execute(
                insert(TaskQueue)
                .values(
                    task_handler_class=handler,
                    task_data={},
                    scheduled_on=now,
                    queued_on=now,
                    max_retries=1,
                    task_runs_failed=0,
                )
                .returning(TaskQueue.id)
            ).scalar_one()
        )


def start_runner(
    spawn: list[subprocess.Popen[str]], env: dict[str, str], *args: str
) -> subprocess.Popen[str]:
    """A standalone runner process (``celery-taskq runner ARGS``), reaped by ``spawn``."""
    child = subprocess.Popen(
        [*CLI, "runner", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    spawn.append(child)
    return child


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the command line in a child process to its end."""
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
