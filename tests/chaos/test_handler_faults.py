"""Handlers that misbehave: floods of output, binary bytes, grandchildren, a process that exits
under the runner, hangs past the time limit, and a leak past the memory limit."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from celery_taskq.api import enqueue
from celery_taskq.core.models import RunnerStatus, RunStatus
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.capture import TRUNCATION_MARKER
from celery_taskq.core.runner.liveness import (
    PROCESS_START_TOLERANCE_SECONDS as PROCESS_START_TOLERANCE,
)
from celery_taskq.core.runner.time_limit import (
    TIME_LIMIT_CODE,
    UNSTOPPABLE_EXIT_CODE,
    effective_limit,
)
from celery_taskq.core.settings import DEFAULT_OUTPUT_CAP_BYTES, Settings
from celery_taskq.core.storage.database import Database
from tests.celery_stack import CeleryStack
from tests.conftest import FakeClock
from tests.fault_handlers import MEGABYTE
from tests.helpers import cli, drive, runners, runs_of, start_runner, task_row, wait_for

FAULTS = "tests.fault_handlers."


# -- output --------------------------------------------------------------------------------


def test_50_mb_of_stdout_is_capped_and_marked_and_the_runner_goes_on(
    service: TaskQueueService, database: Database
) -> None:
    flood = service.add_task(FAULTS + "FloodStdout", {"megabytes": 50})
    after = service.add_task("tests.handlers.Succeed", {"n": 1})
    drive(service)
    (run,) = runs_of(database, flood)
    assert run.status is RunStatus.SUCCESS
    assert run.results == {"written": 50 * MEGABYTE}
    output = run.standard_output or ""
    marker = TRUNCATION_MARKER.format(omitted=50 * MEGABYTE - DEFAULT_OUTPUT_CAP_BYTES)
    assert output.endswith(marker)
    assert len(output) == DEFAULT_OUTPUT_CAP_BYTES + len(marker)
    (next_run,) = runs_of(database, after)
    assert next_run.status is RunStatus.SUCCESS
    assert next_run.task_runner_id == run.task_runner_id  # the same runner went on


def test_binary_output_is_stored_readably(service: TaskQueueService, database: Database) -> None:
    task_id = service.add_task(FAULTS + "BinaryOutput")
    drive(service)
    (run,) = runs_of(database, task_id)
    assert run.status is RunStatus.SUCCESS
    # Each byte that is not UTF-8, and the NUL, shows as U+FFFD; the text around is kept.
    assert run.standard_output == "text \ufffd\ufffd\ufffd more \ufffd( end\n"
    assert run.error_output == "\ufffd\ufffd err\n"


def test_output_of_a_grandchild_process_is_captured(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task(FAULTS + "Grandchild")
    drive(service)
    (run,) = runs_of(database, task_id)
    assert run.status is RunStatus.SUCCESS
    assert run.standard_output == "grandchild out\n"
    assert run.error_output == "grandchild err\n"


# -- a handler that ends its process -------------------------------------------------------


@pytest.mark.slow
def test_os_exit_in_a_handler_is_timed_out_by_the_overseer_and_retried(
    live: TaskQueueService,
    database: Database,
    subprocess_env: dict[str, str],
    spawn: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    task_id = live.add_task(FAULTS + "ExitOnce", {"marker": str(tmp_path / "marker")})
    live.process_queue()
    runner = start_runner(spawn, subprocess_env)
    assert runner.wait(timeout=60) == 3
    assert runs_of(database, task_id)[0].status is RunStatus.RUNNING  # until the overseer looks
    result = cli(subprocess_env, "process")
    assert result.returncode == 0, result.stderr
    assert "timed out runners: 1" in result.stdout
    (runner_row,) = runners(database)
    assert runner_row.status is RunnerStatus.TIMEOUT
    first = runs_of(database, task_id)[0]
    assert first.status is RunStatus.TIMEOUT
    assert first.finished_on is not None
    assert cli(subprocess_env, "runner", "--burst").returncode == 0
    assert [run.status for run in runs_of(database, task_id)] == [
        RunStatus.TIMEOUT,
        RunStatus.SUCCESS,
    ]
    row = task_row(database, task_id)
    assert (row.last_status, row.task_runs_failed) == (RunStatus.SUCCESS, 0)


# -- the time limit ------------------------------------------------------------------------


def test_effective_limit_prefers_the_handler_and_zero_means_none() -> None:
    assert effective_limit(None, 0.0) is None
    assert effective_limit(None, 30.0) == 30.0
    assert effective_limit(2.5, 30.0) == 2.5
    assert effective_limit(0, 30.0) is None


@pytest.mark.parametrize("handler", ["HangSleep", "HangBusy"])
def test_a_hanging_handler_is_stopped_at_its_time_limit(
    handler: str, service: TaskQueueService, database: Database
) -> None:
    hung = service.add_task(FAULTS + handler, max_retries=1)
    after = service.add_task("tests.handlers.Succeed", {"n": 2})
    drive(service)
    (run,) = runs_of(database, hung)
    assert run.status is RunStatus.TIMEOUT
    assert run.error_code == TIME_LIMIT_CODE
    assert run.error_message == "the run exceeded its time limit of 0.5 s"
    assert (run.standard_output or "").startswith("before ")  # the output so far is kept
    assert "RunTimeLimitExceeded" in (run.error_output or "")  # where it was stopped
    assert run.results is None
    row = task_row(database, hung)
    assert (row.last_status, row.task_runs_failed) == (RunStatus.TIMEOUT, 1)
    (next_run,) = runs_of(database, after)
    assert next_run.status is RunStatus.SUCCESS
    assert next_run.task_runner_id == run.task_runner_id


def test_a_timed_out_task_is_retried(service: TaskQueueService, database: Database) -> None:
    task_id = service.add_task(FAULTS + "HangSleep", max_retries=2)
    drive(service, cycles=2)
    assert [run.status for run in runs_of(database, task_id)] == [RunStatus.TIMEOUT] * 2
    assert [run.percents_completed for run in runs_of(database, task_id)] == [30, 30]
    row = task_row(database, task_id)
    assert (row.last_status, row.task_runs_failed) == (RunStatus.TIMEOUT, 2)
    drive(service)  # out of retries: no third run
    assert len(runs_of(database, task_id)) == 2


def test_a_handler_that_swallows_the_stop_still_ends_timeout(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task(FAULTS + "SwallowAndReturn")
    drive(service)
    (run,) = runs_of(database, task_id)
    assert run.status is RunStatus.TIMEOUT
    assert run.error_code == TIME_LIMIT_CODE
    assert run.results is None


def test_the_configured_limit_applies_and_a_handler_may_switch_it_off(
    database: Database, settings: Settings, clock: FakeClock
) -> None:
    service = TaskQueueService(database, replace(settings, run_time_limit=0.2), clock=clock)
    limited = service.add_task(FAULTS + "SleepFor", {"seconds": 30})
    unlimited = service.add_task(FAULTS + "SleepWithoutLimit", {"seconds": 0.4})
    drive(service)
    (limited_run,) = runs_of(database, limited)
    assert limited_run.status is RunStatus.TIMEOUT
    assert limited_run.error_message == "the run exceeded its time limit of 0.2 s"
    (unlimited_run,) = runs_of(database, unlimited)
    assert unlimited_run.status is RunStatus.SUCCESS


def test_a_busy_handler_in_a_runner_thread_is_stopped(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task(FAULTS + "HangBusy", max_retries=1)
    service.process_queue()
    runner = service.get_task_runner()
    assert runner is not None
    worker = threading.Thread(target=lambda: runner.run(burst=True))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    (run,) = runs_of(database, task_id)
    assert run.status is RunStatus.TIMEOUT
    assert run.error_code == TIME_LIMIT_CODE


@pytest.mark.slow
def test_an_unstoppable_handler_is_recorded_and_its_runner_process_replaced(
    live: TaskQueueService,
    database: Database,
    subprocess_env: dict[str, str],
    spawn: list[subprocess.Popen[str]],
) -> None:
    stuck = live.add_task(FAULTS + "Unstoppable", max_retries=1)
    after = live.add_task("tests.handlers.Succeed", {"n": 3})
    live.process_queue()
    env = {**subprocess_env, "TASKQ_RUN_TIME_LIMIT_GRACE": "0.5"}
    runner = start_runner(spawn, env)
    assert runner.wait(timeout=60) == UNSTOPPABLE_EXIT_CODE
    (run,) = runs_of(database, stuck)
    assert run.status is RunStatus.TIMEOUT
    assert run.error_code == TIME_LIMIT_CODE
    assert "did not stop within 0.5 s" in (run.error_message or "")
    assert run.standard_output == "unstoppable started\nswallowed a stop\n"
    (first_runner,) = runners(database)
    assert first_runner.status is RunnerStatus.TIMEOUT  # recorded before the process ended
    assert runs_of(database, after)[0].status is RunStatus.SCHEDULED
    # A replacement runner takes the next task; nothing is left for the overseer.
    result = cli(env, "runner", "--burst")
    assert result.returncode == 0, result.stderr
    assert runs_of(database, after)[0].status is RunStatus.SUCCESS
    assert [run.status for run in runs_of(database, stuck)] == [RunStatus.TIMEOUT]
    assert "timed out runners: 0" in cli(env, "process").stdout


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_time_limit_in_celery_worker_processes(stack: CeleryStack) -> None:
    stack.extra_env["TASKQ_RUN_TIME_LIMIT_GRACE"] = "1"
    database = Database(stack.database_url)
    try:
        hung = enqueue(FAULTS + "HangSleep", max_retries=1, database_url=stack.database_url)
        stuck = enqueue(FAULTS + "Unstoppable", max_retries=1, database_url=stack.database_url)
        stack.start_worker()

        def ended(task_id: int) -> bool:
            runs = runs_of(database, task_id)
            return bool(runs) and runs[-1].status not in (RunStatus.SCHEDULED, RunStatus.RUNNING)

        wait_for(lambda: ended(hung) and ended(stuck), timeout=90, what="both runs to end")
        for task_id in (hung, stuck):
            (run,) = runs_of(database, task_id)
            assert run.status is RunStatus.TIMEOUT
            assert run.error_code == TIME_LIMIT_CODE
        # The worker replaced the pool process the unstoppable handler took down.
        later = enqueue("tests.handlers.Succeed", {"n": 4}, database_url=stack.database_url)
        wait_for(lambda: ended(later), timeout=90, what="a later task to run")
        assert runs_of(database, later)[0].status is RunStatus.SUCCESS
        stuck_run = runs_of(database, stuck)[0]
        runner_rows = {row.id: row for row in runners(database)}
        assert stuck_run.task_runner_id is not None
        assert runner_rows[stuck_run.task_runner_id].status is RunnerStatus.TIMEOUT
    finally:
        database.close()


# -- the memory limit ----------------------------------------------------------------------


def _reap_runners(database: Database) -> None:
    """End runner processes a test's create-runners started (detached, so not our children).

    Only a PID that still names the runner's process (its start time matches the row's) is
    signalled: a runner that already died may have left its PID to another test's process,
    which a SIGTERM would shut down (this machine's PIDs wrap at 32,768)."""
    for row in runners(database):
        if row.status is not RunnerStatus.RUNNING or row.process_create_time is None:
            continue
        try:
            process = psutil.Process(row.process_id)
            if abs(process.create_time() - row.process_create_time) > PROCESS_START_TOLERANCE:
                continue
            process.terminate()  # psutil checks again that the PID names the same process
        except psutil.NoSuchProcess:
            continue


@pytest.mark.slow
def test_memory_limit_ends_the_runner_after_a_leaking_run_and_a_new_runner_goes_on(
    live: TaskQueueService, database: Database, subprocess_env: dict[str, str]
) -> None:
    leak = live.add_task(FAULTS + "Leak", {"megabytes": 300})
    later = [live.add_task("tests.handlers.Succeed", {"n": n}) for n in range(3)]
    live.process_queue()
    env = {**subprocess_env, "TASKQ_TASK_RUNNER_LIMIT": "1", "TASKQ_RUNNER_MEMORY_LIMIT_MB": "250"}
    try:
        # OnCreateTaskRunners starts one runner; it takes the leak first (FIFO)
        assert "runners started: 1" in cli(env, "create-runners", "--burst").stdout
        wait_for(
            lambda: [row.status for row in runners(database)] == [RunnerStatus.SUCCESS],
            timeout=60,
            what="the first runner to leave",
        )
        (leak_run,) = runs_of(database, leak)
        assert leak_run.status is RunStatus.SUCCESS  # the run keeps its true status
        assert leak_run.results == {"leaked_megabytes": 300}
        # It left with work still waiting, so not for --burst: for its memory
        assert all(runs_of(database, task)[0].status is RunStatus.SCHEDULED for task in later)
        # The next OnCreateTaskRunners replaces it, and the replacement works the rest
        assert "runners started: 1" in cli(env, "create-runners", "--burst").stdout
        wait_for(
            lambda: all(runs_of(database, task)[0].status is RunStatus.SUCCESS for task in later),
            timeout=60,
            what="the replacement runner to work the rest",
        )
        first, second = runners(database)
        assert {runs_of(database, task)[0].task_runner_id for task in later} == {second.id}
        assert first.process_id != second.process_id
    finally:
        _reap_runners(database)
