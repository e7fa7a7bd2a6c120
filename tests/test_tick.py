"""The OnProcess tick's own costs: the beat-tick claim and a tick with nothing to do.

What a tick does (timing out dead runners, firing schedules, creating runs) is tested with its
steps in test_queue.py and test_schedules.py; here: one claim per slot, the pruning of old tick
rows, the claim's relaxed commit kept to its own statement, an idle tick that writes nothing
and reads each table once, and the due probe that lets it skip run creation, on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, select, text, update

from celery_taskq.core.models import BeatTick, RunnerStatus, RunStatus, TaskRunner
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.lease import process_namespace
from celery_taskq.core.runner.liveness import current_process_start_time
from celery_taskq.core.schedules import ScheduleService
from celery_taskq.core.schedules_spec import ScheduleSpec
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements.beat import BEAT_TICKS_KEPT, claim_beat_tick
from celery_taskq.core.statements.dispatch import any_task_due
from celery_taskq.core.storage.database import Database
from tests.conftest import TEST_HOST, FakeClock
from tests.helpers import count, drive, insert_task_row, runs_of

INTERVAL = 10.0


def slot_of(clock: FakeClock) -> int:
    return int(clock.now.timestamp() // INTERVAL)


def tick_slots(database: Database, event_name: str) -> list[int]:
    with database.transaction(read_only=True) as connection:
        return sorted(
            connection.execute(select(BeatTick.slot).where(BeatTick.event == event_name)).scalars()
        )


@contextmanager
def statements_of(database: Database) -> Iterator[list[str]]:
    """The SQL the database's engines execute inside the block (autocommit engine included)."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(" ".join(str(args[2]).split()))

    engines = [database.engine]
    if database.dialect == "postgresql":
        engines.append(database._autocommitting())
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


def add_live_runner(database: Database, clock: FakeClock) -> None:
    """A ``running`` runner row of this very process, with a fresh heartbeat."""
    with database.transaction() as connection:
        connection.execute(
            insert(TaskRunner).values(
                process_id=os.getpid(),
                hostname=TEST_HOST,
                process_create_time=current_process_start_time(),
                process_namespace=process_namespace(),
                started_on=clock.now,
                heartbeat_on=clock.now,
                status=RunnerStatus.RUNNING,
            )
        )


def test_a_tick_is_claimed_once_per_slot_and_event(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    # Given a first beat claimed this slot's OnProcess tick
    assert service.claim_beat_tick("process", INTERVAL)
    # Then a second beat's claim of the same slot is refused, and writes nothing
    assert not service.claim_beat_tick("process", INTERVAL)
    assert tick_slots(database, "process") == [slot_of(clock)]
    # And another event's tick of the same slot is its own
    assert service.claim_beat_tick("create_runners", INTERVAL)
    # When the next slot comes, its tick is claimed
    clock.advance(INTERVAL)
    assert service.claim_beat_tick("process", INTERVAL)
    assert tick_slots(database, "process") == [slot_of(clock) - 1, slot_of(clock)]


def test_a_claimed_tick_prunes_the_events_rows_older_than_the_kept_ones(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    # Given tick rows of slots just beyond and just within the kept ones, of two events
    slot = slot_of(clock)
    old, kept = slot - BEAT_TICKS_KEPT - 1, slot - BEAT_TICKS_KEPT
    with database.transaction() as connection:
        for event_name in ("process", "create_runners"):
            for past in (old, kept):
                connection.execute(
                    insert(BeatTick).values(event=event_name, slot=past, ticked_on=clock.now)
                )
    # When this slot's OnProcess tick is claimed
    assert service.claim_beat_tick("process", INTERVAL)
    # Then only OnProcess's row beyond the kept ones is gone
    assert tick_slots(database, "process") == [kept, slot]
    assert tick_slots(database, "create_runners") == [old, kept]
    # And a refused claim prunes nothing
    with database.transaction() as connection:
        connection.execute(
            insert(BeatTick).values(event="process", slot=old - 1, ticked_on=clock.now)
        )
    assert not service.claim_beat_tick("process", INTERVAL)
    assert tick_slots(database, "process") == [old - 1, kept, slot]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_claims_relaxed_commit_ends_with_its_statement(database: Database) -> None:
    # Given an autocommit connection whose session commits synchronously
    with database.autocommit() as connection:
        connection.execute(text("SET synchronous_commit = on"))
        # When the claim runs on it (its own commit does not wait for the WAL's flush)
        assert claim_beat_tick(connection, "process", 1, FakeClock().now)
        # Then the session's setting is the same again: the next statement commits durably
        assert connection.execute(text("SHOW synchronous_commit")).scalar() == "on"
        # And the claim is one statement, whose row is there for every other connection
        assert not claim_beat_tick(connection, "process", 1, FakeClock().now)
    assert tick_slots(database, "process") == [1]


def test_the_claim_is_one_statement_on_postgresql(
    service: TaskQueueService, database: Database
) -> None:
    with statements_of(database) as seen:
        assert service.claim_beat_tick("process", INTERVAL)
    if database.dialect == "postgresql":
        assert len(seen) == 1, seen
    else:  # SQLite: the insert and the pruning, in one write transaction
        assert sum("TaskqBeatTicks" in statement for statement in seen) == 2, seen


def test_an_idle_tick_reads_each_table_once_and_writes_nothing(
    service: TaskQueueService,
    database: Database,
    settings: Settings,
    clock: FakeClock,
) -> None:
    # Given a schedule whose next slot has not come, a task due later, and a live runner
    ScheduleService(database, settings, clock=clock).add(
        ScheduleSpec("hourly", "tests.handlers.Succeed", interval=3600)
    )
    later = service.add_task(
        "tests.handlers.Succeed", scheduled_on=clock.now + timedelta(minutes=5)
    )
    add_live_runner(database, clock)
    # When an OnProcess tick finds nothing to do
    with statements_of(database) as seen:
        report = service.process_queue()
    # Then it did nothing: the runner lives on, the task waits
    assert (report.timed_out_runners, report.tasks_given_runs) == ((), 0)
    assert service.get_task_runner_count() == 1
    assert runs_of(database, later) == []
    # And it read the runners and the schedules once each, and fired no schedule
    assert sum('"TaskRunners"."ProcessId"' in statement for statement in seen) == 1, seen
    assert sum('"TaskSchedules"' in statement for statement in seen) == 1, seen
    assert not any('"TaskScheduleSlots"' in statement for statement in seen), seen
    assert not any('INSERT INTO "TaskRuns"' in statement for statement in seen), seen
    # When the task's time comes (the runner still beating), the next tick gives it its run
    clock.advance(300)
    with database.transaction() as connection:
        connection.execute(update(TaskRunner).values(heartbeat_on=clock.now))
    assert service.process_queue().tasks_given_runs == 1
    assert [run.status for run in runs_of(database, later)] == [RunStatus.SCHEDULED]
    assert count(database, BeatTick) == 0  # process_queue alone claims no tick


def test_the_due_probe_agrees_with_run_creation(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    def probe() -> bool:
        with database.transaction(read_only=True) as connection:
            return any_task_due(connection, clock.now)

    # Given tasks that may not get a run: due later, cancelled, a native Celery task's row,
    # one that succeeded
    service.add_task("tests.handlers.Succeed", scheduled_on=clock.now + timedelta(minutes=1))
    service.cancel_task(service.add_task("tests.handlers.Succeed"))
    insert_task_row(database, "celery:tests.native", clock.now)
    drive(service)
    assert (probe(), service.create_missing_task_runs()) == (False, 0)
    # When a task fails with a retry left, the probe and the creation both see it due
    failing = service.add_task("tests.handlers.AlwaysFail", max_retries=2)
    drive(service)
    assert (probe(), service.create_missing_task_runs()) == (True, 1)
    # And once it has its run, neither does
    assert (probe(), service.create_missing_task_runs()) == (False, 0)
    assert [run.status for run in runs_of(database, failing)] == [
        RunStatus.ERROR,
        RunStatus.SCHEDULED,
    ]
