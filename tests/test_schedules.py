"""Schedules at the statement level, on SQLite and PostgreSQL, with an injected clock: one task
per slot, both misfire policies, DST, edits, and refusals that write nothing."""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from celery_taskq.cli import main
from celery_taskq.core.exceptions import InvalidArgumentError, InvalidTaskError, TaskqError
from celery_taskq.core.models import TaskQueue
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.schedule_models import TaskSchedule, TaskScheduleSlot
from celery_taskq.core.schedules import ScheduleNotFoundError, ScheduleService
from celery_taskq.core.schedules_firing import fire_due_schedules
from celery_taskq.core.schedules_spec import ScheduleSpec, from_config_entry
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.conftest import FakeClock
from tests.helpers import count

HANDLER = "tests.handlers.Succeed"


@pytest.fixture
def schedules(database: Database, settings: Settings, clock: FakeClock) -> ScheduleService:
    """The schedules service on the test database, with the fake clock."""
    return ScheduleService(database, settings, clock=clock)


def slots(database: Database) -> list[TaskScheduleSlot]:
    """Every slot row, oldest slot first."""
    with Session(database.engine, expire_on_commit=False) as session:
        return list(session.scalars(select(TaskScheduleSlot).order_by(TaskScheduleSlot.slot_on)))


def scheduled_tasks(database: Database, name: str) -> list[TaskQueue]:
    """The TaskQueue rows the schedule ``name`` created, oldest first."""
    with Session(database.engine, expire_on_commit=False) as session:
        return list(
            session.scalars(
                select(TaskQueue)
                .where(TaskQueue.queued_by_id == f"schedule:{name}")
                .order_by(TaskQueue.id)
            )
        )


def test_an_interval_schedule_fires_one_task_per_slot_and_ticks_in_between_fire_none(
    schedules: ScheduleService, service: TaskQueueService, clock: FakeClock, database: Database
) -> None:
    # Given a schedule every 60 s (slots on the minute), data and a title
    schedules.add(ScheduleSpec("minutely", HANDLER, {"n": 1}, interval=60, title="Every minute"))
    # When OnProcess ticks every 2 s for three minutes
    for _ in range(90):
        clock.advance(2)
        service.process_queue()
    # Then three tasks, one per slot, queued by the schedule, each given a run
    tasks = scheduled_tasks(database, "minutely")
    assert [task.task_data for task in tasks] == [{"n": 1}] * 3
    rows = slots(database)
    assert [row.slot_on.second for row in rows] == [0, 0, 0]
    assert [row.task_queue_id for row in rows] == [task.id for task in tasks]
    assert all(row.missed_slots == 0 and row.policy_applied is None for row in rows)
    snapshot = schedules.get("minutely")
    assert snapshot.last_task_id == tasks[-1].id
    assert snapshot.last_status == "scheduled"
    assert snapshot.next_run_on == datetime(2026, 1, 1, 12, 4, tzinfo=UTC)


def _tick_in_child(database_url: str, now: datetime, barrier: Any, results: Any) -> None:
    database = Database(database_url)
    barrier.wait()
    results.put(fire_due_schedules(database, Settings(database_url=database_url), now))
    database.close()


def test_two_processes_ticking_the_same_slot_create_one_task(
    schedules: ScheduleService, clock: FakeClock, database: Database, database_url: str
) -> None:
    # Given a due schedule
    schedules.add(ScheduleSpec("race", HANDLER, interval=10))
    now = clock.now + timedelta(seconds=10)
    # When four processes fire due schedules at the same instant
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    children = [
        context.Process(target=_tick_in_child, args=(database_url, now, barrier, results))
        for _ in range(4)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    # Then exactly one created a task, and one slot row holds it
    assert sorted(results.get(timeout=5) for _ in children) == [0, 0, 0, 1]
    assert len(scheduled_tasks(database, "race")) == 1
    assert len(slots(database)) == 1


@pytest.mark.parametrize("policy", ["catch_up_once", "skip"])
def test_after_beat_was_down_for_several_slots_the_policy_is_applied_and_recorded(
    policy: str,
    schedules: ScheduleService,
    service: TaskQueueService,
    clock: FakeClock,
    database: Database,
) -> None:
    # Given a schedule every 60 s that fired its first slot
    schedules.add(ScheduleSpec("gappy", HANDLER, interval=60, misfire_policy=policy))
    clock.advance(61)
    service.process_queue()
    assert len(scheduled_tasks(database, "gappy")) == 1
    # When beat is down for five slots and comes back 30 s after the last (past the grace)
    clock.advance(5 * 60 - 1 + 30)
    service.process_queue()
    # Then the five missed slots are recorded on one row with the policy applied
    gap = slots(database)[-1]
    assert (gap.missed_slots, gap.policy_applied) == (5, policy)
    assert gap.first_missed_on == datetime(2026, 1, 1, 12, 2, tzinfo=UTC)
    assert gap.slot_on == datetime(2026, 1, 1, 12, 6, tzinfo=UTC)
    tasks = scheduled_tasks(database, "gappy")
    if policy == "catch_up_once":  # one task for all five
        assert len(tasks) == 2
        assert gap.task_queue_id == tasks[-1].id
    else:  # none until the next slot
        assert len(tasks) == 1
        assert gap.task_queue_id is None
    # And the next slot fires normally under either policy
    clock.advance(30)
    service.process_queue()
    assert len(scheduled_tasks(database, "gappy")) == len(tasks) + 1
    assert slots(database)[-1].missed_slots == 0


def test_skip_fires_the_latest_slot_when_it_is_still_on_time(
    schedules: ScheduleService, service: TaskQueueService, clock: FakeClock, database: Database
) -> None:
    # Given a skip schedule, and beat down for three slots, back 1 s after a slot
    schedules.add(ScheduleSpec("late", HANDLER, interval=60, misfire_policy="skip"))
    clock.advance(3 * 60 + 1)
    service.process_queue()
    # Then the on-time slot fires, and the two before it are recorded as skipped
    (row,) = slots(database)
    assert (row.missed_slots, row.policy_applied) == (2, "skip")
    assert row.task_queue_id is not None


def tick_every_ten_minutes(
    database: Database, settings: Settings, clock: FakeClock, *, days: int
) -> None:
    """Fire due schedules as OnProcess would with a 10-minute process interval."""
    ten_minute_ticks = replace(settings, process_interval=600)
    for _ in range(days * 24 * 6):
        clock.advance(600)
        fire_due_schedules(database, ten_minute_ticks, clock.now)


def test_a_crontab_across_dst_changes_fires_once_per_wall_clock_slot(
    schedules: ScheduleService, settings: Settings, clock: FakeClock, database: Database
) -> None:
    # Given a crontab at 01:30 and 02:30 every day in Paris (DST ends 2026-10-25 at 03:00 CEST,
    # so 02:30 happens twice that night)
    clock.now = datetime(2026, 10, 24, 12, 0, tzinfo=UTC)
    schedules.add(ScheduleSpec("nightly", HANDLER, crontab="30 1,2 * * *", timezone="Europe/Paris"))
    # When OnProcess ticks every 10 minutes for two days
    tick_every_ten_minutes(database, settings, clock, days=2)
    # Then each wall-clock slot fired once: the repeated 02:30 once, at its first occurrence
    fired = [row.slot_on for row in slots(database)]
    assert fired == [
        datetime(2026, 10, 24, 23, 30, tzinfo=UTC),  # 01:30 CEST
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 CEST (not again at 02:30 CET)
        datetime(2026, 10, 26, 0, 30, tzinfo=UTC),  # 01:30 CET
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),  # 02:30 CET
    ]
    assert len(scheduled_tasks(database, "nightly")) == 4


def test_a_crontab_in_the_skipped_hour_does_not_fire_that_night(
    schedules: ScheduleService, settings: Settings, clock: FakeClock, database: Database
) -> None:
    # Given 02:30 daily in Paris, where 2026-03-29 has no 02:30 (clocks jump 02:00 -> 03:00)
    clock.now = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)
    schedules.add(ScheduleSpec("gap", HANDLER, crontab="30 2 * * *", timezone="Europe/Paris"))
    # When OnProcess ticks every 10 minutes for three days
    tick_every_ten_minutes(database, settings, clock, days=3)
    # Then it fired on the 28th and the 30th, and nothing is recorded as missed
    rows = slots(database)
    assert [row.slot_on for row in rows] == [
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
    ]
    assert all(row.missed_slots == 0 for row in rows)


def test_edits_pause_resume_and_run_now_reach_the_next_tick(
    schedules: ScheduleService, service: TaskQueueService, clock: FakeClock, database: Database
) -> None:
    # Given a schedule every hour
    schedules.add(ScheduleSpec("edited", HANDLER, {"v": 1}, interval=3600))
    # When it is edited to every 10 s with new data, the next tick after 10 s fires the new data
    schedules.edit("edited", {"interval": 10, "data": {"v": 2}})
    clock.advance(10)
    service.process_queue()
    assert [task.task_data for task in scheduled_tasks(database, "edited")] == [{"v": 2}]
    # When paused, ticks fire nothing; resumed, it goes on from the next slot (no misfire)
    schedules.pause("edited")
    for _ in range(5):
        clock.advance(10)
        service.process_queue()
    assert len(scheduled_tasks(database, "edited")) == 1
    schedules.resume("edited")
    clock.advance(10)
    service.process_queue()
    assert len(scheduled_tasks(database, "edited")) == 2
    assert slots(database)[-1].missed_slots == 0
    # And run-now queues one task at once, outside the slots
    task_id = schedules.run_now("edited")
    assert scheduled_tasks(database, "edited")[-1].id == task_id
    assert schedules.get("edited").last_task_id == task_id
    assert len(slots(database)) == 2


BAD_DEFINITIONS = [
    (ScheduleSpec("a", "tests.handlers.NoSuchHandler", interval=5), "NoSuchHandler"),
    (ScheduleSpec("a", "tests.handlers.NotAHandler", interval=5), "NotAHandler"),
    (ScheduleSpec("a", HANDLER, crontab="61 * * * *"), "outside 0-59"),
    (ScheduleSpec("a", HANDLER, crontab="* * *"), "five fields"),
    (ScheduleSpec("a", HANDLER, crontab="0 0 30 2 *"), "no slot"),
    (ScheduleSpec("a", HANDLER, crontab="0 0 * * *", timezone="Mars/Olympus"), "timezone"),
    (ScheduleSpec("a", HANDLER, interval=0), "interval"),
    (ScheduleSpec("a", HANDLER, interval=5, crontab="* * * * *"), "exactly one"),
    (ScheduleSpec("a", HANDLER, interval=5, misfire_policy="later"), "misfire policy"),
    (ScheduleSpec("a", "tests.handlers.RefuseNegative", -1, interval=5), "refused"),
    (ScheduleSpec("", HANDLER, interval=5), "name"),
    (ScheduleSpec("a/b", HANDLER, interval=5), "'/'"),
]
"""A bad definition of each kind, and what its refusal says."""


def test_bad_definitions_are_refused_with_their_reason_and_write_nothing(
    schedules: ScheduleService, database: Database
) -> None:
    for spec, message in BAD_DEFINITIONS:
        with pytest.raises(InvalidTaskError, match=message):
            schedules.add(spec)
    assert count(database, TaskSchedule) == 0


def test_a_duplicate_name_and_a_bad_edit_change_nothing(
    schedules: ScheduleService, database: Database
) -> None:
    first = schedules.add(ScheduleSpec("twice", HANDLER, {"v": 1}, interval=60))
    with pytest.raises(InvalidArgumentError, match="exists already"):
        schedules.add(ScheduleSpec("twice", HANDLER, interval=5))
    with pytest.raises(InvalidArgumentError, match="outside"):
        schedules.edit("twice", {"crontab": "99 * * * *", "data": {"v": 2}})
    with pytest.raises(ScheduleNotFoundError):
        schedules.pause("nobody")
    assert schedules.list_schedules() == [first]


def test_config_entries_sync_their_definition_but_keep_the_operators_pause(
    schedules: ScheduleService, clock: FakeClock
) -> None:
    # Given a config entry synced, then paused by an operator
    entry = {"task": HANDLER, "schedule": timedelta(minutes=5), "kwargs": {"v": 1}}
    schedules.sync([from_config_entry("conf", entry, default_timezone="UTC")])
    schedules.pause("conf")
    # When the config changes and is synced again
    changed = {**entry, "schedule": "0 * * * *", "options": {"misfire_policy": "skip"}}
    clock.advance(1)
    assert schedules.sync([from_config_entry("conf", changed, default_timezone="UTC")]) == 1
    # Then the definition is the config's, and the pause is kept
    snapshot = schedules.get("conf")
    assert (snapshot.crontab, snapshot.interval, snapshot.misfire_policy) == (
        "0 * * * *",
        None,
        "skip",
    )
    assert snapshot.paused
    assert snapshot.source == "config"
    # And an unchanged sync writes nothing
    assert schedules.sync([from_config_entry("conf", changed, default_timezone="UTC")]) == 0


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"task": HANDLER}, "needs 'task' and 'schedule'"),
        ({"task": HANDLER, "schedule": 5, "args": [1]}, "not 'args'"),
        ({"task": HANDLER, "schedule": [5]}, "must be whole seconds"),
        ({"task": HANDLER, "schedule": 5, "relative": True}, "unknown keys"),
    ],
)
def test_bad_config_entries_are_refused(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskqError, match=message):
        from_config_entry("x", entry, default_timezone="UTC")


def test_the_command_line_lists_shows_and_refuses_with_one_error_line(
    database_url: str, database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--database-url", database_url, "schedules"]
    # Given a schedule added on the command line with a secret in its data
    added = main([*base, "add", "nightly", HANDLER, '{"password": "x"}', "--cron", "0 3 * * *"])
    assert added == 0
    # Then list and show print it, its data redacted in JSON
    assert main([*base, "list"]) == 0
    assert "nightly  cron 0 3 * * * UTC  catch_up_once  active  next " in capsys.readouterr().out
    assert main([*base, "show", "nightly", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["crontab"], shown["slots"]) == ("0 3 * * *", [])
    assert shown["data"] != {"password": "x"}
    # And a bad timezone, a taken name and an unknown name are one error line each, exit 1
    assert main([*base, "add", "x", HANDLER, "--every", "5", "--timezone", "Nowhere/Land"]) == 1
    assert main([*base, "add", "nightly", HANDLER, "--every", "5"]) == 1
    assert main([*base, "pause", "nobody"]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "error: schedule 'x': unknown timezone 'Nowhere/Land': give an IANA name such as "
        "'Europe/Paris' or 'UTC'",
        "error: a schedule named 'nightly' exists already",
        "error: no schedule named 'nobody'",
    ]
    assert count(database, TaskSchedule) == 1
