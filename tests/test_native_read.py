"""The native audit's read side on SQLite and PostgreSQL: a task's Celery relations and each
run's attempt in ``show``, the HTTP API and the dashboard, whatever was stored."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from celery_taskq.cli import main
from celery_taskq.core.listing import related_tasks
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.snapshots import RelatedTask
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from tests.web_support import web_settings

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>\x1b[31m\u202e"


def native_row(database: Database, celery_id: str | None, **columns: Any) -> int:
    """A native task's row, written as a user's SQL (or a future writer) could."""
    values = {
        "task_handler_class": "celery:app.step",
        "task_data": {"args": [1], "kwargs": {}},
        "queued_on": T0,
        "scheduled_on": T0,
        "max_retries": 1,
        "task_runs_failed": 0,
        "celery_task_id": celery_id,
        **columns,
    }
    with database.transaction() as connection:
        return int(
            connection.execute(
                insert(TaskQueue).values(**values).returning(TaskQueue.id)
            ).scalar_one()
        )


def native_run(database: Database, task_id: int, attempt: int | None, eager: bool) -> int:
    with database.transaction() as connection:
        return int(
            connection.execute(
                insert(TaskRun)
                .values(
                    task_queue_id=task_id,
                    status=RunStatus.SUCCESS,
                    started_on=T0,
                    finished_on=T0,
                    celery_task_id="c-child",
                    attempt=attempt,
                    eager=eager,
                )
                .returning(TaskRun.id)
            ).scalar_one()
        )


@pytest.fixture
def family(database: Database) -> dict[str, int]:
    """A chain's root and parent, a child of both in a group of a chord, and a re-send of it."""
    root = native_row(database, "c-root", celery_root_id="c-root")
    parent = native_row(database, "c-parent", celery_parent_id="c-root", celery_root_id="c-root")
    callback = native_row(database, "c-callback")
    child = native_row(
        database,
        "c-child",
        celery_parent_id="c-parent",
        celery_root_id="c-root",
        celery_group_id="g-unknown",
        celery_chord_id="c-callback",
    )
    native_run(database, child, 0, False)
    native_run(database, child, 1, True)
    resent = native_row(database, "c-again", resent_from_id=child)
    orphan = native_row(database, "c-orphan", celery_parent_id=HOSTILE, celery_root_id=None)
    handler = native_row(database, None, task_handler_class="tests.handlers.Succeed")
    return {
        "root": root,
        "parent": parent,
        "callback": callback,
        "child": child,
        "resent": resent,
        "orphan": orphan,
        "handler": handler,
    }


def test_relations_name_the_tasks_holding_each_id(
    service: TaskQueueService, family: dict[str, int]
) -> None:
    # Given a chord member whose group id names no task
    child = service.get_task(family["child"])
    # Then each relation names the row that holds its id, and the group none
    assert related_tasks(service.database, child) == (
        RelatedTask("parent", "c-parent", family["parent"]),
        RelatedTask("root", "c-root", family["root"]),
        RelatedTask("group", "g-unknown", None),
        RelatedTask("chord", "c-callback", family["callback"]),
    )
    assert related_tasks(service.database, service.get_task(family["resent"])) == (
        RelatedTask("resent_from", str(family["child"]), family["child"]),
    )
    # And a handler task has none
    assert related_tasks(service.database, service.get_task(family["handler"])) == ()
    assert [(run.attempt, run.eager) for run in child.runs] == [(0, False), (1, True)]


def run_cli(database_url: str, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["--database-url", database_url, *args])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    return out


def test_show_prints_relations_and_attempts(
    database_url: str, family: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_cli(database_url, capsys, "show", str(family["child"]))

    assert "  celery task id: c-child\n" in out
    assert f"  parent: c-parent (task {family['parent']})\n" in out
    assert f"  root: c-root (task {family['root']})\n" in out
    assert "  group: g-unknown (no task)\n" in out
    assert f"  chord callback: c-callback (task {family['callback']})\n" in out
    assert re.search(r"run \d+: success .* runner -  attempt 0\n", out)
    assert re.search(r"run \d+: success .* runner -  attempt 1  eager\n", out)

    resent = run_cli(database_url, capsys, "show", str(family["resent"]))
    assert f"  re-sends: task {family['child']}\n" in resent

    # A hostile stored id is shown escaped, never as raw control characters
    orphan = run_cli(database_url, capsys, "show", str(family["orphan"]))
    assert "\x1b" not in orphan
    assert "\u202e" not in orphan
    assert "  parent: <script>alert(1)</script>\\x1b[31m\\u202e (no task)" in orphan


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(web_settings(settings))) as client:
        yield client


def test_api_task_document_has_relations_and_attempts(
    client: TestClient, family: dict[str, int]
) -> None:
    document = client.get(f"/api/v1/tasks/{family['child']}").json()

    assert document["celery_task_id"] == "c-child"
    assert document["celery_group_id"] == "g-unknown"
    assert document["relations"] == [
        {
            "relation": "parent",
            "value": "c-parent",
            "task_id": family["parent"],
            "url": f"/api/v1/tasks/{family['parent']}",
        },
        {
            "relation": "root",
            "value": "c-root",
            "task_id": family["root"],
            "url": f"/api/v1/tasks/{family['root']}",
        },
        {"relation": "group", "value": "g-unknown", "task_id": None, "url": None},
        {
            "relation": "chord",
            "value": "c-callback",
            "task_id": family["callback"],
            "url": f"/api/v1/tasks/{family['callback']}",
        },
    ]
    assert [(run["attempt"], run["eager"]) for run in document["runs"]] == [(0, False), (1, True)]
    resent = client.get(f"/api/v1/tasks/{family['resent']}").json()
    assert resent["resent_from_id"] == family["child"]
    assert resent["relations"][0]["url"] == f"/api/v1/tasks/{family['child']}"
    handler = client.get(f"/api/v1/tasks/{family['handler']}").json()
    assert handler["relations"] == []
    assert handler["celery_task_id"] is None


def test_dashboard_task_page_links_relations(client: TestClient, family: dict[str, int]) -> None:
    page = client.get(f"/tasks/{family['child']}").text

    assert f'<a href="/tasks/{family["parent"]}"><code>c-parent</code></a>' in page
    assert f'<a href="/tasks/{family["callback"]}"><code>c-callback</code></a>' in page
    assert '<code>g-unknown</code> <span class="muted">(no task recorded)</span>' in page
    assert '<dd data-field="attempt">1 <span class="muted">(eager)</span></dd>' in page
    resent = client.get(f"/tasks/{family['resent']}").text
    assert f'<a href="/tasks/{family["child"]}"><code>{family["child"]}</code></a>' in resent
    # A hostile stored id is escaped, never markup
    orphan = client.get(f"/tasks/{family['orphan']}").text
    assert "<script>alert(1)" not in orphan
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in orphan
    assert "Celery" not in client.get(f"/tasks/{family['handler']}").text.split("<h2>Data")[0]
