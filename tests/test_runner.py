"""The runner: claim, processTaskRun, and the loop's exits (in-process, both databases)."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest

from celery_taskq.core.models import RunnerStatus, RunStatus
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.loop import StopReason
from celery_taskq.core.runner.loop import TaskRunner as Runner
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import runs
from celery_taskq.core.storage.database import Database
from tests.conftest import FakeClock
from tests.helpers import insert_task_row, runners, runs_of, task_row, wait_for


def queued(service: TaskQueueService, handler: str, data: object = None, **kwargs: object) -> int:
    task_id = service.add_task(f"tests.handlers.{handler}", data, **kwargs)  # type: ignore[arg-type]
    assert service.create_task_run(task_id) is not None
    return task_id


def new_runner(service: TaskQueueService) -> Runner:
    runner = service.get_task_runner()
    assert runner is not None
    return runner


def test_claim_is_fifo_and_marks_the_run_running(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    first = queued(service, "Succeed")
    second = queued(service, "Succeed")
    runner = new_runner(service)
    claimed = runner.get_next_task_run()
    assert claimed is not None
    assert claimed.task_queue_id == first
    (run,) = runs_of(database, first)
    assert (run.status, run.task_runner_id, run.started_on) == (
        RunStatus.RUNNING,
        runner.task_runner_id,
        clock.now,
    )
    assert task_row(database, first).last_status is RunStatus.RUNNING
    other = new_runner(service)
    claimed_next = other.get_next_task_run()
    assert claimed_next is not None
    assert claimed_next.task_queue_id == second
    assert other.get_next_task_run() is None


def test_output_results_and_success(service: TaskQueueService, database: Database) -> None:
    task_id = queued(service, "Talk")
    new_runner(service).run_once()
    (run,) = runs_of(database, task_id)
    assert run.status is RunStatus.SUCCESS
    assert run.standard_output is not None
    assert run.error_output is not None
    assert run.standard_output.splitlines() == ["python says hi", "x"]
    assert run.error_output.splitlines() == ["python complains", "child-err"]
    assert run.finished_on is not None
    assert run.percents_completed == 100
    assert (run.error_code, run.error_message, run.results) == (None, None, None)


def test_results_are_stored_as_json(service: TaskQueueService, database: Database) -> None:
    task_id = queued(service, "Succeed", {"a": [1, 2]})
    new_runner(service).run_once()
    assert runs_of(database, task_id)[0].results == {"echo": {"a": [1, 2]}}


def test_task_error_gives_code_and_message_and_keeps_progress(
    service: TaskQueueService, database: Database
) -> None:
    task_id = queued(service, "AlwaysFail")
    new_runner(service).run_once()
    (run,) = runs_of(database, task_id)
    assert (run.status, run.error_code, run.error_message) == (
        RunStatus.ERROR,
        "E_SMTP",
        "the mail server refused",
    )
    assert run.percents_completed == 40


def test_unexpected_exception_gives_type_message_and_traceback(
    service: TaskQueueService, database: Database
) -> None:
    task_id = queued(service, "Crash")
    new_runner(service).run_once()
    (run,) = runs_of(database, task_id)
    assert (run.status, run.error_code, run.error_message) == (
        RunStatus.ERROR,
        "ValueError",
        "bad value 42",
    )
    assert run.error_output is not None
    assert "Traceback (most recent call last)" in run.error_output
    assert "ValueError: bad value 42" in run.error_output


def test_result_that_is_not_json_fails_the_run(
    service: TaskQueueService, database: Database
) -> None:
    task_id = queued(service, "ReturnsSet")
    new_runner(service).run_once()
    (run,) = runs_of(database, task_id)
    assert (run.status, run.error_code) == (RunStatus.ERROR, "TypeError")
    assert "cannot be stored as JSON" in (run.error_message or "")


def insert_by_hand(database: Database, service: TaskQueueService, handler: str) -> int:
    task_id = insert_task_row(database, handler, service.clock())
    service.create_task_run(task_id)
    return task_id


def test_missing_handler_at_run_time_fails_the_run_not_the_runner(
    service: TaskQueueService, database: Database
) -> None:
    task_id = insert_by_hand(database, service, "tests.nowhere.Gone")
    later = queued(service, "Succeed")
    new_runner(service).run(burst=True)
    assert runs_of(database, task_id)[0].error_code == "HandlerModuleNotFoundError"
    assert runs_of(database, later)[0].status is RunStatus.SUCCESS


def test_allow_list_blocks_execution_of_a_row_inserted_by_hand(
    database: Database, settings: Settings, clock: FakeClock
) -> None:
    strict = TaskQueueService(
        database, replace(settings, allowed_handler_prefixes=("myapp",)), clock=clock
    )
    task_id = insert_by_hand(database, strict, "tests.handlers.Talk")
    new_runner(strict).run_once()
    (run,) = runs_of(database, task_id)
    assert (run.status, run.error_code) == (RunStatus.ERROR, "HandlerNotAllowedError")
    assert run.standard_output == ""


# -- the loop's exits ------------------------------------------------------------------------


def assert_finished_success(database: Database, runner: Runner) -> None:
    (row,) = [r for r in runners(database) if r.id == runner.task_runner_id]
    assert row.status is RunnerStatus.SUCCESS
    assert row.finished_on is not None


def test_burst_leaves_when_the_queue_is_empty(
    service: TaskQueueService, database: Database
) -> None:
    for _ in range(3):
        queued(service, "Succeed")
    runner = new_runner(service)
    assert runner.run(burst=True) is StopReason.BURST
    assert runner.runs_done == 3
    assert_finished_success(database, runner)


def test_max_runs(service: TaskQueueService, database: Database) -> None:
    ids = [queued(service, "Succeed") for _ in range(3)]
    runner = new_runner(service)
    assert runner.run(max_runs=2) is StopReason.MAX_RUNS
    assert [runs_of(database, i)[0].status for i in ids] == [
        RunStatus.SUCCESS,
        RunStatus.SUCCESS,
        RunStatus.SCHEDULED,
    ]
    assert_finished_success(database, runner)


def test_max_idle(database: Database, settings: Settings) -> None:
    real_clock_service = TaskQueueService(database, settings)
    runner = new_runner(real_clock_service)
    assert runner.run(max_idle=0.2) is StopReason.MAX_IDLE
    assert_finished_success(database, runner)


def test_outside_cli_mode_one_iteration(service: TaskQueueService, database: Database) -> None:
    ids = [queued(service, "Succeed") for _ in range(2)]
    runner = new_runner(service)
    assert runner.run(cli_mode=False) is StopReason.NOT_CLI
    assert [runs_of(database, i)[0].status for i in ids] == [RunStatus.SUCCESS, RunStatus.SCHEDULED]


def test_memory_limit(database: Database, settings: Settings, clock: FakeClock) -> None:
    tiny = TaskQueueService(database, replace(settings, runner_memory_limit_mb=1), clock=clock)
    ids = [queued(tiny, "Succeed") for _ in range(2)]
    runner = new_runner(tiny)
    assert runner.run() is StopReason.MEMORY
    assert [runs_of(database, i)[0].status for i in ids] == [RunStatus.SUCCESS, RunStatus.SCHEDULED]
    assert_finished_success(database, runner)


def test_stop_request_ends_after_the_current_run(database: Database, settings: Settings) -> None:
    live = TaskQueueService(database, settings)
    slow = queued(live, "Sleep", {"seconds": 0.5})
    waiting = queued(live, "Succeed")
    runner = new_runner(live)
    result: list[StopReason] = []
    thread = threading.Thread(target=lambda: result.append(runner.run()))
    thread.start()
    wait_for(
        lambda: runs_of(database, slow)[0].status is RunStatus.RUNNING, what="the run to start"
    )
    runner.signal_handler(15, None)
    thread.join(timeout=30)
    assert result == [StopReason.STOP_REQUESTED]
    assert runner.last_signal == 15
    assert runs_of(database, slow)[0].status is RunStatus.SUCCESS
    assert runs_of(database, waiting)[0].status is RunStatus.SCHEDULED
    assert_finished_success(database, runner)


def test_heartbeat_advances_and_progress_is_visible_mid_run(
    database: Database, settings: Settings
) -> None:
    live = TaskQueueService(database, settings)
    task_id = queued(live, "Sleep", {"seconds": 1.0})
    runner = new_runner(live)
    (registered,) = runners(database)
    thread = threading.Thread(target=lambda: runner.run(burst=True))
    thread.start()
    wait_for(lambda: runs_of(database, task_id)[0].percents_completed == 40, what="progress 40")
    first_beat = registered.heartbeat_on
    assert first_beat is not None
    wait_for(
        lambda: (runners(database)[0].heartbeat_on or first_beat) > first_beat, what="a heartbeat"
    )
    thread.join(timeout=30)
    assert runs_of(database, task_id)[0].percents_completed == 100


def test_alternating_runners_never_share_a_run(
    service: TaskQueueService, database: Database
) -> None:
    # Two runners claiming in turn from one queue never share a run.
    ids = [queued(service, "Succeed") for _ in range(10)]
    first, second = new_runner(service), new_runner(service)
    claims = []
    for _ in range(5):
        for runner in (first, second):
            claimed = runner.get_next_task_run()
            assert claimed is not None
            claims.append(claimed.run_id)
    assert len(set(claims)) == 10
    assert first.get_next_task_run() is None
    assert sorted(runs_of(database, i)[0].id for i in ids) == sorted(claims)


@pytest.mark.parametrize("handler", ["Succeed", "AlwaysFail"])
def test_final_status_and_roll_up_land_in_one_transaction(
    service: TaskQueueService, database: Database, monkeypatch: pytest.MonkeyPatch, handler: str
) -> None:
    task_id = queued(service, handler)
    runner = new_runner(service)
    claimed = runner.get_next_task_run()
    assert claimed is not None

    # Given the transaction fails after the run's final state and roll-up have been sent (a
    # success is written and rolled up by one statement on PostgreSQL, two on SQLite; a
    # failure is rolled up by rollup_tasks)
    finish_run = runs.finish_run

    def finish_then_fail(*args: Any) -> bool:
        finish_run(*args)
        raise RuntimeError("roll-up failed")

    monkeypatch.setattr("celery_taskq.core.statements.runs.finish_run", finish_then_fail)
    with pytest.raises(RuntimeError, match="roll-up failed"):
        runner.process_task_run(claimed)
    # Then neither the run's final status nor anything else of it was written
    (run,) = runs_of(database, task_id)
    assert (run.status, run.finished_on, run.standard_output) == (RunStatus.RUNNING, None, None)
    assert task_row(database, task_id).last_status is RunStatus.RUNNING
