"""Listing tasks and retrying them by hand, through the API and the command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import pytest

from celery_taskq.api import list_tasks, retry
from celery_taskq.cli import main
from celery_taskq.core.exceptions import InvalidArgumentError, TaskNotFoundError
from celery_taskq.core.models import RunStatus
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.storage.database import Database
from tests.conftest import FakeClock
from tests.helpers import drive, insert_task_row, runs_of, task_row


def test_filters_and_keyset_pages(
    service: TaskQueueService, database_url: str, clock: FakeClock
) -> None:
    ids = []
    for number in range(7):
        handler = "tests.handlers.Succeed" if number % 2 else "tests.handlers.AlwaysFail"
        ids.append(
            service.add_task(handler, {"n": number}, queued_by=f"user-{number % 3}", max_retries=1)
        )
        clock.advance(60)
    drive(service)

    # Pages of 3, newest first, each starting below the previous cursor
    first = list_tasks(limit=3, database_url=database_url)
    assert [task.id for task in first.tasks] == ids[::-1][:3]
    second = list_tasks(limit=3, before_id=first.next_before_id, database_url=database_url)
    assert [task.id for task in second.tasks] == ids[::-1][3:6]
    last = list_tasks(limit=3, before_id=second.next_before_id, database_url=database_url)
    assert ([task.id for task in last.tasks], last.next_before_id) == ([ids[0]], None)

    failed = list_tasks(status="error", database_url=database_url)
    assert {task.id for task in failed.tasks} == set(ids[0::2])
    by_handler = list_tasks(handler="tests.handlers.Succeed", database_url=database_url)
    assert {task.id for task in by_handler.tasks} == set(ids[1::2])
    by_user = list_tasks(queued_by="user-1", database_url=database_url)
    assert {task.id for task in by_user.tasks} == {ids[1], ids[4]}
    start = task_row(service.database, ids[2]).queued_on
    window = list_tasks(
        queued_since=start, queued_until=start + timedelta(minutes=2), database_url=database_url
    )
    assert {task.id for task in window.tasks} == {ids[2], ids[3]}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status": "finished"}, "unknown status 'finished'"),
        ({"limit": 0}, "limit must be an integer from 1 to 1000"),
        ({"limit": 5000}, "limit must be an integer from 1 to 1000"),
    ],
)
def test_bad_list_arguments(database_url: str, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        list_tasks(database_url=database_url, **kwargs)  # type: ignore[arg-type]


def test_retry_gives_an_exhausted_task_one_more_run(
    service: TaskQueueService, database: Database, database_url: str
) -> None:
    task_id = service.add_task("tests.handlers.AlwaysFail", max_retries=2)
    drive(service, cycles=4)
    assert len(runs_of(database, task_id)) == 2
    assert service.create_task_run(task_id) is None  # exhausted

    run_id = retry(task_id, database_url=database_url)
    assert runs_of(database, task_id)[-1].id == run_id
    assert task_row(database, task_id).last_status is RunStatus.SCHEDULED
    with pytest.raises(InvalidArgumentError, match="already has a run in progress"):
        retry(task_id, database_url=database_url)
    drive(service, cycles=3)
    # The extra run failed too: no further automatic retries
    assert [run.status for run in runs_of(database, task_id)] == [RunStatus.ERROR] * 3
    assert task_row(database, task_id).task_runs_failed == 3


def test_retry_of_unknown_or_native_tasks_is_refused(
    service: TaskQueueService, database_url: str, database: Database
) -> None:
    with pytest.raises(TaskNotFoundError):
        retry(999, database_url=database_url)

    native = insert_task_row(database, "celery:app.send", service.clock())
    with pytest.raises(InvalidArgumentError, match="native Celery task"):
        retry(native, database_url=database_url)
    assert runs_of(database, native) == []


def test_cli_list_and_retry(
    service: TaskQueueService,
    database: Database,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run: Callable[..., int] = lambda *args: main(["--database-url", database_url, *args])  # noqa: E731
    task_id = service.add_task("tests.handlers.AlwaysFail", max_retries=1, queued_by="ops")
    drive(service)
    capsys.readouterr()

    assert run("list", "--status", "error") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "ID",
        "STATUS",
        "FAILED",
        "HANDLER",
        "TITLE",
        "QUEUED",
        "DURATION",
        "BY",
    ]
    assert table[1].split()[:4] == [str(task_id), "error", "1/1", "tests.handlers.AlwaysFail"]

    assert run("list", "--json", "--queued-by", "ops") == 0
    document = json.loads(capsys.readouterr().out)
    assert [task["id"] for task in document["tasks"]] == [task_id]
    assert document["next_before_id"] is None

    assert run("list", "--status", "bogus") == 2
    assert "Invalid value for '--status'" in capsys.readouterr().err

    assert run("retry", str(task_id)) == 0
    assert int(capsys.readouterr().out) == runs_of(database, task_id)[-1].id
    assert run("retry", str(task_id)) == 1
    assert capsys.readouterr().err.strip() == f"error: task {task_id} already has a run in progress"
