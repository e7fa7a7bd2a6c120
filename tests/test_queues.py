"""Named queues and priorities of handler runs: stored at every way in, copied onto every run
the task gets, and refused with a clear message when they cannot be (on both databases)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from celery_taskq import TaskSpec
from celery_taskq.cli import main
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import tasks
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from tests.conftest import FakeClock
from tests.helpers import count, runs_of, task_row
from tests.web_support import TOKEN, web_settings

SUCCEED = "tests.handlers.Succeed"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def queue_and_priority(database: Database, task_id: int) -> list[tuple[str, int]]:
    """The task's queue and priority, then each of its runs', oldest run first."""
    task = task_row(database, task_id)
    return [(task.queue, task.priority)] + [
        (run.queue, run.priority) for run in runs_of(database, task_id)
    ]


def test_every_way_of_creating_a_run_copies_the_tasks_queue_and_priority(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    # Given tasks queued by each insert path: one statement, with a unique key, later, a batch
    single = service.add_task(SUCCEED, queue="reports", priority=5, create_run=True)
    keyed = service.add_task(SUCCEED, unique_key="k", queue="mail", priority=-3, create_run=True)
    later = service.add_task(
        SUCCEED, scheduled_on=clock() + timedelta(minutes=1), queue="late", priority=7
    )
    batch = service.add_tasks(
        [
            TaskSpec(SUCCEED, queue="bulk", priority=2),
            {"handler": SUCCEED, "queue": "bulk", "priority": 1, "unique_key": "b"},
            TaskSpec(SUCCEED),
        ],
        create_run=True,
    )
    # When the later task falls due and OnProcess gives it its run, and a task is retried
    clock.advance(120)
    with database.transaction() as connection:
        tasks.create_runs(connection, clock())
    # Then every run carries its task's queue and priority; defaults are "default" and 0
    assert queue_and_priority(database, single) == [("reports", 5)] * 2
    assert queue_and_priority(database, keyed) == [("mail", -3)] * 2
    assert queue_and_priority(database, later) == [("late", 7)] * 2
    assert queue_and_priority(database, batch[0]) == [("bulk", 2)] * 2
    assert queue_and_priority(database, batch[1]) == [("bulk", 1)] * 2
    assert queue_and_priority(database, batch[2]) == [("default", 0)] * 2
    snapshot = service.get_task(single)
    assert (snapshot.queue, snapshot.priority) == ("reports", 5)
    assert (snapshot.runs[0].queue, snapshot.runs[0].priority) == ("reports", 5)


def test_a_manual_retry_and_a_continued_run_keep_the_queue(
    service: TaskQueueService, database: Database
) -> None:
    # Given a task in queue "q" whose run has failed for good
    task_id = service.add_task(SUCCEED, max_retries=1, queue="q", priority=9, create_run=True)
    with database.transaction() as connection:
        connection.execute(
            update(TaskRun).where(TaskRun.task_queue_id == task_id).values(status=RunStatus.ERROR)
        )
        tasks.rollup_tasks(connection, [task_id])
    # When it is retried by hand
    service.retry_task(task_id)
    # Then the new run is in the task's queue, with its priority
    assert queue_and_priority(database, task_id) == [("q", 9)] * 3


BAD_QUEUES: list[tuple[Any, str]] = [
    ("", "queue must not be empty"),
    ("a" * 65, "queue must be at most 64 characters, not 65"),
    ("reports,mail", "queue 'reports,mail' may hold only ASCII letters"),
    ("ré", "queue 'ré' may hold only ASCII letters"),
    (5, "queue must be a string, not int"),
]
BAD_PRIORITIES: list[Any] = [1001, -1001, 1.5, "5", True]


def test_a_bad_queue_or_priority_is_refused_and_nothing_written(
    service: TaskQueueService, database: Database
) -> None:
    for queue, message in BAD_QUEUES:
        with pytest.raises(InvalidArgumentError, match=message):
            service.add_task(SUCCEED, queue=queue, create_run=True)
        with pytest.raises(InvalidArgumentError, match=f"task 1: {message}"):
            service.add_tasks([TaskSpec(SUCCEED), TaskSpec(SUCCEED, queue=queue)], create_run=True)
    expected = "priority must be an integer from -1000 to 1000 \\(higher runs first\\)"
    for priority in BAD_PRIORITIES:
        with pytest.raises(InvalidArgumentError, match=expected):
            service.add_task(SUCCEED, priority=priority, create_run=True)
    assert count(database, TaskQueue) == 0


def test_the_command_line_takes_a_queue_and_a_priority(
    database_url: str, database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    run: Callable[..., int] = lambda *args: main(["--database-url", database_url, *args])  # noqa: E731
    assert run("enqueue", SUCCEED, "--queue", "reports", "--priority", "5") == 0
    task_id = int(capsys.readouterr().out)
    assert queue_and_priority(database, task_id) == [("reports", 5)] * 2
    assert run("enqueue", SUCCEED, "--queue", "a b") != 0
    assert "queue 'a b' may hold only ASCII letters" in capsys.readouterr().err
    assert run("enqueue", SUCCEED, "--priority", "5000") != 0
    assert "priority must be an integer from -1000 to 1000" in capsys.readouterr().err
    assert count(database, TaskQueue) == 1


def test_the_http_api_takes_a_queue_and_a_priority(settings: Settings, database: Database) -> None:
    with TestClient(create_app(web_settings(settings))) as client:
        body = {"handler": SUCCEED, "queue": "reports", "priority": 5}
        created = client.post("/api/v1/tasks", headers=AUTH, json=body)
        assert created.status_code == 201, created.text
        task = client.get(f"/api/v1/tasks/{created.json()['task_id']}").json()
        assert (task["queue"], task["priority"]) == ("reports", 5)
        bad_queue = client.post("/api/v1/tasks", headers=AUTH, json={**body, "queue": "a/b"})
        assert bad_queue.status_code == 422
        assert "may hold only ASCII letters" in bad_queue.text
        bad_priority = client.post("/api/v1/tasks", headers=AUTH, json={**body, "priority": 1001})
        assert bad_priority.status_code == 422
        assert "priority" in bad_priority.text
    assert count(database, TaskQueue) == 1
