"""Runner demand: how many runners the overseer asks for, and which limit refuses one.

The counts are read from the tables on SQLite and PostgreSQL; the policy that turns them into a
number of runners is a pure function.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta

import pytest

from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import reserve
from celery_taskq.core.statements.claim import EVERY_QUEUE
from celery_taskq.core.statements.dispatch import (
    DEMAND_COUNT_FACTOR,
    RunnerDemand,
    runner_demand,
    waiting_by_queue,
)
from celery_taskq.core.storage.database import Database
from tests.conftest import FakeClock


@pytest.mark.parametrize(
    ("demand", "limit", "wanted"),
    [
        (RunnerDemand(scheduled_runs=0, live_runners=0, busy_runners=0), 8, 0),
        (RunnerDemand(scheduled_runs=3, live_runners=0, busy_runners=0), 8, 3),
        (RunnerDemand(scheduled_runs=30, live_runners=0, busy_runners=0), 8, 8),
        # two idle runners will take two of the three runs
        (RunnerDemand(scheduled_runs=3, live_runners=2, busy_runners=0), 8, 1),
        # busy runners take nothing now: each scheduled run wants a runner, within the limit
        (RunnerDemand(scheduled_runs=3, live_runners=2, busy_runners=2), 8, 3),
        (RunnerDemand(scheduled_runs=30, live_runners=7, busy_runners=7), 8, 1),
        (RunnerDemand(scheduled_runs=30, live_runners=8, busy_runners=8), 8, 0),
        (RunnerDemand(scheduled_runs=1, live_runners=4, busy_runners=1), 8, 0),
        (RunnerDemand(scheduled_runs=5, live_runners=0, busy_runners=0), 0, 0),
    ],
)
def test_runners_wanted_follow_the_scheduled_runs_within_the_limit(
    demand: RunnerDemand, limit: int, wanted: int
) -> None:
    assert demand.runners_wanted(limit) == wanted


def test_demand_counts_scheduled_runs_and_idle_and_busy_runners(service: TaskQueueService) -> None:
    # Given nothing queued: no runner is wanted
    assert service.runner_demand() == RunnerDemand(0, 0, 0)
    assert service.runners_wanted() == 0
    # When three due tasks are queued, three runners are wanted
    for n in range(3):
        service.add_task("tests.handlers.Succeed", {"n": n}, create_run=True)
    assert service.runner_demand() == RunnerDemand(3, 0, 0)
    assert service.runners_wanted() == 3
    # An idle runner will take one of them
    runner = service.get_task_runner()
    assert runner is not None
    assert service.runner_demand() == RunnerDemand(3, 1, 0)
    assert service.runners_wanted() == 2
    # Once it holds a run, it is busy: the two runs left want two runners
    claimed = runner.get_next_task_run()
    assert claimed is not None
    assert service.runner_demand() == RunnerDemand(2, 1, 1)
    assert service.runners_wanted() == 2
    runner.process_task_run(claimed)
    runner.run(burst=True)
    # When the queue is drained, nothing is wanted, and the ended runner is not counted
    assert service.runner_demand() == RunnerDemand(0, 0, 0)


def test_runs_a_runner_holds_reserved_are_taken_and_make_it_busy(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    # Given three due tasks, two of whose runs a runner (the fast mode) holds reserved
    for n in range(3):
        service.add_task("tests.handlers.Succeed", {"n": n}, create_run=True)
    runner = service.get_task_runner()
    assert runner is not None
    with database.transaction() as connection:
        held = reserve.reserve_runs(connection, runner.task_runner_id, clock(), 2, EVERY_QUEUE)
        assert len(held) == 2
        waiting = waiting_by_queue(connection)
    # Then only the third run waits, and the runner working through its reservation is busy:
    # one more runner is wanted, not two
    assert service.runner_demand() == RunnerDemand(1, 1, 1)
    assert service.runners_wanted() == 1
    assert {queue: demand.scheduled_runs for queue, demand in waiting.items()} == {"default": 1}


def test_a_task_not_yet_due_wants_no_runner(service: TaskQueueService, clock: FakeClock) -> None:
    service.add_task(
        "tests.handlers.Succeed", {}, scheduled_on=clock() + timedelta(hours=1), create_run=True
    )
    service.process_queue()
    assert service.runners_wanted() == 0


def test_the_limit_hit_is_named(
    service: TaskQueueService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="celery_taskq.core.overseer")
    # Given a worker that holds its one runner, under a TaskRunnerLimit of 8
    assert service.get_task_runner(worker_hostname="w@h", worker_limit=1) is not None
    # When it asks for another, the per-worker limit is the one named
    assert service.get_task_runner(worker_hostname="w@h", worker_limit=1) is None
    (refusal,) = [r for r in caplog.records if getattr(r, "action", "") == "runner_limit_reached"]
    assert refusal.levelno == logging.DEBUG
    assert refusal.getMessage() == "no runner started: worker w@h holds its limit of 1 runners"
    # And once TaskRunnerLimit is full, TaskRunnerLimit is the one named
    caplog.clear()
    for _ in range(service.settings.task_runner_limit - 1):
        assert service.get_task_runner() is not None
    assert service.get_task_runner(worker_hostname="v@h", worker_limit=4) is None
    (refusal,) = [r for r in caplog.records if getattr(r, "action", "") == "runner_limit_reached"]
    limit = service.settings.task_runner_limit
    assert refusal.getMessage() == (
        f"no runner started: TaskRunnerLimit of {limit} reached ({limit} running)"
    )


def test_counting_scheduled_runs_up_to_twice_the_limit_wants_the_same_runners() -> None:
    # Every demand the limit allows: counting the scheduled runs only up to
    # DEMAND_COUNT_FACTOR x limit never changes how many runners are wanted
    for limit in range(5):
        for live in range(limit + 2):
            for busy in range(live + 1):
                for scheduled in range(4 * limit + 3):
                    counted = min(scheduled, DEMAND_COUNT_FACTOR * limit)
                    exact = RunnerDemand(scheduled, live, busy).runners_wanted(limit)
                    capped = RunnerDemand(counted, live, busy).runners_wanted(limit)
                    assert capped == exact, (limit, live, busy, scheduled)


def test_a_deep_backlog_is_counted_only_as_far_as_the_demand_needs(
    database: Database, settings: Settings
) -> None:
    # Given more scheduled runs than twice TaskRunnerLimit
    limited = TaskQueueService(database, replace(settings, task_runner_limit=2))
    for n in range(7):
        limited.add_task("tests.handlers.Succeed", {"n": n}, create_run=True)
    # Then the demand counts them up to 4, and still wants both runners
    assert limited.runner_demand() == RunnerDemand(4, 0, 0)
    assert limited.runners_wanted() == 2
    # And the statement counts them all when asked to
    with database.transaction(read_only=True) as connection:
        assert runner_demand(connection).scheduled_runs == 7
        assert runner_demand(connection, count_up_to=0).scheduled_runs == 0
