"""The public API functions: enqueue() and get_task()."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from celery_taskq import TaskqError, enqueue, get_task
from celery_taskq.core.exceptions import HandlerModuleNotFoundError, TaskNotFoundError
from celery_taskq.core.models import RunStatus, TaskQueue
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import upgrade_database
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


def test_enqueue_resolves_the_environment_once_per_database_url(
    database_url: str, database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved: list[Settings] = []
    resolve = Settings.resolve

    def counting(*args: Any, **kwargs: Any) -> Settings:
        resolved.append(resolve(*args, **kwargs))
        return resolved[-1]

    monkeypatch.setattr(Settings, "resolve", counting)
    monkeypatch.setenv("TASKQ_DATABASE_URL", database_url)
    first = [enqueue("tests.handlers.Succeed") for _ in range(3)]
    assert len(resolved) == 1
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade_database(other_url)
    monkeypatch.setenv("TASKQ_DATABASE_URL", other_url)
    other = enqueue("tests.handlers.AlwaysFail")
    assert len(resolved) == 2
    assert get_task(other).task_handler_class == "tests.handlers.AlwaysFail"
    assert count(database, TaskQueue) == 3
    other_database = Database(other_url)
    try:
        assert count(other_database, TaskQueue) == 1
    finally:
        other_database.close()
    monkeypatch.setenv("TASKQ_DATABASE_URL", database_url)
    assert get_task(first[0]).task_handler_class == "tests.handlers.Succeed"
    assert len(resolved) == 2


def test_enqueue_of_a_future_task_creates_no_run_yet(database_url: str) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    task_id = enqueue("tests.handlers.Succeed", scheduled_on=later, database_url=database_url)
    assert get_task(task_id, database_url=database_url).runs == ()
