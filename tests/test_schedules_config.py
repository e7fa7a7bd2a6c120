"""``taskq_schedules`` in the Celery config: written to the table when a worker starts, on
SQLite and PostgreSQL; a bad entry is refused with its reason and nothing is written."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, signals
from celery.schedules import crontab, schedule
from celery.utils.dispatch.signal import Signal

from celery_taskq.celery.install import install
from celery_taskq.core.schedule_models import TaskSchedule
from celery_taskq.core.schedules import ScheduleService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.helpers import count

HANDLER = "tests.handlers.Succeed"


@pytest.fixture
def restore_celery_signals() -> Iterator[None]:
    """Take back the receivers that install() connects to Celery's process-wide signals."""
    saved = {
        signal: list(signal.receivers)
        for signal in vars(signals).values()
        if isinstance(signal, Signal)
    }
    yield
    for signal, receivers in saved.items():
        signal.receivers[:] = receivers
        signal.sender_receivers_cache.clear()


def start_worker_of(app: Celery) -> None:
    """What a worker of ``app`` sends once it is set up (its engine closed after)."""
    try:
        signals.celeryd_after_setup.send(
            sender="worker@test", instance=SimpleNamespace(app=app), conf=app.conf
        )
    finally:
        app.taskq.service.database.close()


def app_with(settings: Settings, entries: Any) -> Celery:
    """An app with celery_taskq installed and ``taskq_schedules`` set to ``entries``."""
    app = Celery("schedules-config", broker="memory://")
    app.conf.update(timezone="Europe/Paris", taskq_schedules=entries)
    install(app, settings=settings)
    return app


@pytest.mark.usefixtures("restore_celery_signals")
def test_a_workers_start_writes_the_configs_schedules_keeping_an_operators_pause(
    settings: Settings, database: Database
) -> None:
    # Given a config with an interval, a Celery crontab and a Celery schedule
    entries = {
        "every-5-min": {"task": HANDLER, "schedule": timedelta(minutes=5), "kwargs": {"n": 1}},
        "weekday-9am": {
            "task": HANDLER,
            "schedule": crontab(minute=0, hour=9, day_of_week="mon-fri"),
            "options": {"misfire_policy": "skip", "title": "Morning"},
        },
        "hourly": {"task": HANDLER, "schedule": schedule(run_every=3600)},
    }
    # When a worker of the app starts
    start_worker_of(app_with(settings, entries))
    # Then the table holds them, the crontab in the app's timezone
    service = ScheduleService(database, settings)
    by_name = {snapshot.name: snapshot for snapshot in service.list_schedules()}
    assert (by_name["every-5-min"].interval, by_name["every-5-min"].data) == (300, {"n": 1})
    weekday = by_name["weekday-9am"]
    assert (weekday.crontab, weekday.timezone) == ("0 9 * * mon-fri", "Europe/Paris")
    assert (weekday.misfire_policy, weekday.title, weekday.source) == ("skip", "Morning", "config")
    assert by_name["hourly"].interval == 3600
    # When an operator pauses one and the config changes its timing, then a worker starts
    service.pause("hourly")
    entries["hourly"] = {"task": HANDLER, "schedule": 7200}
    start_worker_of(app_with(settings, entries))
    # Then the definition is the config's, and the pause is kept
    hourly = service.get("hourly")
    assert (hourly.interval, hourly.paused) == (7200, True)


@pytest.mark.usefixtures("restore_celery_signals")
def test_a_bad_entry_is_logged_with_its_reason_and_nothing_is_written(
    settings: Settings, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a config whose second entry names a crontab with an hour out of range
    entries = {
        "good": {"task": HANDLER, "schedule": 60},
        "bad": {"task": HANDLER, "schedule": "0 25 * * *"},
    }
    # When a worker starts
    with caplog.at_level(logging.ERROR):
        start_worker_of(app_with(settings, entries))
    # Then the error names the entry and the reason, and no schedule is written
    assert "schedule 'bad': crontab hour '25': 25 is outside 0-23" in caplog.text
    assert count(database, TaskSchedule) == 0
