"""What install() sets in a Celery app's configuration, and what it leaves to the app."""

from __future__ import annotations

from celery import Celery

from celery_taskq.celery import INSTALL_DEFAULTS, install
from celery_taskq.core.settings import Settings

SETTINGS = Settings(broker_url="redis://127.0.0.1:6399/3")


def test_an_app_that_is_silent_gets_events_for_flower_and_no_prefetch() -> None:
    app = Celery("silent")
    install(app, settings=SETTINGS)
    assert {key: app.conf[key] for key in INSTALL_DEFAULTS} == {
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "worker_prefetch_multiplier": 1,
    }


def test_what_the_app_sets_itself_is_kept() -> None:
    class Config:
        worker_send_task_events = False
        worker_prefetch_multiplier = 4

    from_object = Celery("from-object")
    from_object.config_from_object(Config)
    install(from_object, settings=SETTINGS)
    set_directly = Celery("set-directly")
    set_directly.conf.task_send_sent_event = False
    set_directly.conf.task_track_started = False
    install(set_directly, settings=SETTINGS)

    assert from_object.conf.worker_send_task_events is False
    assert from_object.conf.worker_prefetch_multiplier == 4
    assert from_object.conf.task_send_sent_event is True  # not set by the app: installed
    assert set_directly.conf.task_send_sent_event is False
    assert set_directly.conf.task_track_started is False
    assert set_directly.conf.worker_send_task_events is True
