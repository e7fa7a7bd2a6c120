"""The public API functions: enqueue() and get_task()."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from celery_taskq import TaskqError, enqueue, get_task
from celery_taskq.core.exceptions import HandlerModuleNotFoundError, TaskNotFoundError
from celery_taskq.core.models import RunStatus, TaskQueue
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.helpers import count


def test_enqueue_and_get_task(database_url: str, database: Database, settings: Settings) -> None:
    service = TaskQueueService(database, settings)  # the wall clock, as enqueue() uses
    task_id = enqueue(
        "tests.handlers.Succeed",
        {"to": "a@b.c"},
        max_retries=2,
        queued_by="user-7",
        database_url=database_url,
    )
    snapshot = get_task(task_id, database_url=database_url)
    assert (snapshot.id, snapshot.task_data, snapshot.max_retries) == (task_id, {"to": "a@b.c"}, 2)
    assert snapshot.queued_by_id == "user-7"
    # A due task gets its run at once, without waiting for OnProcess
    assert [run.status for run in snapshot.runs] == [RunStatus.SCHEDULED]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.max_retries = 9  # type: ignore[misc]
    service.process_queue()
    runner = service.get_task_runner()
    assert runner is not None
    runner.run(burst=True)
    (run,) = get_task(task_id, database_url=database_url).runs
    assert (run.status, run.results) == (RunStatus.SUCCESS, {"echo": {"to": "a@b.c"}})


def test_enqueue_refusal_is_a_taskq_error_and_writes_nothing(
    database_url: str, database: Database
) -> None:
    with pytest.raises(HandlerModuleNotFoundError) as caught:
        enqueue("tests.nowhere.X", database_url=database_url)
    assert isinstance(caught.value, TaskqError)
    assert count(database, TaskQueue) == 0


def test_get_unknown_task(database_url: str) -> None:
    with pytest.raises(TaskNotFoundError, match="no task with id 12345"):
        get_task(12345, database_url=database_url)


def test_enqueue_reads_the_environment(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKQ_DATABASE_URL", database_url)
    task_id = enqueue("tests.handlers.Succeed")
    assert get_task(task_id).task_handler_class == "tests.handlers.Succeed"


def test_enqueue_of_a_future_task_creates_no_run_yet(database_url: str) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    task_id = enqueue("tests.handlers.Succeed", scheduled_on=later, database_url=database_url)
    assert get_task(task_id, database_url=database_url).runs == ()
