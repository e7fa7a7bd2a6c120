"""Named queues and priorities of handler runs: stored at every way in, copied onto every run
the task gets, and refused with a clear message when they cannot be (on both databases)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from celery_taskq import TaskSpec, api
from celery_taskq.cli import main
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun, TaskRunner
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.outcome import RunOutcome
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import runs, tasks
from celery_taskq.core.statements.claim import (
    EVERY_QUEUE,
    ClaimScope,
    claim_next_run,
    finish_success_and_claim,
)
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
    # And a runner is refused a bad queue list before it registers
    assert run("runner", "--burst", "--queues", "a,,b") != 0
    assert "empty queue name in 'a,,b'" in capsys.readouterr().err
    assert run("runner", "--burst", "--queues", "a,b c") != 0
    assert "queue 'b c' may hold only ASCII letters" in capsys.readouterr().err
    assert count(database, TaskRunner) == 0


def test_the_http_api_takes_a_queue_and_a_priority(settings: Settings, database: Database) -> None:
    with TestClient(create_app(web_settings(settings))) as client:
        body = {"handler": SUCCEED, "queue": "reports", "priority": 5}
        created = client.post("/api/v1/tasks", headers=AUTH, json=body)
        assert created.status_code == 201, created.text
        task = client.get(f"/api/v1/tasks/{created.json()['task_id']}").json()
        assert (task["queue"], task["priority"]) == ("reports", 5)
        page = client.get(f"/tasks/{created.json()['task_id']}").text
        assert '<code id="task-queue">reports</code>' in page
        assert '<span id="task-priority">5</span>' in page
        bad_queue = client.post("/api/v1/tasks", headers=AUTH, json={**body, "queue": "a/b"})
        assert bad_queue.status_code == 422
        assert "may hold only ASCII letters" in bad_queue.text
        bad_priority = client.post("/api/v1/tasks", headers=AUTH, json={**body, "priority": 1001})
        assert bad_priority.status_code == 422
        assert "priority" in bad_priority.text
    assert count(database, TaskQueue) == 1


# -- the claim ------------------------------------------------------------------------------


def claim_all(
    service: TaskQueueService, database: Database, scope: ClaimScope = EVERY_QUEUE
) -> list[int]:
    """Claim runs one by one under one runner until none is left; the tasks' ids, in order."""
    runner = service.get_task_runner()
    assert runner is not None
    claimed_tasks: list[int] = []
    while True:
        with database.transaction() as connection:
            claimed = claim_next_run(connection, runner.task_runner_id, service.clock(), scope)
        if claimed is None:
            return claimed_tasks
        claimed_tasks.append(claimed.task_queue_id)


def test_the_claim_takes_the_highest_priority_first_then_the_oldest(
    service: TaskQueueService, database: Database
) -> None:
    # Given runs queued in an order that is neither their priority nor the reverse
    priorities = [0, 5, -2, 5, 0, 9, -2, 5]
    ids = [service.add_task(SUCCEED, priority=p, create_run=True) for p in priorities]
    # When one runner claims them all
    claimed = claim_all(service, database)
    # Then higher priorities come first, and within a priority the oldest run first
    expected = [task for _, task in sorted(zip(priorities, ids, strict=True), key=by_priority)]
    assert claimed == expected


def by_priority(item: tuple[int, int]) -> tuple[int, int]:
    """Highest priority first, then the lowest id."""
    return -item[0], item[1]


def test_a_runner_serving_some_queues_never_takes_another_queues_runs(
    service: TaskQueueService, database: Database
) -> None:
    # Given runs in queues a, b and c, and a run of c with the highest priority of all
    queued = {
        queue: [service.add_task(SUCCEED, queue=queue, create_run=True) for _ in range(3)]
        for queue in ("a", "b", "c")
    }
    urgent_c = service.add_task(SUCCEED, queue="c", priority=100, create_run=True)
    urgent_b = service.add_task(SUCCEED, queue="b", priority=1, create_run=True)
    # When a runner serving a and b claims until nothing is left for it
    claimed = claim_all(service, database, ClaimScope(queues=("a", "b")))
    # Then it took every run of a and b, by priority then FIFO, and none of c
    assert claimed == [urgent_b, *sorted(queued["a"] + queued["b"])]
    # And a runner serving c (with no queue named) takes c's, the urgent one first
    assert claim_all(service, database, ClaimScope(queues=("c",))) == [urgent_c, *queued["c"]]
    assert claim_all(service, database) == []


def test_the_fast_path_claims_by_priority_within_the_runners_queues(
    service: TaskQueueService, database: Database
) -> None:
    # Given a running run, and runs waiting in queues x (low priority) and y (high)
    first = service.add_task(SUCCEED, queue="x", create_run=True)
    low = service.add_task(SUCCEED, queue="x", priority=1, create_run=True)
    service.add_task(SUCCEED, queue="y", priority=50, create_run=True)
    high = service.add_task(SUCCEED, queue="x", priority=7, create_run=True)
    runner = service.get_task_runner(claim_scope=ClaimScope(queues=("x",)))
    assert runner is not None
    claimed = runner.get_next_task_run()
    assert claimed is not None
    assert claimed.task_queue_id == high
    # When its success is recorded with the next claim (one statement on PostgreSQL)
    values = runs.success_values(
        claimed.run_id, runner.task_runner_id, plain_success(), service.clock()
    )
    done = finish_success_and_claim(database, values, runner.claim_scope)
    if done is None:  # SQLite: the transaction path
        with database.transaction() as connection:
            assert runs.finish_run(
                connection, claimed.run_id, runner.task_runner_id, plain_success(), service.clock()
            )
            next_run = claim_next_run(
                connection, runner.task_runner_id, service.clock(), runner.claim_scope
            )
        done = (True, next_run)
    # Then the next run is x's highest priority one, not y's
    recorded, next_claimed = done
    assert recorded
    assert next_claimed is not None
    assert next_claimed.task_queue_id == low
    assert task_row(database, first).last_status == RunStatus.SCHEDULED


def plain_success() -> RunOutcome:
    """The outcome of a handler that returned nothing."""
    return RunOutcome(status=RunStatus.SUCCESS, standard_output="", error_output="")


def test_the_public_api_takes_a_queue_and_a_priority(database_url: str, database: Database) -> None:
    one = api.enqueue(SUCCEED, queue="reports", priority=5, database_url=database_url)
    many = api.enqueue_many(
        [{"handler": SUCCEED, "queue": "bulk", "priority": -1}], database_url=database_url
    )
    steps = api.enqueue_steps(
        [{"handler": SUCCEED, "settings": {}}], queue="steps", priority=2, database_url=database_url
    )
    assert queue_and_priority(database, one) == [("reports", 5)] * 2
    assert queue_and_priority(database, many[0]) == [("bulk", -1)] * 2
    assert queue_and_priority(database, steps) == [("steps", 2)] * 2
