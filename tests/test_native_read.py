"""The native audit's read side on SQLite and PostgreSQL: a task's Celery relations and each
run's attempt in ``show``, the HTTP API and the dashboard, whatever was stored."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, insert, text, update

from celery_taskq import reports
from celery_taskq.cli import main
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.listing import TaskFilter, list_tasks, related_tasks
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.snapshots import RelatedTask
from celery_taskq.core.storage.database import Database
from celery_taskq.reports import LostTask
from celery_taskq.reports.lost import possibly_lost_in
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


def test_a_workflow_and_a_group_are_listed(
    service: TaskQueueService,
    family: dict[str, int],
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workflow = list_tasks(service.database, TaskFilter(celery_root_id="c-root"))
    members = list_tasks(service.database, TaskFilter(celery_group_id="g-unknown"))

    assert [task.id for task in workflow.tasks] == [
        family["child"],
        family["parent"],
        family["root"],
    ]
    assert [task.id for task in members.tasks] == [family["child"]]
    out = run_cli(database_url, capsys, "list", "--celery-group", "g-unknown", "--json")
    assert [task["id"] for task in json.loads(out)["tasks"]] == [family["child"]]


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

    document = json.loads(run_cli(database_url, capsys, "show", "--json", str(family["child"])))
    assert (document["celery_task_id"], document["celery_chord_id"]) == ("c-child", "c-callback")
    assert document["relations"][2] == {"relation": "group", "value": "g-unknown", "task_id": None}
    assert document["relations"][0]["task_id"] == family["parent"]
    assert [(run["attempt"], run["eager"]) for run in document["runs"]] == [(0, False), (1, True)]

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
    members = client.get("/api/v1/tasks", params={"celery_root_id": "c-root"}).json()
    assert len(members["tasks"]) == 3
    handler = client.get(f"/api/v1/tasks/{family['handler']}").json()
    assert handler["relations"] == []
    assert handler["celery_task_id"] is None


def test_dashboard_task_page_links_relations(client: TestClient, family: dict[str, int]) -> None:
    page = client.get(f"/tasks/{family['child']}").text

    assert f'<a href="/tasks/{family["parent"]}"><code>c-parent</code></a>' in page
    assert f'<a href="/tasks/{family["callback"]}"><code>c-callback</code></a>' in page
    assert '<code>g-unknown</code> <span class="muted">(no task recorded)</span>' in page
    assert '<dd data-field="attempt">1 <span class="muted">(eager)</span></dd>' in page
    assert '<a href="/tasks?celery_group_id=g-unknown" class="members">' in page
    workflow = client.get("/tasks?celery_root_id=c-root").text
    assert workflow.count('<tr data-task-id="') == 3
    resent = client.get(f"/tasks/{family['resent']}").text
    assert f'<a href="/tasks/{family["child"]}"><code>{family["child"]}</code></a>' in resent
    # A hostile stored id is escaped, never markup
    orphan = client.get(f"/tasks/{family['orphan']}").text
    assert "<script>alert(1)" not in orphan
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in orphan
    assert "Celery" not in client.get(f"/tasks/{family['handler']}").text.split("<h2>Data")[0]


# -- possibly lost native tasks ---------------------------------------------------------------

NOW = T0 + timedelta(hours=3)


@pytest.fixture
def lost(database: Database) -> dict[str, int]:
    """Native tasks never started, long and not long past due; one that ran; a handler task."""
    ids = {
        "oldest": native_row(database, "c-lost-1", scheduled_on=T0),
        "lost": native_row(database, "c-lost-2", scheduled_on=T0 + timedelta(minutes=30)),
        "other": native_row(
            database,
            "c-lost-3",
            task_handler_class="celery:app.other",
            scheduled_on=T0 + timedelta(minutes=40),
        ),
        "recent": native_row(database, "c-recent", scheduled_on=NOW - timedelta(minutes=59)),
        "ran": native_row(database, "c-ran", scheduled_on=T0),
        "handler": native_row(
            database, None, task_handler_class="tests.handlers.Succeed", scheduled_on=T0
        ),
    }
    native_run(database, ids["ran"], 0, False)
    with database.transaction() as connection:
        connection.execute(rollup_last_status(ids["ran"]))
    return ids


def rollup_last_status(task_id: int) -> Any:
    return update(TaskQueue).where(TaskQueue.id == task_id).values(last_status=RunStatus.SUCCESS)


def test_possibly_lost_counts_never_started_native_tasks_past_the_limit(
    database: Database, lost: dict[str, int]
) -> None:
    found = reports.possibly_lost(database, now=NOW, lost_after=3600)

    assert (found.count, found.lost_after, found.oldest_age) == (3, 3600.0, 3 * 3600.0)
    assert [task.task_id for task in found.tasks] == [lost["oldest"], lost["lost"], lost["other"]]
    assert found.tasks[1] == LostTask(
        task_id=lost["lost"],
        handler="celery:app.step",
        celery_task_id="c-lost-2",
        scheduled_on=T0 + timedelta(minutes=30),
        queued_on=T0,
        age=2.5 * 3600,
    )
    # The handler filter, the limit, and a longer grace narrow it
    assert reports.possibly_lost(database, now=NOW, handler="celery:app.other").count == 1
    assert len(reports.possibly_lost(database, now=NOW, limit=1).tasks) == 1
    assert reports.possibly_lost(database, now=NOW, lost_after=4 * 3600).count == 0
    with pytest.raises(InvalidArgumentError, match="lost_after must be a positive"):
        reports.possibly_lost(database, now=NOW, lost_after=0)
    # And the whole report carries the same section
    report = reports.build_report(database, now=NOW, lost_after=3600)
    assert report.possibly_lost == found


def test_possibly_lost_reads_its_partial_index(database: Database, lost: dict[str, int]) -> None:
    with database.transaction(read_only=True) as connection:
        plans = []
        for query, values in captured_lost_queries(connection):
            explain = "EXPLAIN QUERY PLAN" if connection.dialect.name == "sqlite" else "EXPLAIN"
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plans.append(str(connection.execute(text(f"{explain} {query}"), values).all()))
    assert len(plans) == 2
    for plan in plans:
        assert "ix_TaskQueue_native_never_started" in plan


def captured_lost_queries(connection: Any) -> list[tuple[str, dict[str, Any]]]:
    """The statements the report runs, with their values (read back through an event)."""
    captured: list[tuple[str, dict[str, Any]]] = []

    def capture(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: Any
    ) -> None:
        if "ScheduledOn" in statement and "LIMIT" not in statement.upper().split("WHERE")[0]:
            captured.append((str(context.compiled.statement), dict(context.compiled_parameters[0])))

    event.listen(connection, "before_cursor_execute", capture)
    try:
        possibly_lost_in(connection, NOW, 3600.0, None, 5)
    finally:
        event.remove(connection, "before_cursor_execute", capture)
    return captured


def test_possibly_lost_in_report_dashboard_and_metrics(
    settings: Settings,
    database_url: str,
    lost: dict[str, int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reports, "utc_now", lambda: NOW)
    out = run_cli(database_url, capsys, "report")
    assert "possibly lost (native tasks never started 3600 s past due, now): 3\n" in out
    assert re.search(rf"\n{lost['oldest']} +celery:app.step +c-lost-1 +\S+ +10800.000\n", out)
    document = json.loads(run_cli(database_url, capsys, "report", "--json"))
    assert document["possibly_lost"]["count"] == 3
    assert document["possibly_lost"]["tasks"][0]["celery_task_id"] == "c-lost-1"
    # The lost-after setting is read by the command
    monkeypatch.setenv("TASKQ_NATIVE_LOST_AFTER", "36000")
    assert ": 0\n" in run_cli(database_url, capsys, "report").split("possibly lost")[1]

    with TestClient(create_app(web_settings(settings))) as client:
        page = client.get("/").text
        api = client.get("/api/v1/report").json()
        metrics = client.get("/metrics").text
    assert '<p id="possibly-lost-count"><span class="n">3</span>' in page
    assert '<div class="l">failure rate per task</div>' in page
    assert '<div class="l">failure rate per attempt</div>' in page
    assert f'<td><a href="/tasks/{lost["oldest"]}">{lost["oldest"]}</a></td>' in page
    assert api["possibly_lost"]["count"] == 3
    # Metrics read the wall clock, long after T0: the "recent" task is past due as well
    assert "\ntaskq_native_possibly_lost 4.0\n" in metrics
