"""The schedules service: add, edit, remove, pause, resume, run now, list, and the config sync.

Every change is checked before anything is written (:mod:`~celery_taskq.core.schedules_spec`)
and is one transaction; a running beat picks it up at its next tick, since each tick reads
the table (:mod:`~celery_taskq.core.schedules_firing`).

* A new or re-timed schedule's first slot is the first one after now; a resumed schedule
  goes on from the first slot after now too (slots passed while paused are not misfires).
* ``run_now`` enqueues the schedule's task at once, outside its slots: it neither takes nor
  moves a slot.
* Schedules from ``taskq_schedules`` (source ``config``) are rewritten by each sync
  (:meth:`ScheduleService.sync`), except their pause state, which belongs to the operator;
  an entry dropped from the config stays until ``remove``-d.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from celery_taskq.core import registry
from celery_taskq.core.clock import Clock, utc_now
from celery_taskq.core.exceptions import InvalidArgumentError, NotFoundError
from celery_taskq.core.loading import create_task_handler
from celery_taskq.core.schedule_models import ScheduleSource
from celery_taskq.core.schedules_firing import insert_schedule_task
from celery_taskq.core.schedules_spec import (
    CheckedSchedule,
    ScheduleSpec,
    check,
    check_name,
    edited,
    stored_spec,
)
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import schedules
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)


class ScheduleNotFoundError(NotFoundError):
    """No schedule has that name."""


class DuplicateScheduleError(InvalidArgumentError):
    """A schedule with that name exists already."""


@dataclass(frozen=True)
class ScheduleSnapshot:
    """A schedule as stored, with its last task's status."""

    name: str
    handler: str
    data: Any
    interval: int | None
    crontab: str | None
    timezone: str
    misfire_policy: str
    paused: bool
    title: str | None
    max_retries: int | None
    source: str
    created_on: datetime
    updated_on: datetime
    next_run_on: datetime
    last_run_on: datetime | None
    last_task_id: int | None
    last_status: str | None

    @property
    def timing(self) -> str:
        """``every N s`` or ``cron <fields> <zone>``."""
        if self.interval is not None:
            return f"every {self.interval} s"
        return f"cron {self.crontab} {self.timezone}"

    @classmethod
    def from_row(cls, row: Any) -> ScheduleSnapshot:
        """A snapshot of a ``TaskSchedules`` row read by the statements."""
        last_status = row.last_status
        return cls(
            name=row.name,
            handler=row.task_handler_class,
            data=row.task_data,
            interval=row.interval_seconds,
            crontab=row.crontab,
            timezone=row.timezone,
            misfire_policy=row.misfire_policy,
            paused=bool(row.paused),
            title=row.title,
            max_retries=row.max_retries,
            source=row.source,
            created_on=row.created_on,
            updated_on=row.updated_on,
            next_run_on=row.next_run_on,
            last_run_on=row.last_run_on,
            last_task_id=row.last_task_id,
            last_status=None
            if last_status is None
            else str(getattr(last_status, "value", last_status)),
        )


@dataclass(frozen=True)
class SlotSnapshot:
    """One slot a tick dealt with: the task it created, and the slots missed before it."""

    slot_on: datetime
    fired_on: datetime
    task_id: int | None
    policy_applied: str | None
    missed_slots: int
    first_missed_on: datetime | None


def _json_values(snapshot: ScheduleSnapshot | SlotSnapshot) -> dict[str, Any]:
    # Not dataclasses.asdict: it copies the task data recursively, and stored data may be
    # nested deeper than Python recurses.
    values = {field.name: getattr(snapshot, field.name) for field in fields(snapshot)}
    for key, value in values.items():
        if isinstance(value, datetime):
            values[key] = value.isoformat()
    return values


def snapshot_json(snapshot: ScheduleSnapshot) -> dict[str, Any]:
    """A schedule as JSON values (times as ISO 8601), for the CLI's ``--json`` and the API."""
    return _json_values(snapshot)


def slot_json(slot: SlotSnapshot) -> dict[str, Any]:
    """A slot as JSON values."""
    return _json_values(slot)


class ScheduleService:
    """Defines and operates schedules over ``TaskSchedules``."""

    def __init__(self, database: Database, settings: Settings, *, clock: Clock = utc_now) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock
        registry.import_modules(settings.imports)

    def _check(self, spec: ScheduleSpec, now: datetime) -> CheckedSchedule:
        return check(
            spec,
            create_handler=lambda path: create_task_handler(
                path, self.settings.allowed_handler_prefixes
            ),
            now=now,
            max_data_bytes=self.settings.task_data_max_bytes,
        )

    def add(self, spec: ScheduleSpec, *, paused: bool = False) -> ScheduleSnapshot:
        """Add a schedule; refuse a taken name, or any part that is not valid."""
        now = self.clock()
        checked = self._check(spec, now)
        values = {
            **checked.values,
            "paused": paused,
            "source": ScheduleSource.API.value,
            "created_on": now,
            "updated_on": now,
            "next_run_on": checked.timing.next_after(now),
        }
        with self.database.transaction() as connection:
            if schedules.insert_schedule(connection, values) is None:
                raise DuplicateScheduleError(f"a schedule named {spec.name!r} exists already")
            row = schedules.schedule_by_name(connection, spec.name)
        logger.info("schedule %s added", spec.name, extra={"action": "schedule_added"})
        return ScheduleSnapshot.from_row(row)

    def edit(self, name: str, changes: Mapping[str, Any]) -> ScheduleSnapshot:
        """Change some parts of a schedule (``handler``, ``data``, ``interval``, ``crontab``,
        ``timezone``, ``misfire_policy``, ``title``, ``max_retries``)."""
        now = self.clock()
        with self.database.transaction() as connection:
            row = self._existing(connection, name, lock=True)
            checked = self._check(edited(stored_spec(row), changes), now)
            values: dict[str, Any] = {**checked.values, "updated_on": now}
            timing_changed = any(
                values[key] != getattr(row, key)
                for key in ("interval_seconds", "crontab", "timezone")
            )
            if timing_changed:
                values["next_run_on"] = checked.timing.next_after(now)
            schedules.update_schedule(connection, name, values)
            row = schedules.schedule_by_name(connection, name)
        logger.info("schedule %s edited", name, extra={"action": "schedule_edited"})
        return ScheduleSnapshot.from_row(row)

    def remove(self, name: str) -> None:
        """Remove a schedule and its slot rows; the tasks it created stay."""
        check_name(name)
        with self.database.transaction() as connection:
            if not schedules.delete_schedule(connection, name):
                raise ScheduleNotFoundError(f"no schedule named {name!r}")
        logger.info("schedule %s removed", name, extra={"action": "schedule_removed"})

    def pause(self, name: str) -> ScheduleSnapshot:
        """Stop a schedule firing until it is resumed."""
        return self._set_paused(name, paused=True)

    def resume(self, name: str) -> ScheduleSnapshot:
        """Let a paused schedule fire again, from its first slot after now."""
        return self._set_paused(name, paused=False)

    def _set_paused(self, name: str, *, paused: bool) -> ScheduleSnapshot:
        now = self.clock()
        with self.database.transaction() as connection:
            row = self._existing(connection, name, lock=True)
            values: dict[str, Any] = {"paused": paused, "updated_on": now}
            if row.paused and not paused:
                timing = self._check(stored_spec(row), now).timing
                values["next_run_on"] = timing.next_after(now)
            schedules.update_schedule(connection, name, values)
            row = schedules.schedule_by_name(connection, name)
        action = "schedule_paused" if paused else "schedule_resumed"
        logger.info("schedule %s %s", name, action[9:], extra={"action": action})
        return ScheduleSnapshot.from_row(row)

    def run_now(self, name: str) -> int:
        """Enqueue the schedule's task now, outside its slots; return the task's id."""
        now = self.clock()
        with self.database.transaction() as connection:
            row = self._existing(connection, name, lock=True)
            task_id = insert_schedule_task(connection, self.settings, row, now, with_run=True)
            schedules.update_schedule(
                connection, name, {"last_run_on": now, "last_task_id": task_id}
            )
        logger.info(
            "schedule %s run now: task %s",
            name,
            task_id,
            extra={"action": "schedule_run_now", "queue_id": task_id},
        )
        return task_id

    def get(self, name: str) -> ScheduleSnapshot:
        """One schedule."""
        check_name(name)
        with self.database.transaction(read_only=True) as connection:
            return ScheduleSnapshot.from_row(self._existing(connection, name))

    def list_schedules(self) -> list[ScheduleSnapshot]:
        """Every schedule, by name."""
        with self.database.transaction(read_only=True) as connection:
            rows = schedules.list_schedules(connection)
        return [ScheduleSnapshot.from_row(row) for row in rows]

    def slots(self, name: str, limit: int = 20) -> list[SlotSnapshot]:
        """The schedule's latest slot rows, newest first."""
        with self.database.transaction(read_only=True) as connection:
            row = self._existing(connection, name)
            rows = schedules.recent_slots(connection, row.id, limit)
        return [
            SlotSnapshot(
                slot.slot_on,
                slot.fired_on,
                slot.task_queue_id,
                slot.policy_applied,
                int(slot.missed_slots),
                slot.first_missed_on,
            )
            for slot in rows
        ]

    def sync(self, specs: Sequence[ScheduleSpec]) -> int:
        """Write the config's schedules: add the new ones, rewrite the changed ones (their
        pause state kept); return how many were added or changed. All are checked first."""
        now = self.clock()
        checked = [self._check(spec, now) for spec in specs]
        changed = 0
        with self.database.transaction() as connection:
            for item in checked:
                changed += self._sync_one(connection, item, now)
        if changed:
            logger.info(
                "%s schedules synced from the config", changed, extra={"action": "schedules_synced"}
            )
        return changed

    def _sync_one(self, connection: Any, item: CheckedSchedule, now: datetime) -> int:
        name = item.values["name"]
        row = schedules.schedule_by_name(connection, name, lock=True)
        if row is None:
            values = {
                **item.values,
                "source": ScheduleSource.CONFIG.value,
                "created_on": now,
                "updated_on": now,
                "next_run_on": item.timing.next_after(now),
            }
            return int(schedules.insert_schedule(connection, values) is not None)
        differs = {key: value for key, value in item.values.items() if getattr(row, key) != value}
        if not differs and row.source == ScheduleSource.CONFIG.value:
            return 0
        values = {**item.values, "source": ScheduleSource.CONFIG.value, "updated_on": now}
        if {"interval_seconds", "crontab", "timezone"} & set(differs):
            values["next_run_on"] = item.timing.next_after(now)
        schedules.update_schedule(connection, name, values)
        return 1

    def _existing(self, connection: Any, name: str, *, lock: bool = False) -> Any:
        check_name(name)
        row = schedules.schedule_by_name(connection, name, lock=lock)
        if row is None:
            raise ScheduleNotFoundError(f"no schedule named {name!r}")
        return row
