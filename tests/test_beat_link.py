"""A beat entry's firing is linked to the entry's name, and Celery sends exactly what it would
without celery_taskq (but the ``taskq_queued_by`` header): in-process, with Celery's own
``Scheduler.apply_async`` over the in-memory broker, on SQLite and PostgreSQL.

A real beat and worker are in ``tests/test_native_outcomes.py``
(``test_beat_entries_are_linked_to_their_names``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, signals
from celery.beat import ScheduleEntry, Scheduler
from sqlalchemy import select

from celery_taskq.celery import install
from celery_taskq.celery.audit_beat import note_entries
from celery_taskq.core.models import TaskQueue
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database

ENTRY = "add every minute"
OPTIONS = {"headers": {"x-own": "kept"}, "queue": "reports", "priority": 3}


def make_app(name: str, database_url: str | None) -> Celery:
    """An app with one plain task and one that opts out of the audit; installed (auditing every
    task, writes committed at once) when ``database_url`` is given."""
    app = Celery(name, broker="memory://")
    app.conf.task_create_missing_queues = True

    @app.task(name="link.add", shared=False)  # type: ignore[untyped-decorator]
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="link.quiet", shared=False, taskq_audit=False)  # type: ignore[untyped-decorator]
    def quiet() -> None:
        """Never audited."""

    if database_url is not None:
        settings = Settings(database_url=database_url, audit_write_behind=False)
        install(app, settings=settings, audit_celery_tasks=True)
    return app


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """What each publish in this test put on the wire (``after_task_publish``)."""
    messages: list[dict[str, Any]] = []

    def capture(
        body: Any = None,
        headers: Any = None,
        exchange: Any = None,
        routing_key: Any = None,
        **_: Any,
    ) -> None:
        messages.append(
            {"body": body, "headers": dict(headers), "exchange": exchange, "key": routing_key}
        )

    signals.after_task_publish.connect(capture, weak=False, dispatch_uid="test-beat-link")
    yield messages
    signals.after_task_publish.disconnect(dispatch_uid="test-beat-link")


class BeatService:
    """What ``beat_init`` is sent with: the ``celery.beat.Service`` of beat's app."""

    def __init__(self, app: Celery, scheduler: Scheduler) -> None:
        self.app = app
        self.scheduler = scheduler


def fire(app: Celery, task: str = "link.add", name: str = ENTRY, **options: Any) -> str:
    """Send an entry through a beat scheduler of ``app`` that beat_init was sent for."""
    scheduler = Scheduler(app, lazy=True)
    signals.beat_init.send(sender=BeatService(app, scheduler))
    entry = ScheduleEntry(
        name=name,
        task=task,
        schedule=60.0,
        args=(2, 3) if task == "link.add" else (),
        options={**OPTIONS, **options},
        app=app,
    )
    return str(scheduler.apply_async(entry, advance=False).id)


def queued_by(database: Database, celery_task_id: str) -> str | None:
    """``QueuedById`` of the task's row (which must exist)."""
    with database.transaction(read_only=True) as connection:
        return connection.execute(
            select(TaskQueue.queued_by_id).where(TaskQueue.celery_task_id == celery_task_id)
        ).scalar_one()


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A message without what differs between any two sends (the task id)."""
    headers = {k: v for k, v in message["headers"].items() if k not in ("id", "root_id")}
    return {**message, "headers": headers}


def test_a_beat_entry_is_linked_and_its_message_is_celerys_own(
    database_url: str, database: Database, published: list[dict[str, Any]]
) -> None:
    plain = make_app("plain", None)
    audited = make_app("audited", database_url)

    fire(plain)
    celery_id = fire(audited)

    assert queued_by(database, celery_id) == f"beat:{ENTRY}"
    without, with_audit = (comparable(message) for message in published)
    assert with_audit["headers"].pop("taskq_queued_by") == f"beat:{ENTRY}"
    assert with_audit == without  # args, kwargs, routing and the entry's own headers
    assert without["headers"]["x-own"] == "kept"
    assert without["key"] == "reports"
    assert without["body"][:2] == ((2, 3), {}) or without["body"][:2] == ([2, 3], {})


def test_an_entrys_own_queued_by_wins_and_unaudited_tasks_are_left_alone(
    database_url: str, database: Database, published: list[dict[str, Any]]
) -> None:
    app = make_app("audited", database_url)

    own = fire(app, headers={"taskq_queued_by": "ops-team"})
    fire(app, task="link.quiet", name="quiet entry")
    direct = app.tasks["link.add"].apply_async((1, 1)).id  # not beat

    assert queued_by(database, own) == "ops-team"
    assert queued_by(database, str(direct)) is None
    quiet = next(m for m in published if m["headers"]["task"] == "link.quiet")
    assert "taskq_queued_by" not in quiet["headers"]
    assert "taskq_queued_by" not in published[-1]["headers"]


def test_the_scheduler_is_wrapped_once_and_passes_its_arguments_through() -> None:
    calls: list[tuple[Any, ...]] = []

    class Recording:
        def apply_async(self, entry: Any, producer: Any = None, advance: bool = True) -> str:
            calls.append((entry, producer, advance))
            return "sent"

    scheduler = Recording()
    note_entries(scheduler)
    wrapped = scheduler.apply_async
    note_entries(scheduler)

    assert scheduler.apply_async is wrapped
    assert scheduler.apply_async("entry", producer="p", advance=False) == "sent"
    assert calls == [("entry", "p", False)]
