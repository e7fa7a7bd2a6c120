"""The Celery layer with real processes: `celery-taskq worker --beat`, `celery beat`, brokers.

Each test runs on the embedded default (SQLite + kombu's SQL broker, no server at all) and on
PostgreSQL + Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from celery_taskq import Step
from celery_taskq.api import enqueue, enqueue_steps
from celery_taskq.celery import DUPLICATE_TICK
from celery_taskq.core.models import RunnerStatus, RunStatus, TaskRun, TaskRunner
from celery_taskq.core.storage.database import Database
from tests import registered as _registered  # noqa: F401  (registers tests.reports.send here)
from tests.celery_stack import RUNNER_LIMIT, CeleryStack
from tests.helpers import runners, runs_of, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def db(stack: CeleryStack) -> Iterator[Database]:
    database = Database(stack.database_url)
    yield database
    database.close()


def running_runner_count(database: Database) -> int:
    with database.transaction(read_only=True) as connection:
        return int(
            connection.execute(
                select(func.count())
                .select_from(TaskRunner)
                .where(TaskRunner.status == RunnerStatus.RUNNING)
            ).scalar_one()
        )


def test_enqueued_tasks_run_in_worker_processes_within_the_runner_limit(
    stack: CeleryStack, db: Database
) -> None:
    task_ids = [enqueue("tests.handlers.Talk", database_url=stack.database_url) for _ in range(20)]
    worker = stack.start_worker()
    most_runners = 0

    def all_done() -> bool:
        nonlocal most_runners
        most_runners = max(most_runners, running_runner_count(db))
        return all(
            [run.status for run in runs_of(db, task_id)] == [RunStatus.SUCCESS]
            for task_id in task_ids
        )

    wait_for(all_done, timeout=90, what="the worker to run every task")
    assert 1 <= most_runners <= RUNNER_LIMIT
    rows = {row.id: row for row in runners(db)}
    for task_id in task_ids:
        (run,) = runs_of(db, task_id)
        assert run.task_runner_id is not None
        runner = rows[run.task_runner_id]
        assert runner.process_id != worker.pid  # a pool child, not the worker's main process
        assert (runner.worker_hostname or "").startswith("worker@")
        assert run.standard_output == "python says hi\nx\n"  # captured despite Celery's redirect


def test_sigkilled_worker_child_is_reaped_and_its_task_retried(
    stack: CeleryStack, db: Database, tmp_path: Path
) -> None:
    marker = tmp_path / "hung"
    task_id = enqueue(
        "tests.handlers.HangOnce", {"marker": str(marker)}, database_url=stack.database_url
    )
    stack.start_worker()
    wait_for(marker.exists, timeout=60, what="the handler to start")
    (run,) = runs_of(db, task_id)
    runner_pid = next(row.process_id for row in runners(db) if row.id == run.task_runner_id)
    # When the pool child running the task is killed
    os.kill(runner_pid, signal.SIGKILL)
    # Then beat's OnProcess reaps it and the task is retried to success, with no human action
    wait_for(
        lambda: [r.status for r in runs_of(db, task_id)] == [RunStatus.TIMEOUT, RunStatus.SUCCESS],
        timeout=90,
        what="the timed-out task to be retried",
    )
    killed = next(
        row for row in runners(db) if row.process_id == runner_pid and row.id == run.task_runner_id
    )
    assert killed.status is RunnerStatus.TIMEOUT


def test_warm_shutdown_lets_the_current_run_finish(stack: CeleryStack, db: Database) -> None:
    task_id = enqueue("tests.handlers.Sleep", {"seconds": 2}, database_url=stack.database_url)
    worker = stack.start_worker()
    wait_for(
        lambda: runs_of(db, task_id)[0].status is RunStatus.RUNNING,
        timeout=60,
        what="the run to start",
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    (run,) = runs_of(db, task_id)
    assert run.status is RunStatus.SUCCESS
    assert {row.status for row in runners(db)} == {RunnerStatus.SUCCESS}


def test_two_beats_do_no_work_twice(stack: CeleryStack, db: Database) -> None:
    due = datetime.now(UTC) + timedelta(seconds=2)
    task_ids = [
        enqueue(
            "tests.handlers.Succeed", {"n": n}, scheduled_on=due, database_url=stack.database_url
        )
        for n in range(10)
    ]
    stack.start_worker(beat=False)
    stack.start_beat("beat-1")
    stack.start_beat("beat-2")
    wait_for(
        lambda: (
            all(r.status is RunStatus.SUCCESS for t in task_ids for r in runs_of(db, t))
            and all(runs_of(db, t) for t in task_ids)
        ),
        timeout=90,
        what="the tasks to run",
    )
    with db.transaction(read_only=True) as connection:
        per_task = set(
            connection.execute(
                select(func.count()).select_from(TaskRun).group_by(TaskRun.task_queue_id)
            ).scalars()
        )
    assert per_task == {1}
    wait_for(
        lambda: DUPLICATE_TICK in stack.log("worker.log"),
        timeout=30,
        what="a duplicate tick to be skipped",
    )


ENQUEUE_FROM_CELERY_PROCESS = """
from celery_taskq.celery import app  # installs the Celery layer, and with it enqueue's hook
from celery_taskq import enqueue
print(enqueue("tests.handlers.Succeed", {"n": 1}))
"""


def test_a_due_task_does_not_wait_for_beat(stack: CeleryStack, db: Database) -> None:
    # Given beat ticks so rare that none falls within the test
    stack.extra_env.update(TASKQ_PROCESS_INTERVAL="120", TASKQ_CREATE_RUNNERS_INTERVAL="120")
    stack.start_worker()
    wait_for(lambda: "ready." in stack.log("worker.log"), timeout=60, what="the worker to start")
    assert running_runner_count(db) == 0
    # When a process with the Celery layer enqueues a due task
    caller = subprocess.run(
        [sys.executable, "-c", ENQUEUE_FROM_CELERY_PROCESS],
        env=stack.env,
        cwd=stack.directory,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert caller.returncode == 0, caller.stderr
    task_id = int(caller.stdout.strip())
    # Then its run exists at once, a runner is asked for, and the task runs long before a tick
    wait_for(
        lambda: [r.status for r in runs_of(db, task_id)] == [RunStatus.SUCCESS],
        timeout=30,
        what="the task to run without a beat tick",
    )


def test_multi_step_resumable_and_registered_tasks_under_celery(
    stack: CeleryStack, db: Database, tmp_path: Path
) -> None:
    # Given a multi-step task, a chunked task and a registered name, queued before any worker
    log = tmp_path / "steps"
    steps_id = enqueue_steps(
        [
            Step("tests.handlers.RecordStep", {"name": "a", "log": str(log)}),
            Step("tests.handlers.RecordStep", {"name": "b", "log": str(log)}),
        ],
        database_url=stack.database_url,
    )
    items = tmp_path / "items"
    chunked_id = enqueue(
        "tests.handlers.Chunked",
        {"total": 6, "per_run": 2, "log": str(items)},
        database_url=stack.database_url,
    )
    named_id = enqueue("tests.reports.send", {"to": "ops"}, database_url=stack.database_url)
    stack.extra_env.update(TASKQ_IMPORTS="tests.registered")
    stack.start_worker()
    # Then the workers' runners run them the same way a standalone runner does
    wait_for(
        lambda: (
            [r.status for r in runs_of(db, chunked_id)] == [RunStatus.SUCCESS] * 3
            and [r.status for r in runs_of(db, steps_id)] == [RunStatus.SUCCESS]
            and [r.status for r in runs_of(db, named_id)] == [RunStatus.SUCCESS]
        ),
        timeout=90,
        what="the three tasks to finish",
    )
    assert log.read_text().split() == ["a", "b"]
    assert items.read_text().split() == [str(n) for n in range(6)]
    assert [r.checkpoint for r in runs_of(db, chunked_id)] == [{"next": 2}, {"next": 4}, None]
    assert runs_of(db, named_id)[0].results == {"sent_to": "ops"}
