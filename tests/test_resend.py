"""Re-sending a native Celery task from its record, on SQLite and PostgreSQL: what is refused
(and writes nothing), the new row, the message published through a real Celery app (kombu's
in-memory transport), a publish that fails, and the HTTP API's and dashboard's actions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select

from celery_taskq.celery.resend import resend_task
from celery_taskq.cli import main
from celery_taskq.core.exceptions import (
    ConfigurationError,
    InvalidArgumentError,
    PublishError,
    TaskNotFoundError,
)
from celery_taskq.core.models import RunStatus, TaskQueue
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from tests.conftest import FakeClock
from tests.web_support import TOKEN, web_settings

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def native(database: Database, clock: FakeClock, **columns: Any) -> int:
    """A native task's row; by default one that failed for good."""
    values = {
        "task_handler_class": "celery:app.send_mail",
        "task_data": {"args": ["a@b.c"], "kwargs": {"subject": "hi"}},
        "queued_on": clock.now - timedelta(hours=2),
        "scheduled_on": clock.now - timedelta(hours=2),
        "queued_by_id": "user-7",
        "max_retries": 1,
        "task_runs_failed": 1,
        "last_status": RunStatus.ERROR,
        "celery_task_id": str(uuid.uuid4()),
        **columns,
    }
    with database.transaction() as connection:
        return int(
            connection.execute(
                insert(TaskQueue).values(**values).returning(TaskQueue.id)
            ).scalar_one()
        )


def rows(database: Database) -> int:
    with database.transaction(read_only=True) as connection:
        return int(connection.execute(select(func.count()).select_from(TaskQueue)).scalar_one())


@pytest.fixture
def app() -> Iterator[Celery]:
    """A Celery app on kombu's in-memory transport, with a queue of its own."""
    celery_app = Celery("resend-test", broker="memory://", set_as_current=False)
    celery_app.conf.task_default_queue = f"resend-{uuid.uuid4().hex}"
    yield celery_app
    celery_app.close()


def published(app: Celery) -> list[dict[str, Any]]:
    """The messages waiting on the app's queue: task name, id, args, kwargs, headers."""
    messages = []
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(app.conf.task_default_queue)
        while True:
            try:
                message = queue.get(block=False)
            except queue.Empty:
                break
            args, kwargs, _ = message.decode()
            headers = message.headers
            messages.append(
                {"task": headers["task"], "id": headers["id"], "args": args, "kwargs": kwargs}
                | {"queued_by": headers.get("taskq_queued_by")}
            )
            message.ack()
        queue.close()
    return messages


def test_resend_publishes_a_new_row_linked_to_the_old(
    service: TaskQueueService, database: Database, clock: FakeClock, app: Celery
) -> None:
    # Given a native task that failed for good
    old = native(database, clock, title="Mail")

    # When it is re-sent
    resent = resend_task(service, app, old, queued_by="ops")

    # Then a new row stands, never run, linked to the old one, due now
    new = service.get_task(resent.task_id)
    assert (new.resent_from_id, new.queued_by_id, new.title) == (old, "ops", "Mail")
    assert (new.task_handler_class, new.last_status) == ("celery:app.send_mail", None)
    assert new.task_data == {"args": ["a@b.c"], "kwargs": {"subject": "hi"}}
    assert new.celery_task_id == resent.celery_task_id
    assert new.scheduled_on == clock.now
    uuid.UUID(resent.celery_task_id)
    # And the message carries the stored name, args and kwargs under the new row's Celery id
    assert published(app) == [
        {
            "task": "app.send_mail",
            "id": resent.celery_task_id,
            "args": ["a@b.c"],
            "kwargs": {"subject": "hi"},
            "queued_by": "ops",
        }
    ]
    # And the old row is as it was
    assert service.get_task(old).last_status is RunStatus.ERROR


def test_a_possibly_lost_task_may_be_resent(
    service: TaskQueueService, database: Database, clock: FakeClock, app: Celery
) -> None:
    lost = native(database, clock, last_status=None, task_runs_failed=0)
    not_yet = native(database, clock, last_status=None, task_runs_failed=0, scheduled_on=clock.now)

    resent = resend_task(service, app, lost, queued_by="ops")

    assert service.get_task(resent.task_id).resent_from_id == lost
    with pytest.raises(InvalidArgumentError, match="has not started yet: it is possibly lost"):
        resend_task(service, app, not_yet, queued_by="ops")


@pytest.mark.parametrize(
    ("columns", "error", "message"),
    [
        ({"task_handler_class": "tests.handlers.Succeed"}, InvalidArgumentError, "not a native"),
        ({"last_status": RunStatus.RUNNING}, InvalidArgumentError, "is running"),
        ({"last_status": RunStatus.SUCCESS}, InvalidArgumentError, "succeeded"),
        ({"max_retries": 3}, InvalidArgumentError, "has retries left .1 of 3"),
        ({"task_data": ["a"]}, InvalidArgumentError, "its TaskData is not"),
        ({"task_data": {"args": []}}, InvalidArgumentError, "its TaskData is not"),
        ({"task_data": {"args": {}, "kwargs": {}}}, InvalidArgumentError, "its TaskData is not"),
        (
            {"task_data": {"args": [], "kwargs": {}, "x": 1}},
            InvalidArgumentError,
            "its TaskData is not",
        ),
        ({"task_data": "args"}, InvalidArgumentError, "its TaskData is not"),
    ],
)
def test_refusals_write_nothing(
    service: TaskQueueService,
    database: Database,
    clock: FakeClock,
    app: Celery,
    columns: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    task = native(database, clock, **columns)
    before = rows(database)

    with pytest.raises(error, match=message):
        resend_task(service, app, task, queued_by="ops")

    assert rows(database) == before
    assert published(app) == []


def test_unknown_id_and_no_app_write_nothing(
    service: TaskQueueService, database: Database, clock: FakeClock, app: Celery
) -> None:
    task = native(database, clock)
    with pytest.raises(TaskNotFoundError, match="no task with id 999"):
        resend_task(service, app, 999, queued_by="ops")
    with pytest.raises(ConfigurationError, match="no Celery app is configured"):
        resend_task(service, None, task, queued_by="ops")
    assert rows(database) == 1


def test_a_failed_publish_leaves_no_row(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    # Given an app whose broker nothing listens on, and no publish retries
    unreachable = Celery("unreachable", broker="redis://127.0.0.1:9/0", set_as_current=False)
    unreachable.conf.task_publish_retry = False
    unreachable.conf.broker_connection_timeout = 1
    task = native(database, clock)

    with pytest.raises(PublishError, match=r"Celery could not publish 'app.send_mail'.*nothing"):
        resend_task(service, unreachable, task, queued_by="ops")

    assert rows(database) == 1
    unreachable.close()


def test_cli_resend_without_an_app_is_refused(
    database_url: str, database: Database, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    task = native(database, clock)

    code = main(["--database-url", database_url, "resend", str(task)])

    _, err = capsys.readouterr()
    assert code == 1
    assert "error: no Celery app is configured to publish with: give it with --app" in err
    assert rows(database) == 1


@pytest.fixture
def make_client(settings: Settings, clock: FakeClock) -> Iterator[Any]:
    clients: list[TestClient] = []
    databases: list[Database] = []

    def make(celery_app: Any, **options: Any) -> TestClient:
        service = TaskQueueService(
            Database(settings.database_url), web_settings(settings), clock=clock
        )
        client = TestClient(
            create_app(web_settings(settings, **options), service=service, celery_app=celery_app)
        )
        client.__enter__()
        clients.append(client)
        databases.append(service.database)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
    for opened in databases:
        opened.close()


def test_api_resend_behind_the_token(
    make_client: Any, database: Database, clock: FakeClock, app: Celery
) -> None:
    client = make_client(app)
    task = native(database, clock)
    running = native(database, clock, last_status=RunStatus.RUNNING)

    assert client.post(f"/api/v1/tasks/{task}/resend").status_code == 401
    assert make_client(app, token="").post(f"/api/v1/tasks/{task}/resend").status_code == 403
    answer = client.post(f"/api/v1/tasks/{task}/resend?queued_by=alice", headers=AUTH)

    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["resent_from_id"] == task
    document = client.get(f"/api/v1/tasks/{body['task_id']}").json()
    assert (document["queued_by"], document["celery_task_id"]) == ("alice", body["celery_task_id"])
    assert [message["id"] for message in published(app)] == [body["celery_task_id"]]
    conflict = client.post(f"/api/v1/tasks/{running}/resend", headers=AUTH)
    assert conflict.status_code == 409
    assert "is running" in conflict.json()["error"]
    assert client.post("/api/v1/tasks/999/resend", headers=AUTH).status_code == 404
    no_app = make_client(None).post(f"/api/v1/tasks/{task}/resend", headers=AUTH)
    assert no_app.status_code == 409
    assert "no Celery app is configured" in no_app.json()["error"]
    assert rows(database) == 3


def test_dashboard_resend_button(
    make_client: Any, database: Database, clock: FakeClock, app: Celery
) -> None:
    client = make_client(app)
    task = native(database, clock)
    succeeded = native(database, clock, last_status=RunStatus.SUCCESS)

    page = client.get(f"/tasks/{task}").text
    assert f'<form method="post" action="/tasks/{task}/resend" id="resend-form">' in page
    assert "resend-form" not in client.get(f"/tasks/{succeeded}").text
    assert "resend-unavailable" in make_client(None).get(f"/tasks/{task}").text
    # A form without the token or the session is refused; with the token it re-sends
    assert client.post(f"/tasks/{task}/resend", data={}).status_code == 401
    answer = client.post(f"/tasks/{task}/resend", data={"token": TOKEN}, follow_redirects=False)

    assert answer.status_code == 303
    new_id = int(answer.headers["location"].split("/")[2].split("?")[0])
    new_page = client.get(answer.headers["location"]).text
    assert "Re-sent: this is the new task" in new_page
    assert f'<a href="/tasks/{task}"><code>{task}</code></a>' in new_page
    assert [message["queued_by"] for message in published(app)] == ["dashboard"]
    assert new_id != task
