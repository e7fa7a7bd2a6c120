"""Batched claims at the statement level, on both databases: reservation, the claims skipping
reserved runs, hand-back (by the runner's end, the overseer's time-out and OnProcess) without a
failure counted, group-committed successes, and fencing."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from celery_taskq.core.models import RunnerRole, RunnerStatus, RunStatus, TaskRunner
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.statements import claim, reserve, runners, tasks
from celery_taskq.core.statements.claim import EVERY_QUEUE, ClaimScope
from celery_taskq.core.statements.reserve import ReservedSuccess
from celery_taskq.core.storage.database import Database
from tests.conftest import FakeClock
from tests.helpers import runs_of, task_row

SUCCEED = "tests.handlers.Succeed"


def new_runner(database: Database, now: datetime) -> int:
    with database.transaction() as connection:
        return runners.insert_runner(
            connection,
            role=RunnerRole.RUNNER,
            process_id=os.getpid(),
            hostname="test-host",
            process_create_time=None,
            worker_hostname=None,
            now=now,
        )


def reserve_for(database: Database, runner_id: int, now: datetime, limit: int) -> list[int]:
    with database.transaction() as connection:
        return [
            run.run_id
            for run in reserve.reserve_runs(connection, runner_id, now, limit, EVERY_QUEUE)
        ]


def open_run(database: Database, task_id: int) -> tuple[int, RunStatus, int | None]:
    (run,) = runs_of(database, task_id)
    return run.id, run.status, run.task_runner_id


def success(run_id: int, now: datetime) -> ReservedSuccess:
    return ReservedSuccess(run_id, now, now, "out", "", {"ok": True}, 100)


def assert_handed_back(database: Database, task_ids: list[int]) -> None:
    """Each task has its one run, ``scheduled`` and held by no runner, and no failure."""
    for task_id in task_ids:
        (run,) = runs_of(database, task_id)
        assert (run.status, run.task_runner_id, run.started_on) == (RunStatus.SCHEDULED, None, None)
        assert task_row(database, task_id).task_runs_failed == 0


def test_a_reservation_takes_runs_in_claim_order_and_every_claim_skips_them(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    low = [service.add_task(SUCCEED, create_run=True) for _ in range(3)]
    high = service.add_task(SUCCEED, create_run=True, priority=5)
    first, second = new_runner(database, clock()), new_runner(database, clock())
    with database.transaction() as connection:
        reserved = reserve.reserve_runs(connection, first, clock(), 3, EVERY_QUEUE)
    assert [run.task_queue_id for run in reserved] == [high, low[0], low[1]]
    assert all(run.handler == SUCCEED for run in reserved)
    for run in reserved:  # reserved runs stay scheduled, held under the runner's id
        assert open_run(database, run.task_queue_id) == (run.run_id, RunStatus.SCHEDULED, first)
    assert task_row(database, high).last_status == RunStatus.SCHEDULED
    with database.transaction() as connection:
        taken = claim.claim_next_run(connection, second, clock())
        assert taken is not None
        assert taken.task_queue_id == low[2]
        assert claim.claim_next_run(connection, second, clock()) is None
        assert reserve.reserve_runs(connection, second, clock(), 10, EVERY_QUEUE) == []
        assert reserve.reserved_runs(connection, first) == sorted(r.run_id for r in reserved)


def test_a_reservation_serves_only_its_queues_and_refuses_limits_and_bad_sizes(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    service.add_task(SUCCEED, create_run=True, queue="a")
    wanted = service.add_task(SUCCEED, create_run=True, queue="b")
    runner_id = new_runner(database, clock())
    with database.transaction() as connection:
        (run,) = reserve.reserve_runs(connection, runner_id, clock(), 5, ClaimScope(("b", "c")))
        assert run.task_queue_id == wanted
        with pytest.raises(ValueError, match="one run at a time"):
            reserve.reserve_runs(connection, runner_id, clock(), 5, ClaimScope(limited=True))
        with pytest.raises(ValueError, match="from 1 to"):
            reserve.reserve_runs(connection, runner_id, clock(), 0, EVERY_QUEUE)


def test_group_committed_successes_record_reserved_and_started_runs(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    ids = [service.add_task(SUCCEED, create_run=True) for _ in range(3)]
    runner_id = new_runner(database, clock())
    run_ids = reserve_for(database, runner_id, clock(), 3)
    started_on = clock()
    clock.advance(5)
    with database.transaction() as connection:
        assert reserve.start_reserved_run(connection, run_ids[2], runner_id, started_on)
    assert open_run(database, ids[2]) == (run_ids[2], RunStatus.RUNNING, runner_id)
    assert task_row(database, ids[2]).last_status == RunStatus.RUNNING
    clock.advance(5)
    with database.transaction() as connection:
        recorded = reserve.finish_reserved_successes(
            connection, runner_id, [success(run_id, clock()) for run_id in run_ids]
        )
    assert recorded == run_ids
    odd = service.add_task(SUCCEED, create_run=True)  # no result, text past the BMP, quotes
    (odd_run,) = reserve_for(database, runner_id, clock(), 1)
    with database.transaction() as connection:
        reserve.finish_reserved_successes(
            connection,
            runner_id,
            [ReservedSuccess(odd_run, clock(), clock(), 'naïve 𝄞 "{x}"', "err", None, 7)],
        )
    (run,) = runs_of(database, odd)
    assert (run.status, run.standard_output, run.error_output, run.results) == (
        RunStatus.SUCCESS,
        'naïve 𝄞 "{x}"',
        "err",
        None,
    )
    assert run.percents_completed == 7
    for task_id in ids:
        (run,) = runs_of(database, task_id)
        assert (run.status, run.standard_output, run.percents_completed) == (
            RunStatus.SUCCESS,
            "out",
            100,
        )
        assert run.started_on is not None
        assert run.finished_on == clock()
        assert (
            task_row(database, task_id).last_status,
            task_row(database, task_id).task_runs_failed,
        ) == (
            RunStatus.SUCCESS,
            0,
        )
    (started,) = runs_of(database, ids[2])
    assert started.started_on == started_on  # a started run keeps its start


@pytest.mark.parametrize("end", ["finish", "time_out"])
def test_a_runners_end_hands_its_reservations_back_without_a_failure(
    service: TaskQueueService, database: Database, clock: FakeClock, end: str
) -> None:
    ids = [service.add_task(SUCCEED, create_run=True) for _ in range(3)]
    runner_id = new_runner(database, clock())
    reserve_for(database, runner_id, clock(), 3)
    with database.transaction() as connection:
        if end == "finish":
            assert runners.finish_runner(connection, runner_id, clock())
        else:
            assert runners.time_out_runners(connection, [runner_id], clock()) == [runner_id]
    assert_handed_back(database, ids)
    # a runner that timed out may have died of one of them: each is marked; an end is not
    lost = end == "time_out"
    codes = {runs_of(database, task_id)[0].error_code for task_id in ids}
    assert codes == {reserve.RESERVATION_LOST_CODE if lost else None}
    other = new_runner(database, clock())
    with database.transaction() as connection:
        again = reserve.reserve_runs(connection, other, clock(), 5, EVERY_QUEUE)
    assert [run.reservation_lost for run in again] == [lost] * 3


def test_a_run_marked_lost_is_an_ordinary_run_once_started(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    ids = [service.add_task(SUCCEED, create_run=True) for _ in range(2)]
    dead = new_runner(database, clock())
    reserve_for(database, dead, clock(), 2)
    with database.transaction() as connection:
        runners.time_out_runners(connection, [dead], clock())
    # the fast mode starts one before it runs it; a strict claim starts the other
    fast, strict = new_runner(database, clock()), new_runner(database, clock())
    with database.transaction() as connection:
        first, second = reserve.reserve_runs(connection, fast, clock(), 2, EVERY_QUEUE)
        assert first.reservation_lost
        assert second.reservation_lost
        assert reserve.start_reserved_run(connection, first.run_id, fast, clock())
        assert runners.finish_runner(connection, fast, clock())  # hands the second back
        claimed = claim.claim_next_run(connection, strict, clock())
    assert claimed is not None
    assert claimed.run_id == second.run_id
    for task_id in ids:
        (run,) = runs_of(database, task_id)
        assert (run.status, run.error_code) == (RunStatus.RUNNING, None)
        assert task_row(database, task_id).task_runs_failed == 0


def test_the_overseer_times_out_the_started_run_and_hands_back_the_rest(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    """Fencing: a timed-out runner's started run fails (as in strict mode), its reserved runs go
    back, and whatever the runner writes afterwards is refused."""
    ids = [service.add_task(SUCCEED, create_run=True) for _ in range(3)]
    runner_id = new_runner(database, clock())
    run_ids = reserve_for(database, runner_id, clock(), 3)
    with database.transaction() as connection:
        assert reserve.start_reserved_run(connection, run_ids[0], runner_id, clock())
    with database.engine.begin() as connection:  # the runner's heartbeat stopped long ago
        connection.execute(
            update(TaskRunner).where(TaskRunner.id == runner_id).values(heartbeat_on=None)
        )
    clock.advance(3600)
    assert service.process_queue().timed_out_runners == (runner_id,)
    # the started run failed (a retry run follows it); the reserved ones did not
    assert runs_of(database, ids[0])[0].status == RunStatus.TIMEOUT
    assert task_row(database, ids[0]).task_runs_failed == 1
    assert_handed_back(database, ids[1:])
    with database.transaction() as connection:  # the fenced runner writes nothing
        assert not reserve.start_reserved_run(connection, run_ids[1], runner_id, clock())
        assert (
            reserve.finish_reserved_successes(
                connection, runner_id, [success(run_id, clock()) for run_id in run_ids]
            )
            == []
        )
        assert reserve.reserve_runs(connection, runner_id, clock(), 5, EVERY_QUEUE) == []
    assert_handed_back(database, ids[1:])
    assert runs_of(database, ids[0])[0].status == RunStatus.TIMEOUT


def test_on_process_hands_back_reservations_of_runners_gone(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    """OnProcess's time-out of a dead runner hands back its reservations, and those of a runner
    row ended by any other path; a live runner keeps its own."""
    ids = [service.add_task(SUCCEED, create_run=True) for _ in range(3)]
    gone, dead, alive = (new_runner(database, clock()) for _ in range(3))
    for runner_id in (gone, dead, alive):
        reserve_for(database, runner_id, clock(), 1)
    with database.engine.begin() as connection:
        connection.execute(  # ended by a path that kept its reservations
            update(TaskRunner).where(TaskRunner.id == gone).values(status=RunnerStatus.SUCCESS)
        )
        connection.execute(  # silent for an hour
            update(TaskRunner).where(TaskRunner.id == dead).values(heartbeat_on=None)
        )
        connection.execute(
            update(TaskRunner)
            .where(TaskRunner.id == alive)
            .values(heartbeat_on=clock.now + timedelta(hours=1))
        )
    clock.advance(3600)
    assert service.process_queue().timed_out_runners == (dead,)
    assert_handed_back(database, ids[:2])
    assert open_run(database, ids[2])[1:] == (RunStatus.SCHEDULED, alive)


def test_a_reserved_task_gets_no_second_run_and_a_cancel_fences_its_reservation(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    task_id = service.add_task(SUCCEED, create_run=True)
    runner_id = new_runner(database, clock())
    (run_id,) = reserve_for(database, runner_id, clock(), 1)
    service.create_missing_task_runs()  # one open run per task: the reserved one counts
    assert len(runs_of(database, task_id)) == 1
    with database.transaction() as connection:
        tasks.cancel_task(connection, task_id, clock())
        assert (
            reserve.finish_reserved_successes(connection, runner_id, [success(run_id, clock())])
            == []
        )
    assert [run.status for run in runs_of(database, task_id)] == [RunStatus.ERROR]
