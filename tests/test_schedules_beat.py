"""Schedules under real Celery processes: two beats and a worker on SQLite and on PostgreSQL
with Redis. One run per database covers one task per slot, an edit through the command line
reaching the running beats, and both misfire policies after beat was down for several slots."""

from __future__ import annotations

import re
import signal
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from celery_taskq.core.models import BeatTick, TaskQueue
from celery_taskq.core.schedule_models import TaskSchedule, TaskScheduleSlot
from celery_taskq.core.schedules import ScheduleService
from celery_taskq.core.schedules_spec import ScheduleSpec
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.celery_stack import CeleryStack
from tests.helpers import cli, count, wait_for

HANDLER = "tests.handlers.Succeed"


def slot_rows(database: Database, name: str) -> list[TaskScheduleSlot]:
    """The slot rows of schedule ``name``, oldest first."""
    with Session(database.engine, expire_on_commit=False) as session:
        return list(
            session.scalars(
                select(TaskScheduleSlot)
                .join(TaskSchedule, TaskSchedule.id == TaskScheduleSlot.schedule_id)
                .where(TaskSchedule.name == name)
                .order_by(TaskScheduleSlot.slot_on)
            )
        )


def tasks_of(database: Database, name: str) -> int:
    """How many TaskQueue rows schedule ``name`` created."""
    with database.transaction(read_only=True) as connection:
        return int(
            connection.execute(
                select(func.count())
                .select_from(TaskQueue)
                .where(TaskQueue.queued_by_id == f"schedule:{name}")
            ).scalar_one()
        )


def gap_row(database: Database, name: str) -> Any:
    """The slot row recording the missed slots of ``name``, once there is one."""
    return next((row for row in slot_rows(database, name) if row.missed_slots >= 2), None)


def test_two_beats_fire_each_slot_once_follow_a_cli_edit_and_apply_misfire_policies(
    stack: CeleryStack,
) -> None:
    database = Database(stack.database_url)
    schedules = ScheduleService(database, Settings(database_url=stack.database_url))
    try:
        # Given a worker and two beats ticking OnProcess every 0.5 s
        stack.start_worker(beat=False)
        beats = [stack.start_beat("beat-1"), stack.start_beat("beat-2")]
        wait_for(lambda: count(database, BeatTick), timeout=60, what="the first tick")
        # When schedules every second (catch up, skip) and one every hour are added
        started = time.time()
        schedules.add(ScheduleSpec("catcher", HANDLER, interval=1))
        schedules.add(ScheduleSpec("skipper", HANDLER, interval=1, misfire_policy="skip"))
        schedules.add(ScheduleSpec("edited", HANDLER, interval=3600))
        # And the hourly one is edited through the command line to every 2 s
        edit = cli(stack.env, "schedules", "edit", "edited", "--every", "2", "--data", '{"v": 2}')
        assert edit.returncode == 0, edit.stderr
        # (its first slot, as the edit printed it: a tick may have fired it since)
        printed = re.search(r"next (\S+ \S+) UTC", edit.stdout)
        assert printed is not None, edit.stdout
        first_slot = datetime.fromisoformat(printed.group(1)).replace(tzinfo=UTC)
        # Then the running beats deal with its first slot after the edit (fired at once, or
        # counted as missed and caught up if the loaded machine delayed the tick past the grace)
        wait_for(lambda: slot_rows(database, "edited"), timeout=30, what="the edited schedule")
        first = slot_rows(database, "edited")[0]
        assert first_slot in (first.slot_on, first.first_missed_on)
        assert first.task_queue_id is not None
        wait_for(lambda: tasks_of(database, "catcher") >= 3, timeout=30, what="three slots")
        # And each slot has one row, and each task one slot: never two tasks for a slot
        for name in ("catcher", "edited"):
            rows = slot_rows(database, name)
            assert tasks_of(database, name) == sum(row.task_queue_id is not None for row in rows)
            assert len({row.slot_on for row in rows}) == len(rows)
        assert tasks_of(database, "catcher") <= time.time() - started + 1
        # When both beats are down for several slots, then one comes back
        for beat in beats:
            beat.send_signal(signal.SIGTERM)
        for beat in beats:
            beat.wait(timeout=30)
        time.sleep(2)  # with the beats' restart, several 1 s slots pass
        stack.start_beat("beat-3")
        # Then each schedule records the missed slots with its own policy
        caught = wait_for(lambda: gap_row(database, "catcher"), timeout=60, what="a catch-up")
        skipped = wait_for(lambda: gap_row(database, "skipper"), timeout=60, what="a skip")
        assert caught.policy_applied == "catch_up_once"
        assert caught.task_queue_id is not None  # one task for all the missed slots
        assert skipped.policy_applied == "skip"
        # And skip created no task for its missed slots: each task is its own slot's
        rows = slot_rows(database, "skipper")
        assert tasks_of(database, "skipper") == sum(row.task_queue_id is not None for row in rows)
        assert tasks_of(database, "skipper") <= len(rows)
    finally:
        database.close()
