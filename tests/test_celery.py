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
from celery_taskq.celery import DUPLICATE_TICK, PROCESS_TASK, RUNNER_TASK
from celery_taskq.core.models import BeatTick, RunnerStatus, RunStatus, TaskRun, TaskRunner
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
    stack.start_worker(beat=False, loglevel="DEBUG")  # a skipped tick is a DEBUG line
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


ORDERED_APP = """
import os

from celery import Celery

from celery_taskq.celery import install

app = Celery("ordered")


class Config:
    broker_url = os.environ["APP_BROKER_URL"]
    broker_connection_retry_on_startup = True
    taskq_database_url = os.environ["APP_DATABASE_URL"]


def configure():
    app.config_from_object(Config)
    app.conf.update(taskq_process_interval=0.5, taskq_create_runners_interval=1.0)
    app.conf.beat_schedule = {"app.tick": {"task": "ordered.tick", "schedule": 0.5}}


if os.environ["INSTALL_FIRST"] == "1":
    install(app)
    configure()
else:
    configure()
    install(app)


@app.task(name="ordered.tick")
def tick():
    with open("app-ticks", "a") as ticks:
        ticks.write("tick\\n")
"""


@pytest.mark.parametrize("install_first", [True, False], ids=["install-first", "install-last"])
def test_install_before_or_after_the_app_configures_itself_gives_working_ticks(
    stack: CeleryStack, db: Database, install_first: bool
) -> None:
    # Given an app that calls install() before or after config_from_object, conf.update and a
    # beat_schedule assignment, and whose only celery_taskq settings are in its Celery config
    (stack.directory / "ordered.py").write_text(ORDERED_APP)
    stack.unset_env.update(name for name in stack.env if name.startswith("TASKQ_"))
    stack.extra_env.update(
        PYTHONPATH=os.pathsep.join([str(stack.directory), stack.env["PYTHONPATH"]]),
        APP_BROKER_URL=stack.broker_url,
        APP_DATABASE_URL=stack.database_url,
        INSTALL_FIRST="1" if install_first else "0",
    )
    stack.start(
        *("-m", "celery", "-A", "ordered", "worker", "-B", "-c", "2", "--loglevel", "INFO"),
        *("--schedule", str(stack.directory / "ordered-schedule")),
        log_name="ordered.log",
    )
    # When a handler task is queued in the database its config names
    task_id = enqueue("tests.handlers.Succeed", {"n": 1}, database_url=stack.database_url)
    # Then beat's ticks send a runner that runs it, the app's own beat entry runs too, ...
    wait_for(
        lambda: [r.status for r in runs_of(db, task_id)] == [RunStatus.SUCCESS],
        timeout=60,
        what=f"the task to run (see {stack.directory / 'ordered.log'})",
    )
    wait_for(
        lambda: (stack.directory / "app-ticks").exists(), timeout=30, what="the app's beat entry"
    )
    # ... and OnProcess ticks every 0.5 s, as conf.update() says: its slots are half-seconds
    with db.transaction(read_only=True) as connection:
        slots = (
            connection.execute(select(BeatTick.slot).where(BeatTick.event == "process"))
            .scalars()
            .all()
        )
    assert slots
    assert max(slots) > 1.9 * datetime.now(UTC).timestamp()
    assert "celery_taskq: " not in stack.log("ordered.log")  # no warning that anything is missing


def beat_ticks(database: Database, event: str) -> int:
    with database.transaction(read_only=True) as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(BeatTick).where(BeatTick.event == event)
            ).scalar_one()
        )


def test_runners_start_only_for_due_work_and_leave_when_the_queue_is_empty(
    stack: CeleryStack, db: Database
) -> None:
    # Given a worker whose beat ticks while nothing is due (OnCreateTaskRunners every second)
    worker = stack.start_worker()
    wait_for(lambda: beat_ticks(db, "create_runners") >= 3, timeout=60, what="three ticks")
    # Then no runner was started: every pool process stayed free for the app's tasks
    assert runners(db) == []
    # When handler work is due, runners start and run it ...
    task_ids = [
        enqueue("tests.handlers.Succeed", {"n": n}, database_url=stack.database_url)
        for n in range(4)
    ]
    wait_for(
        lambda: all([r.status for r in runs_of(db, t)] == [RunStatus.SUCCESS] for t in task_ids),
        timeout=60,
        what="the tasks to run",
    )
    # ... at most the worker's limit of them (concurrency 3 - 1) ...
    assert 1 <= len(runners(db)) <= RUNNER_LIMIT
    # ... and once the queue is empty they leave (runner_max_idle: 3 s here), with the worker
    # still up and beat still ticking, long before runner_max_lifetime.
    wait_for(
        lambda: all(row.status is RunnerStatus.SUCCESS for row in runners(db)),
        timeout=30,
        what="the idle runners to leave",
    )
    assert worker.poll() is None
    last_finish = max(r.finished_on for t in task_ids for r in runs_of(db, t) if r.finished_on)
    for row in runners(db):
        assert row.finished_on is not None
        assert (row.finished_on - last_finish).total_seconds() < 20


def test_audit_only_mode_sends_no_runner_task(stack: CeleryStack, db: Database) -> None:
    # Given audit-only mode, and a due handler task
    stack.extra_env.update(TASKQ_HANDLER_RUNNERS="false")
    task_id = enqueue("tests.handlers.Succeed", database_url=stack.database_url)
    stack.start_worker(loglevel="DEBUG")  # Celery's lines about taskq's tasks are DEBUG lines
    # When beat has ticked a while
    wait_for(lambda: beat_ticks(db, "process") >= 4, timeout=60, what="OnProcess ticks")
    # Then the run waits for a standalone runner: no runner task was sent or registered
    assert [r.status for r in runs_of(db, task_id)] == [RunStatus.SCHEDULED]
    assert runners(db) == []
    assert beat_ticks(db, "create_runners") == 0
    log = stack.log("worker.log")
    assert f"{PROCESS_TASK}[" in log  # the log shows the internal tasks it received ...
    assert f"{RUNNER_TASK}[" not in log  # ... and no runner task was among them


SEND_APP_TASK = """
from tests.native_app import add
print(add.delay(2, 3).id)
"""


def test_a_one_process_worker_takes_turns_between_handler_runs_and_the_apps_tasks(
    stack: CeleryStack, db: Database
) -> None:
    # Given a worker of one pool process, of an app with install(), and handler runs of 1 s due
    stack.extra_env.update(NATIVE_BROKER_URL=stack.broker_url)
    task_ids = [
        enqueue("tests.handlers.Sleep", {"seconds": 1}, database_url=stack.database_url)
        for _ in range(4)
    ]
    stack.start(
        *("-m", "celery", "-A", "tests.native_app", "worker", "-B", "-c", "1"),
        *("--loglevel", "INFO", "--schedule", str(stack.directory / "one-schedule")),
        log_name="one-process.log",
    )
    wait_for(
        lambda: any(r.status is RunStatus.RUNNING for t in task_ids for r in runs_of(db, t)),
        timeout=60,
        what="the first handler run to start",
    )
    # When the app's task is sent while a runner holds the only process
    caller = subprocess.run(
        [sys.executable, "-c", SEND_APP_TASK],
        env=stack.env,
        cwd=stack.directory,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert caller.returncode == 0, caller.stderr
    celery_task_id = caller.stdout.strip()
    wait_for(
        lambda: all([r.status for r in runs_of(db, t)] == [RunStatus.SUCCESS] for t in task_ids),
        timeout=90,
        what="the handler runs to finish",
    )

    def app_task_started() -> datetime | None:
        with db.transaction(read_only=True) as connection:
            return connection.execute(
                select(TaskRun.started_on).where(TaskRun.celery_task_id == celery_task_id)
            ).scalar()

    app_started = wait_for(app_task_started, timeout=60, what="the app's task to run")
    # Then the app's task ran between two handler runs, not after the queue was empty
    handler_starts = sorted(r.started_on for t in task_ids for r in runs_of(db, t) if r.started_on)
    assert app_started < handler_starts[-1], (app_started, handler_starts)
