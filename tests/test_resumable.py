"""Resumable work: Continue(checkpoint), save_checkpoint, the run's deadline, and new data
after an error (Combodo's chunked actions and ChangeActionParamsOnError)."""

from __future__ import annotations

from pathlib import Path

from celery_taskq.core.models import RunStatus
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.helpers import drive, results, runs_of, task_row


def items(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()]


def test_continue_ends_the_run_with_a_checkpoint_and_the_next_run_starts_at_once(
    service: TaskQueueService, database: Database, tmp_path: Path
) -> None:
    log = tmp_path / "items"
    task_id = service.add_task(
        "tests.handlers.Chunked", {"total": 7, "per_run": 3, "log": str(log)}, create_run=True
    )
    runner = service.get_task_runner()
    assert runner is not None
    runner.run(burst=True)  # no OnProcess tick between the chunks
    runs = runs_of(database, task_id)
    assert [run.status for run in runs] == [RunStatus.SUCCESS] * 3
    assert [run.checkpoint for run in runs] == [{"next": 3}, {"next": 6}, None]
    assert [run.results for run in runs] == [
        {"handled": [0, 3]},
        {"handled": [3, 6]},
        {"done": 7},
    ]
    assert items(log) == list(range(7))  # every item once, none lost, none repeated
    row = task_row(database, task_id)
    assert (row.last_status, row.task_runs_failed) == (RunStatus.SUCCESS, 0)


def test_an_open_chunked_task_stays_open_between_runs(
    service: TaskQueueService, database: Database, tmp_path: Path
) -> None:
    log = tmp_path / "items"
    task_id = service.add_task(
        "tests.handlers.Chunked", {"total": 4, "per_run": 2, "log": str(log)}, create_run=True
    )
    runner = service.get_task_runner()
    assert runner is not None
    assert runner.run_once()
    first, waiting = runs_of(database, task_id)
    assert (first.status, waiting.status) == (RunStatus.SUCCESS, RunStatus.SCHEDULED)
    assert first.percents_completed < 100
    assert task_row(database, task_id).last_status is RunStatus.SCHEDULED
    assert service.create_missing_task_runs() == 0  # the open run is the only one


def test_a_run_stops_at_its_deadline_and_the_task_resumes(
    database: Database, settings: Settings, tmp_path: Path
) -> None:
    # Real time here: ChunkedFast has a 0.3 s budget and each item takes 0.1 s.
    service = TaskQueueService(database, settings)
    log = tmp_path / "items"
    task_id = service.add_task(
        "tests.handlers.ChunkedFast",
        {"total": 12, "pause": 0.1, "log": str(log)},
        create_run=True,
    )
    runner = service.get_task_runner()
    assert runner is not None
    runner.run(burst=True)
    runs = runs_of(database, task_id)
    assert len(runs) >= 3
    assert all(run.status is RunStatus.SUCCESS for run in runs)
    assert runs[-1].results == {"done": 12}
    assert items(log) == list(range(12))
    for run in runs[:-1]:
        start, end = results(run)["handled"]
        assert 1 <= end - start <= 5  # the budget cut each run short, after at least one item


def test_a_saved_checkpoint_survives_a_failed_run(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task("tests.handlers.ResumeAfterCrash", max_retries=2)
    drive(service, cycles=2)
    crashed, resumed = runs_of(database, task_id)
    assert (crashed.status, crashed.checkpoint) == (RunStatus.ERROR, {"next": 2})
    assert resumed.status is RunStatus.SUCCESS
    assert resumed.results == {"resumed_from": {"next": 2}}


def test_a_cancelled_task_gets_no_continuation(
    service: TaskQueueService, database: Database, tmp_path: Path
) -> None:
    task_id = service.add_task(
        "tests.handlers.Chunked",
        {"total": 4, "per_run": 1, "log": str(tmp_path / "items")},
        create_run=True,
    )
    runner = service.get_task_runner()
    assert runner is not None
    claimed = runner.get_next_task_run()
    assert claimed is not None
    assert service.cancel_task(task_id) is True  # asked while the chunk runs
    runner.process_task_run(claimed)
    (run,) = runs_of(database, task_id)
    assert (run.status, run.checkpoint) == (RunStatus.SUCCESS, {"next": 1})
    assert service.create_missing_task_runs() == 0


def test_a_checkpoint_that_is_not_json_fails_the_run(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task("tests.handlers.ContinueWithoutJson", max_retries=1)
    drive(service)
    (run,) = runs_of(database, task_id)
    assert (run.status, run.error_code) == (RunStatus.ERROR, "TypeError")
    assert "checkpoint" in str(run.error_message)
    assert len(runs_of(database, task_id)) == 1


def test_new_data_after_an_error_is_used_by_the_retry(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task("tests.handlers.HalveBatchOnFailure", {"batch": 40})
    drive(service, cycles=3)
    runs = runs_of(database, task_id)
    assert [run.status for run in runs] == [RunStatus.ERROR, RunStatus.ERROR, RunStatus.SUCCESS]
    assert [run.error_message for run in runs[:2]] == [
        "batch of 40 is too big",
        "batch of 20 is too big",
    ]
    assert runs[2].results == {"batch": 10}
    assert task_row(database, task_id).task_data == {"batch": 10}
    assert "the task's data was changed" in str(runs[0].standard_output)


def test_new_data_the_handler_refuses_is_not_stored(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task("tests.handlers.ChangeToInvalidData", {"batch": 40}, max_retries=1)
    drive(service)
    (run,) = runs_of(database, task_id)
    assert run.status is RunStatus.ERROR
    assert task_row(database, task_id).task_data == {"batch": 40}
    assert "change_data_on_error failed; the task data is kept" in str(run.error_output)


def test_a_task_error_may_carry_results(service: TaskQueueService, database: Database) -> None:
    task_id = service.add_task("tests.handlers.FailWithResults", max_retries=1)
    drive(service)
    (run,) = runs_of(database, task_id)
    assert (run.status, run.error_code, run.results) == (
        RunStatus.ERROR,
        "E_HALF",
        {"done": 5, "of": 10},
    )
