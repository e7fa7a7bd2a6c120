"""The fast paths: claim-ahead in the runner loop, work notices, pooled connections, bulk
enqueue and the roll-ups written without a recount (both databases; nothing here is timed)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, text

from celery_taskq import api
from celery_taskq.core.clock import utc_now
from celery_taskq.core.exceptions import StorageError
from celery_taskq.core.models import RunStatus, TaskQueue
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.loop import StopReason
from celery_taskq.core.runner.loop import TaskRunner as Runner
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import tasks
from celery_taskq.core.statements.claim import finish_success_and_claim
from celery_taskq.core.storage import database as db
from celery_taskq.core.storage.database import Database
from tests.conftest import FakeClock
from tests.helpers import runs_of, task_row

SUCCEED = "tests.handlers.Succeed"


def new_runner(service: TaskQueueService) -> Runner:
    runner = service.get_task_runner()
    assert runner is not None
    return runner


def test_the_loop_records_each_run_and_claims_the_next_in_one_transaction(
    service: TaskQueueService, database: Database
) -> None:
    ids = [service.add_task(SUCCEED, create_run=True) for _ in range(5)]
    runner = new_runner(service)
    commits = []
    event.listen(database.engine, "commit", lambda _connection: commits.append(1))
    assert runner.run(burst=True) is StopReason.BURST
    # first claim + one per run (outcome and next claim) + the empty claim that ends the burst
    # + the runner's own end; a heartbeat may add one
    assert len(commits) <= len(ids) + 4
    started = []
    for task_id in ids:
        (run,) = runs_of(database, task_id)
        assert (run.status, run.task_runner_id) == (RunStatus.SUCCESS, runner.task_runner_id)
        assert run.started_on is not None
        started.append(run.started_on)
        task = task_row(database, task_id)
        assert (task.last_status, task.task_runs_failed) == (RunStatus.SUCCESS, 0)
    assert started == sorted(started)  # FIFO


def test_the_loop_claims_no_run_it_will_not_start(
    service: TaskQueueService, database: Database
) -> None:
    first = service.add_task(SUCCEED, create_run=True)
    second = service.add_task(SUCCEED, create_run=True)
    assert new_runner(service).run(max_runs=1) is StopReason.MAX_RUNS
    assert runs_of(database, first)[0].status is RunStatus.SUCCESS
    (waiting,) = runs_of(database, second)
    assert (waiting.status, waiting.task_runner_id) == (RunStatus.SCHEDULED, None)
    assert task_row(database, second).last_status is RunStatus.SCHEDULED


def test_a_run_claimed_ahead_is_handed_back_when_the_loop_stops(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task(SUCCEED, create_run=True)
    runner = new_runner(service)
    # Given the loop claimed its next run, and then a stop was asked for before it started it
    runner._claimed_ahead = runner.get_next_task_run()
    assert task_row(database, task_id).last_status is RunStatus.RUNNING
    runner.stop()
    assert runner.run() is StopReason.STOP_REQUESTED
    # Then the run is scheduled again, as if never claimed, and another runner runs it
    (run,) = runs_of(database, task_id)
    assert (run.status, run.task_runner_id, run.started_on) == (RunStatus.SCHEDULED, None, None)
    assert task_row(database, task_id).last_status is RunStatus.SCHEDULED
    assert new_runner(service).run(burst=True) is StopReason.BURST
    assert runs_of(database, task_id)[0].status is RunStatus.SUCCESS


def test_a_work_notice_wakes_an_idle_runner_long_before_its_poll(
    database: Database, settings: Settings, clock: FakeClock, redis_url: str
) -> None:
    settings = replace(settings, pubsub_url=redis_url, poll_interval=60.0)
    service = TaskQueueService(database, settings, clock=clock)
    runner = new_runner(service)
    reasons: list[StopReason] = []
    thread = threading.Thread(target=lambda: reasons.append(runner.run(max_runs=1)))
    thread.start()
    try:
        time.sleep(0.5)  # the runner found nothing and waits for up to a minute
        task_id = service.add_task(SUCCEED)
        assert service.create_missing_task_runs() == 1  # creates the run and announces it
        thread.join(timeout=10)
        assert not thread.is_alive(), "the runner slept through the work notice"
    finally:
        runner.stop()
        thread.join(timeout=70)
    assert reasons == [StopReason.MAX_RUNS]
    assert runs_of(database, task_id)[0].status is RunStatus.SUCCESS


class RecordingNotifier:
    """Counts work notices; the rest of the notifier protocol does nothing."""

    def __init__(self) -> None:
        self.announced = 0

    def announce_work(self) -> None:
        self.announced += 1

    def publish(self, run_id: int) -> None:
        """Nothing."""


def test_enqueue_announces_due_work_only(settings: Settings) -> None:
    url = settings.database_url
    service = api.get_service(url)
    notifier = RecordingNotifier()
    service.notifier = notifier  # type: ignore[assignment]
    try:
        api.enqueue(SUCCEED, database_url=url)
        assert notifier.announced == 1
        later = service.clock() + timedelta(hours=1)
        api.enqueue(SUCCEED, scheduled_on=later, database_url=url)
        assert notifier.announced == 1
        api.enqueue_many([{"handler": SUCCEED}] * 3, database_url=url)
        assert notifier.announced == 2
    finally:
        api.close_all()


def test_enqueue_writes_the_task_and_its_first_run_ready_to_claim(settings: Settings) -> None:
    url = settings.database_url
    try:
        task_id = api.enqueue(SUCCEED, {"n": 1}, title="first", database_url=url)
        service = api.get_service(url)
        task = service.get_task(task_id)
        assert (task.last_status, task.task_runs_failed, task.task_data, task.title) == (
            RunStatus.SCHEDULED,
            0,
            {"n": 1},
            "first",
        )
        assert [run.status for run in task.runs] == [RunStatus.SCHEDULED]
        claimed = new_runner(service).get_next_task_run()
        assert claimed is not None
        assert (claimed.task_queue_id, claimed.handler, claimed.data, claimed.checkpoint) == (
            task_id,
            SUCCEED,
            {"n": 1},
            None,
        )
    finally:
        api.close_all()


def test_enqueue_many_writes_due_runs_only_and_returns_ids_in_order(settings: Settings) -> None:
    url = settings.database_url
    later = api.get_service(url).clock() + timedelta(hours=1)
    items: list[dict[str, Any]] = [
        {"handler": SUCCEED, "data": {"i": i}, "scheduled_on": later if i % 3 == 0 else None}
        for i in range(10)
    ]
    try:
        ids = api.enqueue_many(items, database_url=url)
        assert ids == sorted(ids)
        assert len(set(ids)) == 10
        service = api.get_service(url)
        for i, task_id in enumerate(ids):
            task = service.get_task(task_id)
            assert task.task_data == {"i": i}
            if i % 3 == 0:
                assert (task.last_status, task.runs) == (None, ())
            else:
                assert task.last_status is RunStatus.SCHEDULED
                assert [run.status for run in task.runs] == [RunStatus.SCHEDULED]
    finally:
        api.close_all()


def test_new_runs_roll_up_as_a_full_recount_would(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task("tests.handlers.AlwaysFail", max_retries=3, create_run=True)
    new_runner(service).run(burst=True)
    assert task_row(database, task_id).task_runs_failed == 1
    assert service.create_missing_task_runs() == 1  # the retry's run
    task = task_row(database, task_id)
    assert (task.last_status, task.task_runs_failed) == (RunStatus.SCHEDULED, 1)
    with database.transaction() as connection:
        tasks.rollup_tasks(connection, [task_id])
    recounted = task_row(database, task_id)
    assert (recounted.last_status, recounted.task_runs_failed) == (RunStatus.SCHEDULED, 1)


def test_a_forked_child_never_uses_the_parents_pooled_connection(database: Database) -> None:
    with database.transaction() as connection:  # the pool now holds a connection
        connection.execute(select(TaskQueue.id)).all()
    pid = os.fork()
    if pid == 0:  # the child: its own connection, the parent's left alone and unclosed
        code = 1
        try:
            with database.transaction() as connection:
                connection.execute(select(TaskQueue.id)).all()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with database.transaction() as connection:  # the parent's connection still works
        assert connection.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.postgresql
def test_an_idle_postgresql_connection_that_died_is_replaced(
    postgresql_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database(postgresql_schema_url)
    try:
        with database.transaction() as connection:
            backend = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        other = Database(postgresql_schema_url)
        try:
            with other.transaction() as connection:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        finally:
            other.close()
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)  # the connection counts as idle
        with database.transaction() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != backend
    finally:
        database.close()


@pytest.mark.postgresql
def test_a_refused_driver_statement_is_a_storage_error_and_writes_nothing(
    postgresql_schema_url: str,
) -> None:
    database = Database(postgresql_schema_url)
    now = utc_now()
    values = {
        "task_handler_class": SUCCEED,
        "task_data": {"kept": ["as", "json"]},
        "scheduled_on": now,
        "queued_on": now,
        "queued_by_id": None,
        "max_retries": 1,
        "task_runs_failed": 0,
        "title": None,
    }
    try:
        with database.autocommit() as connection:
            task_id = tasks.insert_due_task(connection, values)
        refused = {**values, "max_retries": 0}  # MaxRetries >= 1 is a check constraint
        with pytest.raises(StorageError, match="refused the change"), database.autocommit() as c:
            tasks.insert_due_task(c, refused)
        with database.transaction() as connection:
            rows = connection.execute(select(TaskQueue.id, TaskQueue.task_data)).all()
        assert [tuple(row) for row in rows] == [(task_id, {"kept": ["as", "json"]})]
    finally:
        database.close()


@pytest.mark.postgresql
def test_a_driver_statement_on_a_dead_connection_fails_once_and_the_next_one_reconnects(
    postgresql_schema_url: str,
) -> None:
    database = Database(postgresql_schema_url)
    try:
        with database.autocommit() as connection:
            backend = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        with database.transaction() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        values = {
            "run_id": 1,
            "runner_id": 1,
            "now": utc_now(),
            "standard_output": "",
            "error_output": "",
            "results": None,
            "percents_completed": 100,
        }
        # Handed back moments ago, the dead connection is not pinged: the statement meets it.
        with pytest.raises(StorageError, match="database error"):
            finish_success_and_claim(database, values)
        assert finish_success_and_claim(database, values) == (False, None)
    finally:
        database.close()
