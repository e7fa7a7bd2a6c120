"""What install() sets in a Celery app's configuration, and what it leaves to the app.

In one process, without servers: the app's broker is kombu's in-memory transport, and a worker
or beat starting is what it does first (``import_modules``). tests/test_celery.py starts real
ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, beat, signals
from celery.beat import Scheduler
from celery.utils.dispatch import Signal
from kombu.entity import Queue

from celery_taskq.api import enqueue
from celery_taskq.celery import (
    AUDIT_ONLY,
    CREATE_RUNNERS_TASK,
    EVENTS_QUEUE,
    PROCESS_TASK,
    READY_APP_EVENTS,
    RUNNER_TASK,
    RUNNERS_QUEUE,
    create_app,
    install,
)
from celery_taskq.celery.routing import route_queue
from celery_taskq.celery.startup import InternalTaskLogFilter
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.migrate import upgrade_database

SETTINGS = Settings(broker_url="redis://127.0.0.1:6399/3")


CELERY_SETTINGS_INSTALL_LEAVES = (
    "worker_send_task_events",
    "task_send_sent_event",
    "worker_prefetch_multiplier",
    "task_track_started",
    "task_queues",
    "task_routes",
    "task_ignore_result",
)


def test_an_app_that_is_silent_keeps_celery_s_own_settings() -> None:
    # Given an app that sets nothing, and one just like it without celery_taskq
    app, plain = Celery("silent"), Celery("plain")
    # When celery_taskq is installed on one of them and the app starts
    install(app, settings=SETTINGS)
    started(app)
    # Then its workers and callers send the events, reserve the messages, report the states and
    # consume the queues of the plain app: Celery's defaults
    installed = {key: app.conf[key] for key in CELERY_SETTINGS_INSTALL_LEAVES}
    assert installed == {key: plain.conf[key] for key in CELERY_SETTINGS_INSTALL_LEAVES}
    assert installed["worker_send_task_events"] is False
    assert installed["task_send_sent_event"] is False


def test_the_ready_app_reserves_one_message_per_pool_process_and_sends_task_events() -> None:
    app = create_app(SETTINGS)
    assert app.conf.worker_prefetch_multiplier == 1
    assert {key: app.conf[key] for key in READY_APP_EVENTS} == {
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }


def test_what_the_app_sets_itself_is_kept() -> None:
    class Config:
        worker_send_task_events = True
        worker_prefetch_multiplier = 4

    from_object = Celery("from-object")
    from_object.config_from_object(Config)
    install(from_object, settings=SETTINGS)
    set_directly = Celery("set-directly")
    set_directly.conf.task_send_sent_event = True
    set_directly.conf.task_track_started = True
    install(set_directly, settings=SETTINGS)

    assert from_object.conf.worker_send_task_events is True
    assert from_object.conf.worker_prefetch_multiplier == 4
    assert set_directly.conf.task_send_sent_event is True
    assert set_directly.conf.task_track_started is True


# --- install() before or after the app configures itself --------------------------------------


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


class AppConfig:
    """What an app loads with ``config_from_object``: its broker and a taskq_* key."""

    broker_url = "memory://"
    taskq_database_url = "sqlite:///from-config-object.db"


def configure_app(app: Celery) -> None:
    """The three ways an app configures itself that could drop what install() added."""
    app.config_from_object(AppConfig)
    app.conf.update(taskq_process_interval=0.5)
    app.conf.beat_schedule = {"app.nightly": {"task": "app.nightly", "schedule": 86400}}


def declared(*names: str) -> list[Queue]:
    """A ``task_queues`` value declaring ``names``."""
    return [Queue(name) for name in names]  # type: ignore[no-untyped-call]


def started(app: Celery) -> Celery:
    """What a worker or a beat does first as it starts: import the app's modules."""
    app.loader.import_default_modules()
    return app


@pytest.mark.usefixtures("restore_celery_signals")
@pytest.mark.parametrize("install_first", [True, False], ids=["install-first", "install-last"])
def test_install_works_before_or_after_the_app_configures_itself(
    install_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TASKQ_DATABASE_URL", "TASKQ_PROCESS_INTERVAL", "TASKQ_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    app = Celery("ordered")
    if install_first:
        state = install(app)
        configure_app(app)
    else:
        configure_app(app)
        state = install(app)
    started(app)
    # The app's own beat entry and broker are kept, celery_taskq's entries are there, with the
    # interval of conf.update(), and the settings come from the config object.
    assert set(app.conf.beat_schedule) == {"app.nightly", PROCESS_TASK, CREATE_RUNNERS_TASK}
    assert app.conf.beat_schedule[PROCESS_TASK]["schedule"] == 0.5
    assert app.conf.broker_url == "memory://"
    assert state.settings.database_url == "sqlite:///from-config-object.db"
    assert state.settings.process_interval == 0.5
    assert app.conf.worker_send_task_events is False  # install() sets no Celery setting
    # No queue is added: the app's workers consume what they consumed before.
    assert not app.conf.task_queues
    assert route_queue(app, PROCESS_TASK) == route_queue(app, RUNNER_TASK) == "celery"


@pytest.mark.usefixtures("restore_celery_signals")
def test_declared_taskq_queues_are_used() -> None:
    app = Celery("queued", broker="memory://")
    app.conf.task_queues = declared("celery", EVENTS_QUEUE, RUNNERS_QUEUE)
    install(app, settings=SETTINGS)
    assert route_queue(app, PROCESS_TASK) == route_queue(app, CREATE_RUNNERS_TASK) == EVENTS_QUEUE
    assert route_queue(app, RUNNER_TASK) == RUNNERS_QUEUE


@pytest.mark.usefixtures("restore_celery_signals")
def test_audit_only_mode_has_no_runner_entry_and_sends_no_runner_task(tmp_path: Path) -> None:
    # Given audit-only mode and a due handler task
    database_url = f"sqlite:///{tmp_path / 'taskq.db'}"
    upgrade_database(database_url)
    settings = Settings(database_url=database_url, handler_runners=False)
    app = Celery("audit-only", broker="memory://")
    state = install(app, settings=settings)
    started(app)
    assert set(app.conf.beat_schedule) == {PROCESS_TASK}
    with app.connection_for_read() as connection:
        connection.SimpleQueue("celery").clear()  # kombu's memory broker is one per process
    enqueue("tests.handlers.Succeed", database_url=database_url)  # the enqueue hook runs
    # When the events run, and a runner task is delivered anyway
    assert app.tasks[PROCESS_TASK].apply().get() is not None
    assert app.tasks[CREATE_RUNNERS_TASK].apply().get() == AUDIT_ONLY
    assert app.tasks[RUNNER_TASK].apply().get() == AUDIT_ONLY
    # Then no runner task was ever sent, and no runner registered
    with app.connection_for_read() as connection:
        assert connection.SimpleQueue("celery").qsize() == 0
    assert state.service.runner_demand().live_runners == 0


@pytest.mark.usefixtures("restore_celery_signals")
def test_runner_tasks_are_sent_only_for_scheduled_runs(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'taskq.db'}"
    upgrade_database(database_url)
    app = Celery("on-demand", broker="memory://")
    # (a tick slot per millisecond: each tick below is a new one)
    settings = Settings(
        database_url=database_url, task_runner_limit=2, create_runners_interval=1e-3
    )
    state = install(app, settings=settings)
    started(app)
    queue = app.connection_for_read().SimpleQueue("celery")
    queue.clear()  # kombu's memory broker is one per process
    try:
        # Given no handler work: the ticks send no runner task
        app.tasks[PROCESS_TASK].apply()
        assert app.tasks[CREATE_RUNNERS_TASK].apply().get() == "runner tasks sent: 0"
        assert queue.qsize() == 0
        # When five tasks are due, the tick sends TaskRunnerLimit (2) runner tasks, no more
        for _ in range(5):
            state.service.add_task("tests.handlers.Succeed", create_run=True)
        time.sleep(0.002)
        assert app.tasks[CREATE_RUNNERS_TASK].apply().get() == "runner tasks sent: 2"
        assert queue.qsize() == 2
    finally:
        queue.clear()
        queue.close()


@pytest.mark.usefixtures("restore_celery_signals")
def test_a_worker_not_consuming_the_taskq_queue_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Celery("picky", broker="memory://")
    app.conf.task_queues = declared("celery", "other")
    install(app, settings=SETTINGS)
    started(app).amqp.queues.select(["other"])  # as `celery worker -Q other` does
    worker = SimpleNamespace(app=app)
    for _ in range(2):
        signals.celeryd_after_setup.send(sender="w@h", instance=worker, conf=app.conf)
    (warning,) = [r for r in caplog.records if getattr(r, "action", "") == "install_incomplete"]
    assert warning.levelno == logging.WARNING
    assert "\n" not in warning.getMessage()
    assert "does not consume celery, where celery_taskq's beat ticks" in warning.getMessage()


class ForgetfulScheduler(Scheduler):  # type: ignore[misc]
    """A scheduler that does not read the app's beat_schedule."""

    def setup_schedule(self) -> None:
        self.data: dict[str, Any] = {}


@pytest.mark.usefixtures("restore_celery_signals")
def test_a_beat_whose_schedule_lacks_the_events_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Celery("forgetful", broker="memory://")
    install(app, settings=SETTINGS)
    started(app)
    service = beat.Service(app=app, scheduler_cls=ForgetfulScheduler)
    for _ in range(2):
        signals.beat_init.send(sender=service)
    (warning,) = [r for r in caplog.records if getattr(r, "action", "") == "install_incomplete"]
    assert "beat's schedule (ForgetfulScheduler) lacks taskq.on_process" in warning.getMessage()
    # A scheduler that reads beat_schedule has them: no warning
    caplog.clear()
    signals.beat_init.send(sender=beat.Service(app=app, scheduler_cls=Scheduler))
    assert not [r for r in caplog.records if getattr(r, "action", "") == "install_incomplete"]


def test_celerys_lines_about_internal_tasks_become_debug_lines() -> None:
    logger = logging.getLogger("tests.quieted")
    quiet = InternalTaskLogFilter()

    def record(level: int, message: str, *args: Any) -> logging.LogRecord:
        return logger.makeRecord(logger.name, level, __file__, 1, message, args, None)

    received = record(logging.INFO, "Task %(name)s[%(id)s] received", {"name": RUNNER_TASK})
    sending = record(logging.INFO, "Scheduler: Sending due task %s (%s)", "x", PROCESS_TASK)
    app_task = record(logging.INFO, "Task %(name)s[%(id)s] received", {"name": "app.add"})
    failed = record(logging.ERROR, "Task %(name)s[%(id)s] raised", {"name": PROCESS_TASK})
    logger.setLevel(logging.INFO)
    assert [quiet.filter(r) for r in (received, sending, app_task, failed)] == [
        False,
        False,
        True,
        True,
    ]
    logger.setLevel(logging.DEBUG)
    assert quiet.filter(received)
    assert received.levelno == logging.DEBUG
    assert failed.levelno == logging.ERROR
