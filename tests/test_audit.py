"""Audit of plain Celery tasks: a real worker of a plain app, callers in their own process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from celery_taskq.core.models import RunnerRole, RunnerStatus, RunStatus, TaskQueue
from celery_taskq.core.storage.database import Database
from tests.celery_stack import CeleryStack
from tests.helpers import runners, runs_of, task_row, wait_for

pytestmark = pytest.mark.slow

CALLER = """
import json
from tests.native_app import add, fail, flaky
added = add.apply_async((2, 3), headers={"taskq_queued_by": "user-7"})
failed = fail.delay()
retried = flaky.delay()
out = {"add": added.get(timeout=60), "ids": [added.id, failed.id, retried.id]}
try:
    failed.get(timeout=60)
except KeyError:
    out["fail"] = "raised KeyError"
out["flaky"] = retried.get(timeout=60)
print(json.dumps(out))
"""


def audited_task(database: Database, celery_task_id: str) -> int:
    from celery_taskq.core.models import TaskRun

    with database.transaction(read_only=True) as connection:
        task_id = connection.execute(
            select(TaskRun.task_queue_id).where(TaskRun.celery_task_id == celery_task_id)
        ).scalar()
    assert task_id is not None, f"no run recorded for Celery task {celery_task_id}"
    return int(task_id)


def closed_runs(database: Database, celery_task_id: str) -> int:
    from celery_taskq.core.models import TaskRun

    with database.transaction(read_only=True) as connection:
        return int(
            connection.execute(
                select(func.count()).where(
                    TaskRun.celery_task_id == celery_task_id, TaskRun.finished_on.is_not(None)
                )
            ).scalar_one()
        )


def test_plain_tasks_are_audited_and_results_still_work(stack: CeleryStack) -> None:
    if stack.broker_url.startswith("sqla+"):
        backend = f"db+sqlite:///{stack.directory / 'results.db'}"
    else:
        backend = stack.broker_url
    stack.extra_env.update(NATIVE_BROKER_URL=stack.broker_url, NATIVE_RESULT_BACKEND=backend)
    worker = stack.start(
        "-m",
        "celery",
        "-A",
        "tests.native_app",
        "worker",
        "--concurrency",
        "2",
        "--loglevel",
        "INFO",
        "--hostname",
        "native@%h",
        log_name="native-worker.log",
    )
    # When a separate process calls the tasks and waits for their results
    caller = subprocess.run(
        [sys.executable, "-c", CALLER],
        env=stack.env,
        cwd=stack.directory,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert caller.returncode == 0, caller.stderr + stack.log("native-worker.log")[-3000:]
    out = json.loads(caller.stdout.strip().splitlines()[-1])
    # Then the callers got normal results
    assert (out["add"], out["fail"], out["flaky"]) == (5, "raised KeyError", "third time lucky")

    database = Database(stack.database_url)
    try:
        # (the audit writes behind the tasks: wait until each has its closed runs)
        for celery_id, runs in zip(out["ids"], (1, 1, 3), strict=True):
            wait_for(lambda: closed_runs(database, celery_id) == runs, what=celery_id)  # noqa: B023
        add_id, fail_id, flaky_id = (audited_task(database, celery_id) for celery_id in out["ids"])
        worker_rows = {row.id: row for row in runners(database)}

        # And each task has one TaskQueue row with what was queued, by whom
        added = task_row(database, add_id)
        assert added.task_handler_class == "celery:native.add"
        assert added.task_data == {"args": [2, 3], "kwargs": {}}
        assert added.queued_by_id == "user-7"
        assert added.last_status is RunStatus.SUCCESS
        (run,) = runs_of(database, add_id)
        assert (run.status, run.results, run.celery_task_id) == (
            RunStatus.SUCCESS,
            5,
            out["ids"][0],
        )
        assert run.standard_output == "adding 2 and 3\n"
        assert run.task_runner_id is not None
        runner = worker_rows[run.task_runner_id]
        assert runner.role is RunnerRole.CELERY_WORKER
        assert runner.process_id != worker.pid
        assert (runner.worker_hostname or "").startswith("native@")

        (failure,) = runs_of(database, fail_id)
        assert (failure.status, failure.error_code) == (RunStatus.ERROR, "KeyError")
        assert failure.error_message == "'missing thing'"
        assert "about to fail" in (failure.error_output or "")
        assert "Traceback" in (failure.error_output or "")

        # And Celery's own retries are further runs of the same task
        attempts = runs_of(database, flaky_id)
        assert [a.status for a in attempts] == [RunStatus.ERROR, RunStatus.ERROR, RunStatus.SUCCESS]
        assert [a.error_code for a in attempts] == ["ConnectionError", "ConnectionError", None]
        assert [a.standard_output for a in attempts] == [
            "attempt 1\n",
            "attempt 2\n",
            "attempt 3\n",
        ]
        assert {a.celery_task_id for a in attempts} == {out["ids"][2]}
        assert task_row(database, flaky_id).task_runs_failed == 0

        # And OnProcess never schedules runs of native tasks itself
        tick = subprocess.run(
            [sys.executable, "-m", "celery_taskq", "process"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "tasks given a run: 0" in tick.stdout, tick.stderr
        with database.transaction(read_only=True) as connection:
            native = (
                connection.execute(
                    select(TaskQueue.id).where(TaskQueue.task_handler_class.like("celery:%"))
                )
                .scalars()
                .all()
            )
        assert sorted(native) == sorted([add_id, fail_id, flaky_id])

        # And when the worker stops (no beat runs), its processes' runner rows end success
        stack.stop_all()
        assert worker.returncode == 0
        assert {
            row.status for row in runners(database) if row.role is RunnerRole.CELERY_WORKER
        } == {RunnerStatus.SUCCESS}
    finally:
        database.close()
