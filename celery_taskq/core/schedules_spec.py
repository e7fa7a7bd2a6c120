"""A schedule's definition, checked before anything is written, and ``taskq_schedules`` entries.

:func:`check` refuses, with a message naming what is wrong, an empty or over-long name, an
unknown handler or one the allow-list refuses, task data the handler (or the data limits)
refuses, a bad interval, a bad crontab, an unknown timezone, an unknown misfire policy and a
bad ``max_retries`` or title: the task a slot will enqueue is checked as ``enqueue`` checks
it (:func:`celery_taskq.core.intake.prepare`), so a firing never meets a refusal it could have
met now.

A ``taskq_schedules`` entry is shaped like a ``beat_schedule`` entry
(:func:`from_config_entry`)::

    {"task": "myapp.reports.Send", "schedule": 300,   # seconds, a crontab string or mapping
     "data": {...},                                   # or "kwargs"
     "options": {"timezone": "Europe/Paris", "misfire_policy": "skip",
                 "title": "...", "max_retries": 3}}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from celery_taskq.core import intake
from celery_taskq.core.exceptions import InvalidArgumentError, InvalidTaskError
from celery_taskq.core.handlers import TaskHandler
from celery_taskq.core.intake import TaskSpec
from celery_taskq.core.schedule_models import MisfirePolicy
from celery_taskq.core.schedules_timing import Timing, make_timing
from celery_taskq.core.storage.storable import text_problem

SCHEDULE_QUEUED_BY_PREFIX = "schedule:"
"""``QueuedById`` of a task a schedule created: ``schedule:<name>``."""

MAX_NAME_LENGTH = 200
"""A name's longest length, so that ``schedule:<name>`` fits ``QueuedById``."""

DEFAULT_TIMEZONE = "UTC"
"""A schedule's timezone when none is given (config entries take the app's ``timezone``)."""

ENTRY_KEYS = frozenset({"task", "schedule", "data", "kwargs", "args", "options"})
"""The keys a ``taskq_schedules`` entry may have."""

OPTION_KEYS = frozenset({"timezone", "misfire_policy", "title", "max_retries"})
"""The keys of an entry's ``options``."""


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule's definition: the arguments of :func:`celery_taskq.add_schedule` as a value."""

    name: str
    handler: str
    data: Any = None
    interval: int | None = None
    crontab: str | Mapping[str, Any] | None = None
    timezone: str = DEFAULT_TIMEZONE
    misfire_policy: str = MisfirePolicy.CATCH_UP_ONCE.value
    title: str | None = None
    max_retries: int | None = None


def check_name(name: Any) -> str:
    """A schedule name: a non-empty string of at most 200 characters, without control
    characters or ``/``."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(f"a schedule name must be a non-empty string, not {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(
            f"the schedule name is {len(name)} characters long; at most {MAX_NAME_LENGTH}"
        )
    if (problem := text_problem(name)) is not None or any(ord(char) < 32 for char in name):
        raise InvalidArgumentError(f"the schedule name {problem or 'has control characters'}")
    if "/" in name:
        raise InvalidArgumentError(f"the schedule name {name!r} has a '/' (names go in URLs)")
    return name


def check_policy(policy: Any) -> str:
    """A misfire policy's value, or a refusal naming the known ones."""
    known = [member.value for member in MisfirePolicy]
    if policy not in known:
        raise InvalidArgumentError(
            f"unknown misfire policy {policy!r}: give one of {', '.join(known)}"
        )
    return str(policy)


@dataclass(frozen=True)
class CheckedSchedule:
    """A checked definition: the ``TaskSchedules`` values it sets, and its timing."""

    values: dict[str, Any]
    timing: Timing


def check(
    spec: ScheduleSpec,
    *,
    create_handler: Callable[[str], TaskHandler],
    now: datetime,
    max_data_bytes: int,
) -> CheckedSchedule:
    """Check every part of ``spec``; the definition's column values (attribute names)."""
    name = check_name(spec.name)
    try:
        timing = make_timing(interval=spec.interval, crontab=spec.crontab, timezone=spec.timezone)
        policy = check_policy(spec.misfire_policy)
        task = intake.prepare(
            TaskSpec(
                spec.handler,
                spec.data,
                max_retries=spec.max_retries,
                queued_by=SCHEDULE_QUEUED_BY_PREFIX + name,
                title=spec.title,
            ),
            create_handler=create_handler,
            now=now,
            max_data_bytes=max_data_bytes,
        )
    except InvalidTaskError as exc:
        raise type(exc)(f"schedule {name!r}: {exc}") from exc
    values = {
        "name": name,
        "task_handler_class": task["task_handler_class"],
        "task_data": task["task_data"],
        "interval_seconds": timing.interval,
        "crontab": None if timing.crontab is None else timing.crontab.text,
        "timezone": spec.timezone,
        "misfire_policy": policy,
        "title": task["title"],
        "max_retries": spec.max_retries,
    }
    return CheckedSchedule(values, timing)


def stored_spec(row: Any) -> ScheduleSpec:
    """The definition a stored ``TaskSchedules`` row holds (for an edit of some of its parts)."""
    return ScheduleSpec(
        name=row.name,
        handler=row.task_handler_class,
        data=row.task_data,
        interval=row.interval_seconds,
        crontab=row.crontab,
        timezone=row.timezone,
        misfire_policy=row.misfire_policy,
        title=row.title,
        max_retries=row.max_retries,
    )


def edited(spec: ScheduleSpec, changes: Mapping[str, Any]) -> ScheduleSpec:
    """``spec`` with ``changes``; an interval replaces a crontab and the other way round."""
    known = {"handler", "data", "interval", "crontab", "timezone", "misfire_policy"}
    known |= {"title", "max_retries"}
    unknown = set(changes) - known
    if unknown:
        raise InvalidArgumentError(
            f"unknown schedule fields: {', '.join(sorted(map(str, unknown)))}"
            f" (known: {', '.join(sorted(known))})"
        )
    updates = dict(changes)
    if updates.get("interval") is not None:
        updates.setdefault("crontab", None)
    if updates.get("crontab") is not None:
        updates.setdefault("interval", None)
    return replace(spec, **updates)


def from_config_entry(name: Any, entry: Any, *, default_timezone: str) -> ScheduleSpec:
    """A :class:`ScheduleSpec` from one ``taskq_schedules`` entry (see the module)."""
    check_name(name)
    if not isinstance(entry, Mapping):
        raise InvalidArgumentError(f"taskq_schedules[{name!r}] must be a mapping, not {entry!r}")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise InvalidArgumentError(
            f"taskq_schedules[{name!r}]: unknown keys {', '.join(sorted(map(str, unknown)))}"
            f" (known: {', '.join(sorted(ENTRY_KEYS))})"
        )
    if "task" not in entry or "schedule" not in entry:
        raise InvalidArgumentError(f"taskq_schedules[{name!r}] needs 'task' and 'schedule'")
    if entry.get("args"):
        raise InvalidArgumentError(
            f"taskq_schedules[{name!r}]: a handler takes task data, not 'args'; give 'data'"
        )
    if "data" in entry and "kwargs" in entry:
        raise InvalidArgumentError(f"taskq_schedules[{name!r}]: give 'data' or 'kwargs', not both")
    options = entry.get("options") or {}
    if not isinstance(options, Mapping) or set(options) - OPTION_KEYS:
        raise InvalidArgumentError(
            f"taskq_schedules[{name!r}]['options'] may hold only {', '.join(sorted(OPTION_KEYS))}"
        )
    interval, crontab = timing_of(entry["schedule"], name)
    return ScheduleSpec(
        name=name,
        handler=entry["task"],
        data=entry.get("data", entry.get("kwargs")),
        interval=interval,
        crontab=crontab,
        timezone=options.get("timezone", default_timezone),
        misfire_policy=options.get("misfire_policy", MisfirePolicy.CATCH_UP_ONCE.value),
        title=options.get("title"),
        max_retries=options.get("max_retries"),
    )


def timing_of(schedule: Any, name: str) -> tuple[int | None, str | Mapping[str, Any] | None]:
    """An entry's ``schedule``: seconds (a number or ``timedelta``), or a crontab."""
    if isinstance(schedule, timedelta):
        schedule = schedule.total_seconds()
    if isinstance(schedule, float) and schedule.is_integer():
        schedule = int(schedule)
    if isinstance(schedule, int) and not isinstance(schedule, bool):
        return schedule, None
    if isinstance(schedule, str | Mapping):
        return None, schedule
    raise InvalidArgumentError(
        f"taskq_schedules[{name!r}]['schedule'] must be whole seconds, a timedelta or a crontab "
        f"(a string or a mapping), not {schedule!r}"
    )
