"""The queue service: every rule of the seed's TaskQueue class, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, update

from celery_taskq.core.exceptions import (
    HandlerClassNotFoundError,
    HandlerModuleNotFoundError,
    HandlerNotAllowedError,
    InvalidArgumentError,
    InvalidTaskDataError,
    InvalidTaskError,
    NotATaskHandlerError,
)
from celery_taskq.core.models import RunnerStatus, RunStatus, TaskQueue, TaskRun, TaskRunner
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.lease import process_namespace
from celery_taskq.core.runner.liveness import current_process_start_time
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements.claim import claim_next_run
from celery_taskq.core.statements.runners import beat_heart, running_runners, time_out_runners
from celery_taskq.core.storage.database import Database
from tests.conftest import TEST_HOST, FakeClock
from tests.helpers import count, drive, runners, runs_of, task_row, wait_for

# -- addTask ---------------------------------------------------------------------------------


def test_add_task_writes_the_documented_defaults(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    task_id = service.add_task("tests.handlers.Succeed", {"to": "a@b.c"}, queued_by="user-7")
    row = task_row(database, task_id)
    assert row.task_handler_class == "tests.handlers.Succeed"
    assert row.task_data == {"to": "a@b.c"}
    assert row.queued_on == clock.now
    assert row.scheduled_on == clock.now
    assert row.queued_by_id == "user-7"
    assert row.last_status is None
    assert row.max_retries == 5
    assert row.task_runs_failed == 0


def test_times_are_stored_in_utc(service: TaskQueueService, database: Database) -> None:
    paris = datetime(2030, 6, 1, 14, 0, tzinfo=UTC).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Paris")
    )
    task_id = service.add_task("tests.handlers.Succeed", scheduled_on=paris)
    stored = task_row(database, task_id).scheduled_on
    assert stored == datetime(2030, 6, 1, 14, 0, tzinfo=UTC)
    assert stored.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("handler", "data", "kwargs", "error", "message"),
    [
        ("tests.nowhere.Succeed", {}, {}, HandlerModuleNotFoundError, "no module named"),
        ("tests.handlers.Missing", {}, {}, HandlerClassNotFoundError, "has no class"),
        ("tests.handlers.NotAHandler", {}, {}, NotATaskHandlerError, "not a subclass"),
        ("tests.handlers.Succeed", {"x": math.nan}, {}, InvalidTaskDataError, "JSON"),
        ("tests.handlers.Succeed", {"x": object()}, {}, InvalidTaskDataError, "JSON"),
        ("tests.handlers.Succeed", {1, 2}, {}, InvalidTaskDataError, "JSON"),
        ("tests.handlers.Succeed", {}, {"max_retries": 0}, InvalidArgumentError, "max_retries"),
        ("tests.handlers.Succeed", {}, {"max_retries": -1}, InvalidArgumentError, "max_retries"),
        ("tests.handlers.Succeed", {}, {"max_retries": "3"}, InvalidArgumentError, "max_retries"),
        ("tests.handlers.Succeed", {}, {"max_retries": True}, InvalidArgumentError, "max_retries"),
        (
            "tests.handlers.Succeed",
            {},
            {"scheduled_on": datetime(2030, 1, 1)},
            InvalidArgumentError,
            "timezone-aware",
        ),
        ("tests.handlers.RefuseNegative", {"n": -1}, {}, InvalidTaskError, "must not be negative"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    service: TaskQueueService,
    database: Database,
    handler: str,
    data: Any,
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        service.add_task(handler, data, **kwargs)
    assert count(database, TaskQueue) == 0


def test_allow_list_refuses_enqueue(database: Database, settings: Settings) -> None:
    strict = TaskQueueService(
        database, Settings(**{**vars(settings), "allowed_handler_prefixes": ("myapp",)})
    )
    with pytest.raises(HandlerNotAllowedError):
        strict.add_task("tests.handlers.Succeed")
    assert count(database, TaskQueue) == 0


# -- createTaskRun / createMissingTaskRuns ----------------------------------------------------


def test_create_task_run_allows_one_open_run_per_task(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task("tests.handlers.Succeed")
    first = service.create_task_run(task_id)
    assert first is not None
    assert service.create_task_run(task_id) is None
    assert [run.status for run in runs_of(database, task_id)] == [RunStatus.SCHEDULED]
    assert task_row(database, task_id).last_status is RunStatus.SCHEDULED


def test_create_task_run_respects_max_retries_and_success(
    service: TaskQueueService, database: Database
) -> None:
    exhausted = service.add_task("tests.handlers.Succeed", max_retries=2)
    done = service.add_task("tests.handlers.Succeed")
    with database.transaction() as connection:
        connection.execute(
            update(TaskQueue)
            .where(TaskQueue.id == exhausted)
            .values(last_status=RunStatus.ERROR, task_runs_failed=2)
        )
        connection.execute(
            update(TaskQueue).where(TaskQueue.id == done).values(last_status=RunStatus.SUCCESS)
        )
    assert service.create_task_run(exhausted) is None
    assert service.create_task_run(done) is None


def test_future_task_gets_no_run_before_its_time(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    task_id = service.add_task(
        "tests.handlers.Succeed", scheduled_on=clock.now + timedelta(minutes=5)
    )
    assert service.create_missing_task_runs() == 0
    clock.advance(299)
    assert service.create_missing_task_runs() == 0
    clock.advance(1)
    assert service.create_missing_task_runs() == 1
    assert len(runs_of(database, task_id)) == 1


def test_create_missing_task_runs_is_one_statement_and_idempotent(
    service: TaskQueueService, database: Database
) -> None:
    for number in range(50):
        service.add_task("tests.handlers.Succeed", {"n": number})
    inserts: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # On PostgreSQL the insert is a CTE of the statement that also rolls the tasks up
        if 'INSERT INTO "TaskRuns"' in statement:
            inserts.append(statement)

    # On PostgreSQL the statement runs in autocommit, on the autocommit engine
    engines = [database.engine]
    if database.dialect == "postgresql":
        engines.append(database._autocommitting())
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        assert service.create_missing_task_runs() == 50
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)
    assert len(inserts) == 1
    assert "SELECT" in inserts[0].upper()
    assert service.create_missing_task_runs() == 0
    assert count(database, TaskRun) == 50


def test_open_run_is_enforced_by_the_database(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task("tests.handlers.Succeed")
    service.create_task_run(task_id)
    from celery_taskq.core.exceptions import StorageError

    with pytest.raises(StorageError), database.transaction() as connection:
        connection.execute(
            insert(TaskRun).values(task_queue_id=task_id, status=RunStatus.SCHEDULED)
        )
    assert count(database, TaskRun) == 1


# -- retries, success, roll-ups (with an in-process runner) ---------------------------------


def test_always_failing_task_gets_exactly_max_retries_runs(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task("tests.handlers.AlwaysFail", max_retries=3)
    drive(service, cycles=10)
    runs = runs_of(database, task_id)
    assert [run.status for run in runs] == [RunStatus.ERROR] * 3
    row = task_row(database, task_id)
    assert row.task_runs_failed == 3
    assert row.last_status is RunStatus.ERROR
    assert service.create_task_run(task_id) is None


def test_successful_task_is_never_run_again(service: TaskQueueService, database: Database) -> None:
    task_id = service.add_task("tests.handlers.Succeed", {"k": 1})
    drive(service, cycles=5)
    runs = runs_of(database, task_id)
    assert [run.status for run in runs] == [RunStatus.SUCCESS]
    assert runs[0].results == {"echo": {"k": 1}}
    assert task_row(database, task_id).last_status is RunStatus.SUCCESS


def test_roll_up_counts_failures_and_a_success_resets_them(
    service: TaskQueueService, database: Database, tmp_path: Path
) -> None:
    task_id = service.add_task(
        "tests.handlers.FailUntilAttempt",
        {"counter_file": str(tmp_path / "counter"), "succeed_on": 3},
    )
    drive(service, cycles=1)
    assert (
        task_row(database, task_id).last_status,
        task_row(database, task_id).task_runs_failed,
    ) == (RunStatus.ERROR, 1)
    drive(service, cycles=1)
    assert task_row(database, task_id).task_runs_failed == 2
    drive(service, cycles=3)
    row = task_row(database, task_id)
    assert (row.last_status, row.task_runs_failed) == (RunStatus.SUCCESS, 0)
    assert [run.status for run in runs_of(database, task_id)] == [
        RunStatus.ERROR,
        RunStatus.ERROR,
        RunStatus.SUCCESS,
    ]


# -- runner counts, getTaskRunner, runStandalone, createMissingTaskRunners --------------------


def test_runner_counts_against_the_limit(
    database: Database, settings: Settings, clock: FakeClock
) -> None:
    limited = TaskQueueService(
        database, Settings(**{**vars(settings), "task_runner_limit": 2}), clock=clock
    )
    assert limited.get_missing_task_runner_count() == 2
    first = limited.get_task_runner()
    second = limited.get_task_runner()
    assert first is not None
    assert second is not None
    assert limited.get_task_runner_count() == 2
    assert limited.get_missing_task_runner_count() == 0
    assert limited.get_task_runner() is None
    first.run(burst=True)
    assert limited.get_missing_task_runner_count() == 1


def test_default_limit_is_eight(service: TaskQueueService) -> None:
    assert service.get_missing_task_runner_count() == 8


def test_run_standalone_works_one_iteration(service: TaskQueueService, database: Database) -> None:
    first = service.add_task("tests.handlers.Succeed")
    second = service.add_task("tests.handlers.Succeed")
    service.process_queue()
    assert service.create_missing_task_runners() == 1  # not CLI mode: runs standalone
    assert [run.status for run in runs_of(database, first)] == [RunStatus.SUCCESS]
    assert [run.status for run in runs_of(database, second)] == [RunStatus.SCHEDULED]
    (runner,) = runners(database)
    assert runner.status is RunnerStatus.SUCCESS
    assert runner.finished_on is not None


def test_create_missing_task_runners_spawns_detached_processes(
    database: Database,
    settings: Settings,
    subprocess_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in subprocess_env.items():
        monkeypatch.setenv(name, value)
    cli_service = TaskQueueService(
        database, Settings(**{**vars(settings), "task_runner_limit": 3}), cli_mode=True
    )
    for number in range(6):
        cli_service.add_task("tests.handlers.Succeed", {"n": number})
    cli_service.process_queue()
    assert cli_service.create_missing_task_runners(["--burst"]) == 3
    wait_for(
        lambda: (
            count(database, TaskRun) == 6
            and all(
                run.status is RunStatus.SUCCESS
                for task in range(1, 7)
                for run in runs_of(database, task)
            )
        ),
        what="the spawned runners to drain the queue",
    )
    wait_for(
        lambda: (
            len(runners(database)) == 3
            and all(runner.status is RunnerStatus.SUCCESS for runner in runners(database))
        ),
        what="the spawned runners to finish",
    )
    assert {runner.process_id for runner in runners(database)}.isdisjoint({os.getpid()})


# -- refreshTaskRunnersStatus ----------------------------------------------------------------


def add_runner(database: Database, clock: FakeClock, **values: Any) -> int:
    row = {
        "process_id": os.getpid(),
        "hostname": TEST_HOST,
        "process_create_time": current_process_start_time(),
        "process_namespace": process_namespace(),
        "started_on": clock.now,
        "heartbeat_on": clock.now,
        "status": RunnerStatus.RUNNING,
        **values,
    }
    with database.transaction() as connection:
        return int(
            connection.execute(
                insert(TaskRunner).values(**row).returning(TaskRunner.id)
            ).scalar_one()
        )


def give_running_run(service: TaskQueueService, database: Database, runner_id: int) -> int:
    task_id = service.add_task("tests.handlers.Succeed")
    service.create_task_run(task_id)
    with database.transaction() as connection:
        claimed = claim_next_run(connection, runner_id, service.clock())
        assert claimed is not None
        from celery_taskq.core.statements.tasks import rollup_tasks

        rollup_tasks(connection, [task_id])
    return task_id


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_overseer_times_out_a_dead_runner_and_its_running_run(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    dead = add_runner(database, clock, process_id=dead_pid())
    alive = add_runner(database, clock)
    dead_task = give_running_run(service, database, dead)
    alive_task = give_running_run(service, database, alive)
    assert task_row(database, dead_task).last_status is RunStatus.RUNNING

    assert service.refresh_task_runners_status() == [dead]

    statuses = {runner.id: runner.status for runner in runners(database)}
    assert statuses == {dead: RunnerStatus.TIMEOUT, alive: RunnerStatus.RUNNING}
    (dead_run,) = runs_of(database, dead_task)
    assert dead_run.status is RunStatus.TIMEOUT
    assert dead_run.finished_on == clock.now
    row = task_row(database, dead_task)
    assert (row.last_status, row.task_runs_failed) == (RunStatus.TIMEOUT, 1)
    assert runs_of(database, alive_task)[0].status is RunStatus.RUNNING
    # and the timed-out task gets a new run on the next tick
    assert service.create_task_run(dead_task) is not None


def test_overseer_sees_a_reused_pid(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    # Given a runner row whose PID is now this (different) process
    reused = add_runner(database, clock, process_create_time=current_process_start_time() - 3600)
    assert service.refresh_task_runners_status() == [reused]


def test_overseer_judges_other_hosts_by_heartbeat(
    service: TaskQueueService, database: Database, clock: FakeClock, settings: Settings
) -> None:
    remote = add_runner(database, clock, hostname="other-host", process_id=dead_pid())
    assert service.refresh_task_runners_status() == []
    # Its lease expired, but not yet by the margin: it may still be fencing itself
    clock.advance(settings.heartbeat_timeout + 1)
    assert service.refresh_task_runners_status() == []
    clock.advance(settings.lease_margin)
    assert service.refresh_task_runners_status() == [remote]


def test_overseer_judges_another_pid_namespace_of_this_host_by_its_lease(
    service: TaskQueueService, database: Database, clock: FakeClock, settings: Settings
) -> None:
    # Given a runner of this host name in another PID namespace (a container sharing the
    # host's network), whose PID means nothing here
    other = add_runner(database, clock, process_id=dead_pid(), process_namespace="pid:[4026599999]")
    # Then it is not reaped while its heartbeat is fresh, although no such PID lives here
    assert service.refresh_task_runners_status() == []
    clock.advance(settings.heartbeat_timeout + settings.lease_margin + 1)
    assert service.refresh_task_runners_status() == [other]


def test_overseer_does_not_reap_a_runner_that_renewed_its_lease_since_it_was_judged(
    service: TaskQueueService, database: Database, clock: FakeClock, settings: Settings
) -> None:
    remote = add_runner(database, clock, hostname="other-host", process_id=dead_pid())
    clock.advance(settings.heartbeat_timeout + settings.lease_margin + 1)
    with database.transaction(read_only=True) as connection:
        (judged,) = running_runners(connection)
    # Given the runner renewed its heartbeat after the overseer read it
    with database.transaction() as connection:
        assert beat_heart(connection, remote, clock.now)
    # When the overseer times out what it judged dead
    with database.transaction() as connection:
        timed_out = time_out_runners(connection, (), clock.now, judged=[judged])
    # Then the runner lives on
    assert timed_out == []
    assert runners(database)[0].status is RunnerStatus.RUNNING


def test_process_queue_refreshes_then_creates_runs(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    dead = add_runner(database, clock, process_id=dead_pid())
    task_id = give_running_run(service, database, dead)
    report = service.process_queue()
    assert report.timed_out_runners == (dead,)
    assert report.tasks_given_runs == 1
    assert [run.status for run in runs_of(database, task_id)] == [
        RunStatus.TIMEOUT,
        RunStatus.SCHEDULED,
    ]


# -- retry backoff -----------------------------------------------------------------------------


def test_failed_task_waits_out_an_exponential_backoff(
    database: Database, settings: Settings, clock: FakeClock
) -> None:
    from dataclasses import replace

    backing_off = TaskQueueService(
        database, replace(settings, retry_backoff_base=60.0, retry_jitter=0.0), clock=clock
    )
    task_id = backing_off.add_task("tests.handlers.AlwaysFail", max_retries=3)
    drive(backing_off, cycles=1)
    # After the first failure the task is due 60 s later, then 120 s after the second
    assert task_row(database, task_id).scheduled_on == clock.now + timedelta(seconds=60)
    clock.advance(59)
    assert backing_off.create_missing_task_runs() == 0
    clock.advance(1)
    drive(backing_off, cycles=1)
    assert len(runs_of(database, task_id)) == 2
    assert task_row(database, task_id).scheduled_on == clock.now + timedelta(seconds=120)
    # The last failure leaves the exhausted task where it is
    clock.advance(120)
    drive(backing_off, cycles=1)
    assert len(runs_of(database, task_id)) == 3
    assert task_row(database, task_id).scheduled_on == clock.now  # not moved: no retry left


def test_a_handler_can_override_the_backoff(
    database: Database, settings: Settings, clock: FakeClock
) -> None:
    from dataclasses import replace

    backing_off = TaskQueueService(
        database, replace(settings, retry_backoff_base=60.0, retry_jitter=0.0), clock=clock
    )
    task_id = backing_off.add_task("tests.handlers.FailFastRetry", max_retries=3)
    drive(backing_off, cycles=1)
    assert task_row(database, task_id).scheduled_on == clock.now + timedelta(seconds=5)
