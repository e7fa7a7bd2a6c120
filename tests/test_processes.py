"""Real runner processes: SIGKILL, SIGTERM, and three runners draining one queue."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from celery_taskq.core.models import RunnerStatus, RunStatus, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.storage.database import Database
from tests.helpers import cli, count, runners, runs_of, start_runner, task_row, wait_for

pytestmark = pytest.mark.slow


def test_sigkilled_runner_is_timed_out_and_the_task_retried(
    live: TaskQueueService,
    database: Database,
    subprocess_env: dict[str, str],
    spawn: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    task_id = live.add_task("tests.handlers.HangOnce", {"marker": str(tmp_path / "marker")})
    live.process_queue()
    runner = start_runner(spawn, subprocess_env)
    wait_for(lambda: (tmp_path / "marker").exists(), what="the handler to start")
    # When the runner is killed mid-run
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(timeout=30)
    result = cli(subprocess_env, "process")
    assert result.returncode == 0, result.stderr
    assert "timed out runners: 1" in result.stdout
    # Then the runner and its run are timed out and the failure is rolled up
    (runner_row,) = runners(database)
    assert runner_row.status is RunnerStatus.TIMEOUT
    first_run = runs_of(database, task_id)[0]
    assert first_run.status is RunStatus.TIMEOUT
    assert task_row(database, task_id).task_runs_failed == 1
    # And the next cycle runs the task to success (process above already created the run)
    assert cli(subprocess_env, "runner", "--burst").returncode == 0
    runs = runs_of(database, task_id)
    assert [run.status for run in runs] == [RunStatus.TIMEOUT, RunStatus.SUCCESS]
    row = task_row(database, task_id)
    assert (row.last_status, row.task_runs_failed) == (RunStatus.SUCCESS, 0)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stop_signal_lets_the_current_run_finish(
    stop_signal: signal.Signals,
    live: TaskQueueService,
    database: Database,
    subprocess_env: dict[str, str],
    spawn: list[subprocess.Popen[str]],
) -> None:
    slow = live.add_task("tests.handlers.Sleep", {"seconds": 1.5})
    waiting = live.add_task("tests.handlers.Succeed")
    live.process_queue()
    runner = start_runner(spawn, subprocess_env)
    wait_for(
        lambda: runs_of(database, slow)[0].status is RunStatus.RUNNING, what="the run to start"
    )
    runner.send_signal(stop_signal)
    stdout, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 0, stderr
    assert "stop requested" in stdout
    (run,) = runs_of(database, slow)
    assert run.status is RunStatus.SUCCESS
    assert run.standard_output == "sleeping\n"
    assert runs_of(database, waiting)[0].status is RunStatus.SCHEDULED
    (runner_row,) = runners(database)
    assert runner_row.status is RunnerStatus.SUCCESS
    assert runner_row.finished_on is not None
    assert runner_row.process_id == runner.pid


def test_three_runners_drain_300_tasks_each_run_once(
    live: TaskQueueService,
    database: Database,
    subprocess_env: dict[str, str],
    spawn: list[subprocess.Popen[str]],
) -> None:
    # Each run takes 20 ms, so one runner alone would need 6 s: longer than the others take to
    # start, however fast the claim gets.
    for number in range(300):
        live.add_task("tests.handlers.Sleep", {"seconds": 0.02, "n": number})
    assert live.create_missing_task_runs() == 300
    children = [start_runner(spawn, subprocess_env, "--burst") for _ in range(3)]
    for child in children:
        _, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, stderr
    with database.transaction(read_only=True) as connection:
        per_task = connection.execute(
            select(TaskRun.task_queue_id, func.count()).group_by(TaskRun.task_queue_id)
        ).all()
        statuses = set(connection.execute(select(TaskRun.status)).scalars())
        runner_ids = set(connection.execute(select(TaskRun.task_runner_id)).scalars())
    assert len(per_task) == 300
    assert {runs for _, runs in per_task} == {1}
    assert statuses == {RunStatus.SUCCESS}
    assert len(runner_ids) >= 2  # the work really was shared
    assert count(database, TaskRun) == 300
    assert {row.status for row in runners(database)} == {RunnerStatus.SUCCESS}


def test_child_process_output_of_a_real_runner(
    live: TaskQueueService, database: Database, subprocess_env: dict[str, str]
) -> None:
    task_id = live.add_task("tests.handlers.Talk")
    live.process_queue()
    result = cli(subprocess_env, "runner", "--burst")
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(database, task_id)
    assert "x\n" in (run.standard_output or "")
    assert "child-err\n" in (run.error_output or "")
