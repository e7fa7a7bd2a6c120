"""Concurrency and rate limits of queues and handlers, enforced by the claim (both databases).

Statement-level here: the claim never exceeds a limit, counts rate windows, gives slots back
when a run ends, and OnProcess repairs the counts a lost runner left. Many real runner
processes are in tests/test_limits_processes.py.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import insert, update

from celery_taskq.core.exceptions import ConfigurationError
from celery_taskq.core.limits import apply_declared_limits
from celery_taskq.core.models import Limit, RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.queues import LimitSpec, parse_limits
from celery_taskq.core.runner.outcome import RunOutcome
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import dispatch, limits, runs
from celery_taskq.core.statements.claim import ClaimedRun, ClaimScope, claim_next_run
from celery_taskq.core.storage.database import Database
from tests.conftest import FakeClock

SUCCEED = "tests.handlers.Succeed"
EXPORT = "tests.limit_handlers.LedgerExport"
LIMITED = ClaimScope(limited=True)


def test_limits_are_parsed_from_the_settings() -> None:
    assert parse_limits("reports=2, queue:mail=1,handler:myapp.Export=3", "handler:x.Y=10/m") == {
        "handler:myapp.Export": LimitSpec(max_running=3),
        "handler:x.Y": LimitSpec(rate_count=10, rate_period=60),
        "queue:mail": LimitSpec(max_running=1),
        "queue:reports": LimitSpec(max_running=2),
    }
    assert parse_limits("", "reports=100/15m,a=1/s,b=5/2h,c=7/d")["queue:reports"] == LimitSpec(
        rate_count=100, rate_period=900
    )
    assert parse_limits("a=1", "a=2/s") == {"queue:a": LimitSpec(1, 2, 1)}


@pytest.mark.parametrize(
    ("concurrency", "rate_limits", "message"),
    [
        ("reports", "", "'reports' is not valid: write NAME=RUNS"),
        ("reports=0", "", "concurrency '0' of queue:reports is not valid"),
        ("reports=two", "", "concurrency 'two' of queue:reports is not valid"),
        ("a b=1", "", "'a b' is not a queue"),
        ("handler:=1", "", "does not name a handler"),
        ("a=1,queue:a=2", "", "'queue:a' is given twice"),
        ("", "a=10", "rate '10' is not valid: write RUNS/PERIOD"),
        ("", "a=0/m", "runs and period must be more than 0"),
        ("", "a=5/w", "rate '5/w' is not valid"),
    ],
)
def test_a_malformed_limit_is_refused_with_what_is_wrong(
    concurrency: str, rate_limits: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_limits(concurrency, rate_limits)
    with pytest.raises(ConfigurationError, match=message):
        Settings(concurrency=concurrency, rate_limits=rate_limits)
    env = {"TASKQ_CONCURRENCY": concurrency, "TASKQ_RATE_LIMITS": rate_limits}
    with pytest.raises(ConfigurationError, match="TASKQ_"):
        Settings.resolve(environ=env)


def limited_service(service: TaskQueueService, concurrency: str = "", rates: str = "") -> None:
    """Declare limits in ``service``'s settings and store them, as OnProcess does."""
    service.settings = replace(service.settings, concurrency=concurrency, rate_limits=rates)
    assert apply_declared_limits(service.database, service.settings)


def new_runner(service: TaskQueueService) -> int:
    runner = service.get_task_runner()
    assert runner is not None
    return runner.task_runner_id


def claim(
    service: TaskQueueService, runner_id: int, scope: ClaimScope = LIMITED
) -> ClaimedRun | None:
    with service.database.transaction() as connection:
        return claim_next_run(connection, runner_id, service.clock(), scope)


def finish(service: TaskQueueService, runner_id: int, claimed: ClaimedRun) -> None:
    """Record a success and give the slot back, as a limited runner does."""
    outcome = RunOutcome(status=RunStatus.SUCCESS, standard_output="", error_output="")
    with service.database.transaction() as connection:
        assert runs.finish_run(connection, claimed.run_id, runner_id, outcome, service.clock())
        limits.release(connection, claimed.run_id)


def running_counts(database: Database) -> dict[str, int]:
    with database.transaction(read_only=True) as connection:
        return limits.running_counts(connection)


def test_the_claim_keeps_each_queue_and_handler_within_its_concurrency(
    service: TaskQueueService, database: Database
) -> None:
    # Given reports limited to 2 running runs and the Export handler to 1, and work for both
    limited_service(service, f"reports=2,handler:{EXPORT}=1")
    reports = [service.add_task(SUCCEED, queue="reports", create_run=True) for _ in range(3)]
    exports = [service.add_task(EXPORT, {}, priority=5, create_run=True) for _ in range(2)]
    free = service.add_task(SUCCEED, create_run=True)
    # When six runners claim one run each
    runner_ids = [new_runner(service) for _ in range(6)]
    claimed = [claim(service, runner_id) for runner_id in runner_ids]
    # Then one Export run, two reports runs and the free run are running; the rest wait
    taken = [c.task_queue_id for c in claimed if c is not None]
    assert taken == [exports[0], reports[0], reports[1], free]
    assert running_counts(database) == {"handler:" + EXPORT: 1, "queue:reports": 2}
    # When the Export run ends, its slot comes back and the next Export run is claimed
    export_run = claimed[0]
    assert export_run is not None
    finish(service, runner_ids[0], export_run)
    assert running_counts(database)["handler:" + EXPORT] == 0
    again = claim(service, runner_ids[0])
    assert again is not None
    assert again.task_queue_id == exports[1]
    assert claim(service, runner_ids[4]) is None  # reports is still full
    # And a runner that claims without limits is not held back (limits are per process)
    assert claim(service, runner_ids[5], ClaimScope())


def test_the_claim_counts_rate_windows(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    # Given Succeed limited to 2 runs started a minute, and five runs due
    limited_service(service, rates=f"handler:{SUCCEED}=2/m")
    clock.now = clock.now.replace(second=5, microsecond=0)
    tasks = [service.add_task(SUCCEED, create_run=True) for _ in range(5)]
    runner_id = new_runner(service)
    # When a runner claims and finishes runs as fast as it can within one minute
    started = []
    for _ in range(3):
        claimed = claim(service, runner_id)
        if claimed is not None:
            started.append(claimed.task_queue_id)
            finish(service, runner_id, claimed)
    # Then only two started, although nothing was running
    assert started == tasks[:2]
    # And the next window allows two more
    clock.advance(60)
    for _ in range(3):
        claimed = claim(service, runner_id)
        if claimed is not None:
            started.append(claimed.task_queue_id)
            finish(service, runner_id, claimed)
    assert started == tasks[:4]


def test_on_process_recounts_what_a_lost_runner_held(
    service: TaskQueueService, database: Database
) -> None:
    # Given a reports limit of 1, whose count was left too high (a runner died holding it)
    limited_service(service, "reports=1")
    task = service.add_task(SUCCEED, queue="reports", create_run=True)
    with database.transaction() as connection:
        connection.execute(update(Limit).values(running=1))
    runner_id = new_runner(service)
    assert claim(service, runner_id) is None
    # When OnProcess runs
    service.process_queue()
    # Then the count is the runs running (none), and the run can be claimed
    assert running_counts(database) == {"queue:reports": 0}
    claimed = claim(service, runner_id)
    assert claimed is not None
    assert claimed.task_queue_id == task
    # And a recount while it runs counts it, but not a native Celery task's running attempt
    with database.transaction() as connection:
        native = connection.execute(
            insert(TaskQueue)
            .values(
                task_handler_class="celery:shop.charge",
                task_data={},
                scheduled_on=service.clock(),
                queued_on=service.clock(),
                max_retries=1,
                queue="reports",
            )
            .returning(TaskQueue.id)
        ).scalar_one()
        connection.execute(
            insert(TaskRun).values(task_queue_id=native, status=RunStatus.RUNNING, queue="reports")
        )
    service.process_queue()
    assert running_counts(database) == {"queue:reports": 1}


def test_limits_no_longer_declared_are_removed_and_changes_kept_with_their_counts(
    service: TaskQueueService, database: Database
) -> None:
    limited_service(service, "a=1,b=2")
    service.add_task(SUCCEED, queue="b", create_run=True)
    assert claim(service, new_runner(service))
    limited_service(service, "b=3", "c=5/s")
    with database.transaction(read_only=True) as connection:
        rows = connection.execute(Limit.__table__.select().order_by(Limit.__table__.c.Name)).all()
    assert [(row.Name, row.MaxRunning, row.Running, row.RateCount) for row in rows] == [
        ("queue:b", 3, 1, None),
        ("queue:c", None, 0, 5),
    ]


@pytest.mark.postgresql
def test_concurrent_claims_never_share_the_last_slot(
    postgresql_schema_url: str, clock: FakeClock
) -> None:
    # Given a limit of 1 on reports, twenty runs of it, and twenty runners on PostgreSQL
    url = postgresql_schema_url
    settings = Settings(database_url=url, concurrency="reports=1,other=2", task_runner_limit=20)
    database = Database(url)
    try:
        service = TaskQueueService(database, settings, clock=clock)
        assert apply_declared_limits(database, settings)
        for n in range(20):
            service.add_task(SUCCEED, {"n": n}, queue="reports" if n % 2 else "other")
        service.create_missing_task_runs()
        runner_ids = [new_runner(service) for _ in range(20)]
        barrier = threading.Barrier(len(runner_ids))
        claimed: list[Any] = []

        def race(runner_id: int) -> None:
            barrier.wait()
            claimed.append(claim(service, runner_id))

        # When all twenty claim at the same moment, each on its own connection
        threads = [threading.Thread(target=race, args=(r,)) for r in runner_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Then one reports run and two others run, and the counts say so
        with database.transaction(read_only=True) as connection:
            running = connection.execute(
                Limit.__table__.select().order_by(Limit.__table__.c.Name)
            ).all()
        assert [(row.Name, row.Running) for row in running] == [
            ("queue:other", 2),
            ("queue:reports", 1),
        ]
        assert len([c for c in claimed if c is not None]) == 3
    finally:
        database.close()


def test_runner_dispatch_counts_only_the_room_a_queue_limit_leaves(
    service: TaskQueueService, database: Database
) -> None:
    # Given reports limited to 2 at once, one of them running, and four more waiting
    limited_service(service, "reports=2")
    for _ in range(5):
        service.add_task(SUCCEED, queue="reports", create_run=True)
    service.add_task(SUCCEED, queue="mail", create_run=True)
    assert claim(service, new_runner(service))
    # When the runner dispatch reads what waits
    with database.transaction(read_only=True) as connection:
        waiting = dispatch.waiting_by_queue(connection)
    # Then reports has four runs waiting but room for one; mail has no limit
    assert waiting["reports"].scheduled_runs == 4
    assert waiting["reports"].takeable == 1
    assert waiting["mail"].takeable == 1
    assert dispatch.split_by_queue(8, waiting) == {"reports": 1, "mail": 1}
