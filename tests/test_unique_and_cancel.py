"""Unique tasks (race-free on both databases) and cancellation of queued and running tasks."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from celery_taskq.api import cancel, enqueue
from celery_taskq.cli import main
from celery_taskq.core.exceptions import DuplicateTaskError, InvalidArgumentError
from celery_taskq.core.models import RunStatus, TaskQueue
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.helpers import count, drive, runs_of, task_row, wait_for


def test_unique_key_returns_the_unfinished_task(
    service: TaskQueueService, database: Database
) -> None:
    first = service.add_task("tests.handlers.Succeed", unique_key="report:7", title="Report 7")
    assert service.add_task("tests.handlers.Succeed", {"other": 1}, unique_key="report:7") == first
    with pytest.raises(DuplicateTaskError, match="not finished yet") as caught:
        service.add_task("tests.handlers.Succeed", unique_key="report:7", on_duplicate="raise")
    assert caught.value.existing_id == first
    assert service.add_task("tests.handlers.Succeed", unique_key="report:8") != first
    assert count(database, TaskQueue) == 2
    assert task_row(database, first).title == "Report 7"
    # Once the task is finished, the key is free again
    drive(service)
    assert task_row(database, first).last_status is RunStatus.SUCCESS
    with pytest.raises(InvalidArgumentError, match="has already finished"):
        service.cancel_task(first)
    again = service.add_task("tests.handlers.Succeed", unique_key="report:7")
    assert again != first


def test_a_failed_task_keeps_its_key_until_exhausted(service: TaskQueueService) -> None:
    first = service.add_task("tests.handlers.AlwaysFail", unique_key="k", max_retries=2)
    drive(service)
    assert service.add_task("tests.handlers.AlwaysFail", unique_key="k") == first  # retries left
    drive(service)
    assert service.add_task("tests.handlers.AlwaysFail", unique_key="k") != first  # exhausted


@pytest.mark.parametrize("bad", ["", "   ", "x" * 256])
def test_bad_unique_key_or_title(service: TaskQueueService, database: Database, bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="unique_key must be a non-empty string"):
        service.add_task("tests.handlers.Succeed", unique_key=bad)
    with pytest.raises(InvalidArgumentError, match="title must be a non-empty string"):
        service.add_task("tests.handlers.Succeed", title=bad)
    assert count(database, TaskQueue) == 0


RACER = """
import sys, time
from celery_taskq import enqueue
start = float(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
print(enqueue("tests.handlers.Succeed", {"racer": sys.argv[2]}, unique_key="the-one"))
"""


@pytest.mark.slow
def test_eight_processes_racing_for_one_unique_key_make_one_task(
    database: Database, subprocess_env: dict[str, str]
) -> None:
    start = time.time() + 3  # every racer is imported and waiting by then
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(start), str(number)],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for number in range(8)
    ]
    results = [racer.communicate(timeout=120) for racer in racers]
    for racer, (_, stderr) in zip(racers, results, strict=True):
        assert racer.returncode == 0, stderr
    ids = {int(stdout.strip()) for stdout, _ in results}
    assert len(ids) == 1
    assert count(database, TaskQueue) == 1


def test_cancelled_queued_task_never_runs(
    database: Database, database_url: str, settings: Settings
) -> None:
    task_id = enqueue("tests.handlers.Talk", database_url=database_url)
    assert cancel(task_id, database_url=database_url) is False
    service = TaskQueueService(database, settings)
    for _ in range(3):
        drive(service)
    (run,) = runs_of(database, task_id)
    assert (run.status, run.error_code, run.standard_output) == (RunStatus.ERROR, "cancelled", None)
    assert run.started_on is None
    assert task_row(database, task_id).cancel_requested_on is not None
    with pytest.raises(InvalidArgumentError, match="already cancelled"):
        cancel(task_id, database_url=database_url)


def test_cancelled_running_task_stops_and_ends_cancelled(
    database: Database, database_url: str, settings: Settings
) -> None:
    service = TaskQueueService(database, settings)
    task_id = enqueue("tests.handlers.WorkUntilCancelled", database_url=database_url)
    waiting = enqueue("tests.handlers.Succeed", database_url=database_url)
    runner = service.get_task_runner()
    assert runner is not None
    worker = threading.Thread(target=lambda: runner.run(burst=True))
    worker.start()
    wait_for(
        lambda: runs_of(database, task_id)[0].percents_completed > 0, what="the handler to work"
    )
    assert cancel(task_id, database_url=database_url) is True
    worker.join(timeout=30)
    assert not worker.is_alive()
    (run,) = runs_of(database, task_id)
    assert (run.status, run.error_code) == (RunStatus.ERROR, "cancelled")
    assert run.standard_output == "working\n"
    # the runner went on with the next task
    assert runs_of(database, waiting)[0].status is RunStatus.SUCCESS


def test_cli_unique_key_and_cancel(
    database_url: str, database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: str) -> int:
        return main(["--database-url", database_url, *args])

    assert (
        run("enqueue", "tests.handlers.Succeed", "--unique-key", "nightly", "--title", "Nightly")
        == 0
    )
    first = int(capsys.readouterr().out)
    assert run("enqueue", "tests.handlers.Succeed", "--unique-key", "nightly") == 0
    assert int(capsys.readouterr().out) == first
    assert run("cancel", str(first)) == 0
    assert capsys.readouterr().out.strip() == f"task {first} cancelled"
    assert run("cancel", "424242") == 1
    assert capsys.readouterr().err.strip() == "error: no task with id 424242"
    # a cancelled task frees its key
    assert run("enqueue", "tests.handlers.Succeed", "--unique-key", "nightly") == 0
    assert int(capsys.readouterr().out) != first
