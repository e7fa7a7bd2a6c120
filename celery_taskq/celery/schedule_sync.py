"""``taskq_schedules`` in the app's Celery config, written to ``TaskSchedules`` at start.

A worker (``celeryd_after_setup``) and a beat (``beat_init``) of the installed app sync the
config's entries (:meth:`~celery_taskq.core.schedules.ScheduleService.sync`): new ones are
added, changed ones rewritten, an operator's pause kept. The entries are shaped like
``beat_schedule``'s (:mod:`celery_taskq.core.schedules_spec`); a ``schedule`` may also be a
Celery ``crontab`` or ``schedule`` object, read here as its fields or its seconds. Every entry
is checked before any is written: one bad entry is logged (``schedules_sync_failed``) with
what is wrong, and nothing of the config is written. The sync never stops the worker or beat.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery, signals
from celery.schedules import crontab, schedule

from celery_taskq.celery.state import TaskqCelery
from celery_taskq.core.exceptions import TaskqError
from celery_taskq.core.schedules import ScheduleService
from celery_taskq.core.schedules_spec import DEFAULT_TIMEZONE, ScheduleSpec, from_config_entry
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)

CONFIG_KEY = "taskq_schedules"
"""The Celery config key holding the schedules, shaped like ``beat_schedule``."""


def plain_timing(value: Any) -> Any:
    """A Celery ``crontab`` as a mapping of its fields, a ``schedule`` as its interval; any
    other value as it is."""
    if isinstance(value, crontab):
        return {
            "minute": str(value._orig_minute),
            "hour": str(value._orig_hour),
            "day_of_month": str(value._orig_day_of_month),
            "month_of_year": str(value._orig_month_of_year),
            "day_of_week": str(value._orig_day_of_week),
        }
    if isinstance(value, schedule):
        return value.run_every
    return value


def config_specs(app: Celery) -> list[ScheduleSpec]:
    """The app's ``taskq_schedules`` as checked-shape specs (refusing a malformed entry)."""
    entries = app.conf.get(CONFIG_KEY) or {}
    if not isinstance(entries, Mapping):
        raise TaskqError(f"{CONFIG_KEY} must be a mapping of names to entries, not {entries!r}")
    default_timezone = str(app.conf.get("timezone") or DEFAULT_TIMEZONE)
    specs = []
    for name, entry in entries.items():
        if isinstance(entry, Mapping) and "schedule" in entry:
            entry = {**entry, "schedule": plain_timing(entry["schedule"])}
        specs.append(from_config_entry(name, entry, default_timezone=default_timezone))
    return specs


def sync_config_schedules(app: Celery, state: TaskqCelery) -> int:
    """Write the app's ``taskq_schedules`` to the table; how many were added or changed.

    A refusal or a database error is logged, never raised into the worker's or beat's start.
    """
    database: Database | None = None
    try:
        specs = config_specs(app)
        if not specs:
            return 0
        settings = state.settings
        # An engine of its own: an embedded beat is a child forked from the worker, whose
        # connections it must not share.
        database = Database(settings.database_url, schema=settings.db_schema)
        return ScheduleService(database, settings).sync(specs)
    except TaskqError as exc:
        logger.error(
            "celery_taskq: %s not written: %s",
            CONFIG_KEY,
            exc,
            extra={"action": "schedules_sync_failed"},
        )
        return 0
    finally:
        if database is not None:
            database.close()


def connect_schedule_sync(app: Celery, state: TaskqCelery) -> None:
    """Sync ``taskq_schedules`` when a worker or a beat of ``app`` starts."""
    uid = f"celery_taskq-schedules-{id(app)}"

    def on_beat_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            sync_config_schedules(app, state)

    def on_worker_setup(instance: Any = None, **_: Any) -> None:
        if getattr(instance, "app", None) is app:
            sync_config_schedules(app, state)

    signals.beat_init.connect(on_beat_init, weak=False, dispatch_uid=uid + "-beat")
    signals.celeryd_after_setup.connect(on_worker_setup, weak=False, dispatch_uid=uid + "-worker")
