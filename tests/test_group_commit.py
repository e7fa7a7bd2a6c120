"""The runner's fast mode (``group_commit_ms`` > 0), in process: batched claims whose size follows
the queue, outcomes committed in groups, long runs marked ``running`` while they work, other
outcomes recorded the strict way, and reservations handed back when the loop ends. On SQLite
(and with limits) the runner stays strict and works the same queue to the same end."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import event

from celery_taskq.core.models import RunStatus
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner import batch
from celery_taskq.core.runner.loop import StopReason, TaskRunner
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import reserve, runners
from celery_taskq.core.statements.claim import EVERY_QUEUE
from celery_taskq.core.storage.database import Database
from tests.conftest import FakeClock
from tests.helpers import runs_of, task_row, wait_for

SUCCEED = "tests.handlers.Succeed"
SEE_OWN_RUN = "tests.handlers.SeeOwnRun"
WINDOW_MS = 50


@pytest.fixture
def fast(database: Database, settings: Settings, clock: FakeClock) -> TaskQueueService:
    """The service whose runners work in the fast mode."""
    return TaskQueueService(
        database, replace(settings, group_commit_ms=WINDOW_MS, claim_batch_max=16), clock=clock
    )


def new_runner(service: TaskQueueService) -> TaskRunner:
    runner = service.get_task_runner()
    assert runner is not None
    return runner


def reservations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(asked, got) of every reservation the runners make from now on."""
    made: list[tuple[int, int]] = []
    original = reserve.reserve_runs

    def recording(*args: Any, **kwargs: Any) -> Any:
        reserved = original(*args, **kwargs)
        made.append((args[3], len(reserved)))
        return reserved

    monkeypatch.setattr(reserve, "reserve_runs", recording)
    return made


def test_a_drain_reserves_in_growing_batches_and_commits_in_groups(
    fast: TaskQueueService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [fast.add_task(SUCCEED, {"n": n}, create_run=True) for n in range(40)]
    made = reservations(monkeypatch)
    commits: list[int] = []
    event.listen(database.engine, "commit", lambda _connection: commits.append(1))
    runner = new_runner(fast)
    assert runner.run(burst=True) is StopReason.BURST
    for task_id in ids:
        (run,) = runs_of(database, task_id)
        assert (run.status, run.task_runner_id) == (RunStatus.SUCCESS, runner.task_runner_id)
        assert run.started_on is not None
        assert run.results == {"echo": {"n": ids.index(task_id)}}
        assert (task_row(database, task_id).last_status, run.percents_completed) == (
            RunStatus.SUCCESS,
            100,
        )
    if database.dialect != "postgresql":  # SQLite keeps the strict mode
        assert made == []
        return
    # 1, 2, 4, 8 come back full, then the cap (16) twice, then what is left, then nothing
    assert made == [(1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (16, 9), (9, 0)]
    assert len(commits) < len(ids) // 2  # a commit per reservation (or window), not per run


def test_a_shallow_queue_reserves_one_run_at_a_time(
    fast: TaskQueueService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = reservations(monkeypatch)
    runner = new_runner(fast)
    for _ in range(3):  # a task arrives, the runner takes it, the queue is empty again
        task_id = fast.add_task(SUCCEED, create_run=True)
        assert runner.run(max_runs=1) is StopReason.MAX_RUNS
        assert runs_of(database, task_id)[0].status == RunStatus.SUCCESS
        runner = new_runner(fast)
    expected = [1, 1, 1] if database.dialect == "postgresql" else []
    assert [asked for asked, _got in made] == expected


def test_a_long_run_is_running_while_it_works_and_failures_are_recorded_strictly(
    fast: TaskQueueService, database: Database, tmp_path: Any
) -> None:
    quick = fast.add_task(SUCCEED, create_run=True)
    slow = fast.add_task("tests.handlers.Sleep", {"seconds": 1.0}, create_run=True)
    failing = fast.add_task("tests.handlers.FailWithResults", create_run=True)
    runner = new_runner(fast)
    thread = threading.Thread(target=lambda: runner.run(burst=True))
    thread.start()
    try:
        # reservations of [quick] and [slow, failing]; the slow handler reports progress at
        # once and then outlives the window: it is marked running, and the run reserved
        # behind it is handed back rather than kept waiting
        wait_for(
            lambda: runs_of(database, slow)[0].status == RunStatus.RUNNING,
            timeout=10,
            what="the long run marked running",
        )
        assert runs_of(database, slow)[0].percents_completed == 40
        waiting = runs_of(database, failing)[0]
        if database.dialect == "postgresql":
            assert runs_of(database, quick)[0].status == RunStatus.SUCCESS  # committed with it
        assert (waiting.status, waiting.task_runner_id) == (RunStatus.SCHEDULED, None)
    finally:
        thread.join(timeout=30)
    assert runs_of(database, slow)[0].status == RunStatus.SUCCESS
    (failed,) = runs_of(database, failing)[:1]
    assert (failed.status, failed.error_code, failed.results) == (
        RunStatus.ERROR,
        "E_HALF",
        {"done": 5, "of": 10},
    )
    assert task_row(database, failing).task_runs_failed == 1
    assert runs_of(database, quick)[0].status == RunStatus.SUCCESS


def test_a_loop_that_stops_hands_back_what_it_reserved_without_a_failure(
    fast: TaskQueueService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [fast.add_task(SUCCEED, create_run=True) for _ in range(10)]
    made = reservations(monkeypatch)
    runner = new_runner(fast)
    # reservations of 1, 2, then 4 runs; the loop stops after the first of the 4
    assert runner.run(should_stop=lambda: runner.runs_done >= 4) is StopReason.STOP_REQUESTED
    runs = [runs_of(database, task_id)[0] for task_id in ids]
    assert [run.status for run in runs] == [RunStatus.SUCCESS] * 4 + [RunStatus.SCHEDULED] * 6
    assert all(run.task_runner_id is None for run in runs[4:])  # handed back
    assert all(task_row(database, task_id).task_runs_failed == 0 for task_id in ids)
    if database.dialect == "postgresql":
        assert made == [(1, 1), (2, 2), (4, 4)]
    other = new_runner(fast)
    assert other.run(burst=True) is StopReason.BURST
    assert all(runs_of(database, task_id)[0].status == RunStatus.SUCCESS for task_id in ids)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite stays strict
def test_outcomes_holding_much_output_are_committed_early(
    fast: TaskQueueService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups: list[int] = []
    original = reserve.finish_reserved_successes

    def recording(connection: Any, runner_id: int, successes: Any) -> list[int]:
        if successes:
            groups.append(len(successes))
        return original(connection, runner_id, successes)

    monkeypatch.setattr(reserve, "finish_reserved_successes", recording)
    monkeypatch.setattr(batch, "PENDING_OUTPUT_MAX", -1)  # any output is too much
    ids = [fast.add_task(SUCCEED, create_run=True) for _ in range(8)]
    assert new_runner(fast).run(burst=True) is StopReason.BURST
    assert all(runs_of(database, task_id)[0].status == RunStatus.SUCCESS for task_id in ids)
    assert groups == [1] * len(ids)


def test_a_resumable_task_goes_on_from_its_checkpoint(
    fast: TaskQueueService, database: Database, tmp_path: Any
) -> None:
    """Each run continues in a new run, which a later reservation takes with the checkpoint."""
    log = tmp_path / "items"
    task_id = fast.add_task(
        "tests.handlers.Chunked", {"total": 7, "per_run": 3, "log": str(log)}, create_run=True
    )
    others = [fast.add_task(SUCCEED, create_run=True) for _ in range(4)]
    assert new_runner(fast).run(burst=True) is StopReason.BURST
    runs = runs_of(database, task_id)
    assert [run.status for run in runs] == [RunStatus.SUCCESS] * 3
    assert [run.results for run in runs] == [
        {"handled": [0, 3]},
        {"handled": [3, 6]},
        {"done": 7},
    ]
    assert log.read_text().split() == [str(item) for item in range(7)]  # each item once
    assert all(runs_of(database, other)[0].status == RunStatus.SUCCESS for other in others)


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)
def test_a_run_whose_reserving_runner_timed_out_is_running_before_its_handler_starts(
    database: Database, settings: Settings, clock: FakeClock
) -> None:
    # Given a fast runner, a run that a runner which then timed out had reserved (it may be
    # what killed that runner), and a run never reserved before; each handler reads its run's
    # status as the database holds it when the handler starts
    service = TaskQueueService(
        database, replace(settings, group_commit_ms=1000, claim_batch_max=1), clock=clock
    )
    data = {"database_url": settings.database_url}
    lost, fresh = (service.add_task(SEE_OWN_RUN, data, create_run=True) for _ in range(2))
    dead = new_runner(service)
    with database.transaction() as connection:
        reserve.reserve_runs(connection, dead.task_runner_id, clock(), 1, EVERY_QUEUE)
        runners.time_out_runners(connection, [dead.task_runner_id], clock())
    # When a fast runner drains them
    runner = new_runner(service)
    assert runner.run(burst=True) is StopReason.BURST
    # Then the marked run was recorded running before its handler started; the other was
    # still the reserved run of the fast mode; both end as plain successes
    for task_id, seen in ((lost, RunStatus.RUNNING), (fresh, RunStatus.SCHEDULED)):
        (run,) = runs_of(database, task_id)
        assert run.results == {"status_at_start": seen.value}, task_id
        assert (run.status, run.error_code) == (RunStatus.SUCCESS, None)
        assert task_row(database, task_id).task_runs_failed == 0
