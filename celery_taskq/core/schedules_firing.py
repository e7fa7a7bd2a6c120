"""Firing schedules in the OnProcess tick: one task per slot, and the misfire policy.

Each tick reads the schedules from ``TaskSchedules``, so an edit reaches a running beat at its
next tick. For each unpaused schedule whose next slot has come, one transaction writes the
slot's ``TaskScheduleSlots`` row, the ``TaskQueue`` row (``QueuedById`` ``schedule:<name>``)
and the schedule's next slot; a second beat's tick of the same slot finds the slot row there
and writes nothing (:func:`~celery_taskq.core.statements.schedules.claim_slot`).

**Misfires.** A slot is *missed* when no tick fired it within the grace of
:func:`misfire_grace` (two process intervals) after its time: beat was down, or the
schedule is faster than the ticks. When a tick finds missed slots, one slot row records
them: ``MissedSlots`` (how many), ``FirstMissedOn`` (the first), ``PolicyApplied``:

* ``catch_up_once``: one task is created for all of them, on the row of the latest slot;
* ``skip``: no task for them. The latest slot fires normally if it is within the grace;
  if it is missed too, its row records the skip with no task, and the schedule waits for
  its next slot.

So every missed slot is accounted for: the slots of a schedule between ``FirstMissedOn`` and
``SlotOn`` are the ones a row's ``MissedSlots`` counts.

:func:`plan_firing` is the policy, pure; :func:`fire_due_schedules` applies it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery_taskq.core import intake
from celery_taskq.core.exceptions import TaskqError
from celery_taskq.core.intake import TaskSpec
from celery_taskq.core.loading import create_task_handler
from celery_taskq.core.schedule_models import MisfirePolicy
from celery_taskq.core.schedules_spec import SCHEDULE_QUEUED_BY_PREFIX
from celery_taskq.core.schedules_timing import Timing, make_timing
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import schedules
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)

MIN_MISFIRE_GRACE_SECONDS = 1.0
"""The grace is never shorter than this, however short the process interval."""


def misfire_grace(settings: Settings) -> timedelta:
    """How late a slot may fire and still be on time: two process intervals (one tick lost)."""
    return timedelta(seconds=max(2 * settings.process_interval, MIN_MISFIRE_GRACE_SECONDS))


@dataclass(frozen=True)
class FiringPlan:
    """What a tick does for one due schedule."""

    slot_on: datetime
    """The slot whose row records the tick: the latest slot that has come."""
    fire: bool
    """Whether a task is created."""
    missed_slots: int
    first_missed_on: datetime | None
    policy_applied: str | None
    """The misfire policy applied, or ``None`` when no slot was missed."""
    next_run_on: datetime


def plan_firing(
    timing: Timing, next_run_on: datetime, now: datetime, grace: timedelta, policy: str
) -> FiringPlan | None:
    """The plan for a schedule whose first unfired slot is ``next_run_on``; ``None`` if no
    slot has come yet."""
    count, latest = timing.due_slots(next_run_on, now)
    if latest is None:
        return None
    latest_on_time = now - latest <= grace
    missed = count - 1 if latest_on_time else count
    following = timing.next_after(latest)
    if missed == 0:
        return FiringPlan(latest, True, 0, None, None, following)
    fire = policy == MisfirePolicy.CATCH_UP_ONCE.value or latest_on_time
    return FiringPlan(latest, fire, missed, next_run_on, policy, following)


def fire_due_schedules(database: Database, settings: Settings, now: datetime) -> int:
    """Fire every due, unpaused schedule (one transaction each); return the tasks created.

    A schedule that cannot fire (its handler gone, a stored value no longer valid) is
    logged (``schedule_fire_failed``) and left as it is: it is tried again at the next tick.
    """
    with database.transaction(read_only=True) as connection:
        due = schedules.due_schedule_ids(connection, now)
    created = 0
    grace = misfire_grace(settings)
    for schedule_id in due:
        try:
            created += _fire_one(database, settings, schedule_id, now, grace)
        except TaskqError as exc:
            logger.warning(
                "schedule %s could not fire: %s",
                schedule_id,
                exc,
                extra={"action": "schedule_fire_failed", "schedule_id": schedule_id},
            )
    return created


def _fire_one(
    database: Database, settings: Settings, schedule_id: int, now: datetime, grace: timedelta
) -> int:
    with database.transaction() as connection:
        row = schedules.lock_due_schedule(connection, schedule_id, now)
        if row is None:
            return 0  # another tick holds it, or fired it meanwhile
        timing = make_timing(
            interval=row.interval_seconds, crontab=row.crontab, timezone=row.timezone
        )
        plan = plan_firing(timing, row.next_run_on, now, grace, row.misfire_policy)
        if plan is None:
            return 0
        slot_id = schedules.claim_slot(
            connection,
            schedule_id=schedule_id,
            slot_on=plan.slot_on,
            fired_on=now,
            policy_applied=plan.policy_applied,
            missed_slots=plan.missed_slots,
            first_missed_on=plan.first_missed_on,
        )
        task_id = None
        if slot_id is not None and plan.fire:
            task_id = insert_schedule_task(connection, settings, row, now)
            schedules.set_slot_task(connection, slot_id, task_id)
        schedules.advance_schedule(
            connection, schedule_id, next_run_on=plan.next_run_on, fired_task_id=task_id, now=now
        )
    _log_firing(row.name, plan, task_id, claimed=slot_id is not None)
    return 0 if task_id is None else 1


def insert_schedule_task(
    connection: Any, settings: Settings, row: Any, now: datetime, *, with_run: bool = False
) -> int:
    """Queue the task of schedule ``row`` (its handler, data, options; ``QueuedById`` naming
    it); with ``with_run`` its run is created due at once (run-now). Returns the task's id."""
    values = intake.prepare(
        TaskSpec(
            row.task_handler_class,
            row.task_data,
            max_retries=row.max_retries,
            queued_by=SCHEDULE_QUEUED_BY_PREFIX + row.name,
            title=row.title,
        ),
        create_handler=lambda path: create_task_handler(path, settings.allowed_handler_prefixes),
        now=now,
        max_data_bytes=settings.task_data_max_bytes,
    )
    task_id, _ = intake.insert_one(connection, values, with_run=with_run, raise_duplicate=False)
    return task_id


def _log_firing(name: str, plan: FiringPlan, task_id: int | None, *, claimed: bool) -> None:
    if not claimed:
        logger.debug(
            "schedule %s: slot %s was fired by another tick",
            name,
            plan.slot_on.isoformat(),
            extra={"action": "schedule_slot_taken", "schedule": name},
        )
        return
    if plan.missed_slots:
        logger.warning(
            "schedule %s missed %s slots since %s: %s%s",
            name,
            plan.missed_slots,
            plan.first_missed_on.isoformat() if plan.first_missed_on else "?",
            plan.policy_applied,
            "" if task_id is None else f" (task {task_id})",
            extra={"action": "schedule_misfired", "schedule": name, "queue_id": task_id},
        )
    if task_id is not None:
        logger.info(
            "schedule %s fired slot %s: task %s",
            name,
            plan.slot_on.isoformat(),
            task_id,
            extra={"action": "schedule_fired", "schedule": name, "queue_id": task_id},
        )
