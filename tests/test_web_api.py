"""The HTTP API and the pages over FastAPI's TestClient, on SQLite and PostgreSQL.

Every endpoint, its filters and pagination, the token rules, the error shapes and codes, the
HTML escaping of what handlers print, the forms, metrics, settings and the CLI command.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from celery_taskq.cli import main
from celery_taskq.core.models import RunnerStatus, RunStatus, TaskQueue, TaskRun, TaskRunner
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from tests.conftest import FakeClock
from tests.helpers import count, drive
from tests.web_support import FLOWER, TOKEN, web_settings

MakeClient = Callable[..., TestClient]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def make_client(settings: Settings) -> Iterator[MakeClient]:
    """Build a client of a dashboard on the test database (lifespan started, closed after)."""
    clients: list[TestClient] = []

    def make(**options: Any) -> TestClient:
        client = TestClient(create_app(web_settings(settings, **options)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    """A dashboard with a token and a Flower URL configured."""
    return make_client()


@pytest.fixture
def read_only(make_client: MakeClient) -> TestClient:
    """A dashboard with no token configured."""
    return make_client(token="")


def error_of(response: Any, status: int) -> str:
    """The response's error message, after checking its status and JSON shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str)
    assert body["error"]
    return str(body["error"])


def seed(service: TaskQueueService, clock: FakeClock) -> dict[str, int]:
    """Tasks of three handlers and two queuers, a minute apart, worked where due."""
    ids = {}
    ids["ok"] = service.add_task("tests.handlers.Succeed", {"n": 1}, queued_by="alice")
    clock.advance(60)
    ids["talk"] = service.add_task("tests.handlers.Talk", queued_by="bob", title="Talker")
    clock.advance(60)
    ids["fail"] = service.add_task("tests.handlers.AlwaysFail", max_retries=1, queued_by="alice")
    clock.advance(60)
    drive(service)
    ids["later"] = service.add_task(
        "tests.handlers.Succeed", scheduled_on=clock.now + timedelta(days=1), queued_by="bob"
    )
    return ids


# -- reading ----------------------------------------------------------------------------------


def test_list_tasks_newest_first_with_every_filter(
    client: TestClient, service: TaskQueueService, clock: FakeClock
) -> None:
    ids = seed(service, clock)

    def listed(**params: Any) -> list[int]:
        response = client.get("/api/v1/tasks", params=params)
        assert response.status_code == 200, response.text
        return [task["id"] for task in response.json()["tasks"]]

    assert listed() == [ids["later"], ids["fail"], ids["talk"], ids["ok"]]
    assert listed(status="success") == [ids["talk"], ids["ok"]]
    assert listed(status="error") == [ids["fail"]]
    assert listed(handler="tests.handlers.Succeed") == [ids["later"], ids["ok"]]
    assert listed(queued_by="alice") == [ids["fail"], ids["ok"]]
    start = clock.now - timedelta(seconds=90)
    assert listed(since=start.isoformat()) == [ids["later"], ids["fail"]]
    assert listed(until=start.isoformat()) == [ids["talk"], ids["ok"]]
    assert listed(queued_by="alice", status="success") == [ids["ok"]]
    assert listed(handler="nobody.Here") == []

    page = client.get("/api/v1/tasks", params={"limit": 1}).json()
    task = page["tasks"][0]
    assert task["handler"] == "tests.handlers.Succeed"
    assert task["last_status"] is None  # never run yet
    assert task["queued_by"] == "bob"
    assert task["scheduled_on"] > task["queued_on"]


def test_keyset_pagination_walks_every_task_once(
    client: TestClient, service: TaskQueueService
) -> None:
    created = [service.add_task("tests.handlers.Succeed", {"i": i}) for i in range(7)]
    seen: list[int] = []
    before_id = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if before_id is not None:
            params["before_id"] = before_id
        page = client.get("/api/v1/tasks", params=params).json()
        seen += [task["id"] for task in page["tasks"]]
        pages += 1
        before_id = page["next_before_id"]
        if before_id is None:
            break
    assert seen == sorted(created, reverse=True)
    assert pages == 3


def test_get_task_with_its_runs_and_get_run(
    client: TestClient, service: TaskQueueService, clock: FakeClock
) -> None:
    ids = seed(service, clock)

    task = client.get(f"/api/v1/tasks/{ids['talk']}").json()
    assert task["title"] == "Talker"
    assert task["last_status"] == "success"
    (run,) = task["runs"]
    assert run["status"] == "success"
    assert "python says hi" in run["standard_output"]
    assert "child-err" in run["error_output"]
    assert run["percents_completed"] == 100
    assert run["task_runner_id"] is not None
    assert run["duration_seconds"] == 0.0  # the fake clock did not move during the run
    assert run["flower_task_url"] is None  # not a Celery task

    failed = client.get(f"/api/v1/tasks/{ids['fail']}").json()
    assert [(r["status"], r["error_code"]) for r in failed["runs"]] == [("error", "E_SMTP")]
    assert failed["runs"][0]["error_message"] == "the mail server refused"

    ok_run = client.get(f"/api/v1/tasks/{ids['ok']}").json()["runs"][0]
    assert client.get(f"/api/v1/runs/{ok_run['id']}").json() == ok_run
    assert ok_run["results"] == {"echo": {"n": 1}}


def test_flower_links_for_celery_runs_and_workers(
    client: TestClient, make_client: MakeClient, service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task("tests.handlers.Succeed", create_run=True)
    drive(service)
    with database.transaction() as connection:
        connection.execute(
            update(TaskRun).where(TaskRun.task_queue_id == task_id).values(celery_task_id="abc/1")
        )
        connection.execute(update(TaskRunner).values(worker_hostname="celery@w1"))
    run = client.get(f"/api/v1/tasks/{task_id}").json()["runs"][0]
    assert run["celery_task_id"] == "abc/1"
    assert run["flower_task_url"] == f"{FLOWER}/task/abc%2F1"
    (runner,) = client.get("/api/v1/runners").json()["runners"]
    assert runner["flower_worker_url"] == f"{FLOWER}/worker/celery@w1"
    page = client.get(f"/tasks/{task_id}").text
    assert f'href="{FLOWER}/task/abc%2F1"' in page
    assert f'href="{FLOWER}/worker/celery@w1"' in client.get("/runners").text

    no_flower = make_client(flower_url="")
    assert no_flower.get(f"/api/v1/tasks/{task_id}").json()["runs"][0]["flower_task_url"] is None
    assert "Flower task" not in no_flower.get(f"/tasks/{task_id}").text


def test_runners_report_and_runs_over_time(
    client: TestClient, service: TaskQueueService, clock: FakeClock
) -> None:
    seed(service, clock)
    runners = client.get("/api/v1/runners").json()["runners"]
    assert len(runners) == 1
    assert runners[0]["status"] == "success"  # drive()'s burst runner left when done
    assert runners[0]["runs"] == 3
    assert client.get("/api/v1/runners", params={"limit": 0}).status_code == 422

    since = (clock.now - timedelta(hours=1)).isoformat()
    report = client.get("/api/v1/report", params={"since": since}).json()
    assert report["totals"]["tasks"]["total"] == 4
    assert report["totals"]["runs"]["success"] == 2
    assert report["totals"]["runs"]["error"] == 1
    assert [row["handler"] for row in report["totals"]["by_handler"]] == [
        "tests.handlers.AlwaysFail",
        "tests.handlers.Succeed",
        "tests.handlers.Talk",
    ]
    only = client.get(
        "/api/v1/report", params={"since": since, "handler": "tests.handlers.Talk"}
    ).json()
    assert only["totals"]["tasks"]["total"] == 1
    assert report["dead_letters"][0]["handler"] == "tests.handlers.AlwaysFail"

    until = (clock.now + timedelta(hours=1)).isoformat()
    series = client.get(
        "/api/v1/runs-over-time", params={"since": since, "until": until, "buckets": 4}
    ).json()
    assert len(series["buckets"]) == 4
    assert series["bucket_seconds"] == 1800.0
    assert sum(bucket["runs"]["total"] for bucket in series["buckets"]) == 3
    default = client.get("/api/v1/runs-over-time").json()
    assert len(default["buckets"]) == 24
    assert client.get("/api/v1/health").json() == {"status": "ok"}


# -- writing and the token ----------------------------------------------------------------------


WRITES = [
    ("/api/v1/tasks", {"handler": "tests.handlers.Succeed"}),
    ("/api/v1/tasks/1/cancel", None),
    ("/api/v1/tasks/1/retry", None),
]


@pytest.mark.parametrize(("path", "body"), WRITES)
def test_writes_are_disabled_without_a_configured_token(
    read_only: TestClient, database: Database, path: str, body: Any
) -> None:
    for headers in ({}, AUTH, {"Authorization": "Bearer "}):
        message = error_of(read_only.post(path, json=body, headers=headers), 403)
        assert message.startswith("writes are disabled")
        assert "TASKQ_DASHBOARD_TOKEN" in message
    assert count(database, TaskQueue) == 0


@pytest.mark.parametrize(("path", "body"), WRITES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": b"Bearer caf\xc3\xa9"},
    ],
    ids=["none", "wrong", "basic", "longer", "latin1"],
)
def test_a_missing_or_wrong_token_is_401(
    client: TestClient, database: Database, path: str, body: Any, headers: dict[str, Any]
) -> None:
    response = client.post(path, json=body, headers=headers)
    assert "token" in error_of(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert count(database, TaskQueue) == 0


def test_enqueue_with_the_token(client: TestClient, database: Database) -> None:
    response = client.post(
        "/api/v1/tasks",
        headers=AUTH,
        json={
            "handler": "tests.handlers.Succeed",
            "data": {"to": "a@b.c"},
            "scheduled_on": "2030-01-01T08:00:00+02:00",
            "max_retries": 3,
            "queued_by": "user-7",
            "title": "Report 7",
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["created"] is True
    task = client.get(f"/api/v1/tasks/{response.json()['task_id']}").json()
    assert task["data"] == {"to": "a@b.c"}
    assert task["scheduled_on"] == "2030-01-01T06:00:00Z"
    assert (task["max_retries"], task["queued_by"], task["title"]) == (3, "user-7", "Report 7")

    due = client.post("/api/v1/tasks", headers=AUTH, json={"handler": "tests.handlers.Succeed"})
    runs = client.get(f"/api/v1/tasks/{due.json()['task_id']}").json()["runs"]
    assert [run["status"] for run in runs] == ["scheduled"]  # a due task gets its run at once


def test_enqueue_unique_key_returns_the_task_or_conflicts(client: TestClient) -> None:
    body = {"handler": "tests.handlers.Succeed", "unique_key": "report:7"}
    first = client.post("/api/v1/tasks", headers=AUTH, json=body)
    assert first.status_code == 201
    again = client.post("/api/v1/tasks", headers=AUTH, json=body)
    assert again.status_code == 200
    assert again.json() == {"task_id": first.json()["task_id"], "created": False}
    conflict = client.post("/api/v1/tasks", headers=AUTH, json={**body, "on_duplicate": "raise"})
    assert "report:7" in error_of(conflict, 409)
    assert conflict.json()["existing_task_id"] == first.json()["task_id"]


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"handler": "tests.handlers.Missing"}, 400, "has no class 'Missing'"),
        ({"handler": "os.system"}, 400, "is not allowed"),
        ({"handler": "tests.handlers.RefuseNegative", "data": {"n": -1}}, 400, "must not be neg"),
        ({}, 422, "body.handler: Field required"),
        ({"handler": ""}, 422, "body.handler"),
        ({"handler": "tests.handlers.Succeed", "bogus": 1}, 422, "body.bogus"),
        ({"handler": "tests.handlers.Succeed", "max_retries": 0}, 422, "body.max_retries"),
        ({"handler": "tests.handlers.Succeed", "max_retries": 2**40}, 422, "body.max_retries"),
        (
            {"handler": "tests.handlers.Succeed", "scheduled_on": "2030-01-01T08:00:00"},
            422,
            "body.scheduled_on",
        ),
        (
            {"handler": "tests.handlers.Succeed", "scheduled_on": "9999-12-31T23:59:59-05:00"},
            422,
            "out of range",
        ),
        ({"handler": "tests.handlers.Succeed", "title": "a\x00b"}, 422, "NUL"),
        ({"handler": "tests.handlers.Succeed", "data": {"k\x00": 1}}, 422, "NUL"),
        ({"handler": "tests.handlers.Succeed", "title": "x" * 256}, 422, "body.title"),
        ({"handler": "tests.handlers.Succeed", "on_duplicate": "ignore"}, 422, "on_duplicate"),
    ],
)
def test_bad_enqueue_is_a_clear_4xx_and_writes_nothing(
    client: TestClient, database: Database, body: dict[str, Any], status: int, expected: str
) -> None:
    response = client.post("/api/v1/tasks", headers=AUTH, json=body)
    assert expected in error_of(response, status)
    assert count(database, TaskQueue) == 0


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'"\\ud800"', "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"handler=x", "application/x-www-form-urlencoded"),
        (b"[1, 2]", "application/json"),
        (b'{"handler": "tests.handlers.Succeed", "data": "\\ud800"}', "application/json"),
        (b'{"handler": "tests.handlers.Succeed", "data": [NaN]}', "application/json"),
        (b'{"handler": "tests.handlers.Succeed", "data": 1e400}', "application/json"),
    ],
)
def test_malformed_bodies_are_4xx_json(
    client: TestClient, database: Database, content: bytes, content_type: str
) -> None:
    response = client.post(
        "/api/v1/tasks", headers={**AUTH, "Content-Type": content_type}, content=content
    )
    assert 400 <= response.status_code < 500
    error_of(response, response.status_code)
    assert count(database, TaskQueue) == 0


def test_cancel_and_retry(client: TestClient, service: TaskQueueService) -> None:
    task_id = service.add_task("tests.handlers.Succeed", create_run=True)
    cancelled = client.post(f"/api/v1/tasks/{task_id}/cancel", headers=AUTH)
    assert cancelled.json() == {"task_id": task_id, "cancelled": True, "still_running": False}
    task = client.get(f"/api/v1/tasks/{task_id}").json()
    assert task["cancel_requested_on"] is not None
    assert [(run["status"], run["error_code"]) for run in task["runs"]] == [("error", "cancelled")]
    assert "already cancelled" in error_of(
        client.post(f"/api/v1/tasks/{task_id}/cancel", headers=AUTH), 409
    )

    retried = client.post(f"/api/v1/tasks/{task_id}/retry", headers=AUTH)
    assert retried.status_code == 200, retried.text
    run_id = retried.json()["run_id"]
    assert client.get(f"/api/v1/runs/{run_id}").json()["status"] == "scheduled"
    assert "in progress" in error_of(
        client.post(f"/api/v1/tasks/{task_id}/retry", headers=AUTH), 409
    )
    drive(service)
    assert "already finished" in error_of(
        client.post(f"/api/v1/tasks/{task_id}/cancel", headers=AUTH), 409
    )
    assert "no task with id 999" in error_of(
        client.post("/api/v1/tasks/999/cancel", headers=AUTH), 404
    )
    assert "no task with id 999" in error_of(
        client.post("/api/v1/tasks/999/retry", headers=AUTH), 404
    )


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "expected"),
    [
        ("GET", "/api/v1/tasks/999", 404, "no task with id 999"),
        ("GET", "/api/v1/runs/999", 404, "no run with id 999"),
        ("GET", "/api/v1/nowhere", 404, "not found: /api/v1/nowhere"),
        ("DELETE", "/api/v1/tasks/1", 405, "method DELETE is not allowed"),
        ("GET", "/api/v1/tasks/abc", 422, "path.task_id"),
        ("GET", "/api/v1/tasks/0", 422, "path.task_id"),
        ("GET", f"/api/v1/tasks/{2**63}", 422, "path.task_id"),
        ("GET", "/api/v1/tasks?status=lost", 422, "query.status"),
        ("GET", "/api/v1/tasks?limit=1001", 422, "query.limit"),
        ("GET", f"/api/v1/tasks?before_id={2**64}", 422, "query.before_id"),
        ("GET", "/api/v1/tasks?since=yesterday", 400, "since: 'yesterday' is neither"),
        ("GET", "/api/v1/tasks?since=2026-01-01T00:00:00", 400, "has no UTC offset"),
        ("GET", "/api/v1/tasks?since=99999999999999w", 400, "out of range"),
        ("GET", "/api/v1/tasks?handler=a%00b", 400, "NUL"),
        ("GET", "/api/v1/tasks?since=1h&until=2h", 400, "since must be before until"),
        ("GET", "/api/v1/report?since=1h&until=2h", 400, "must be before until"),
        ("GET", "/api/v1/runs-over-time?buckets=0", 422, "query.buckets"),
        ("GET", "/api/v1/runs-over-time?since=2099-01-01T00:00:00Z", 400, "must be before"),
        ("GET", "/api/v1/runners?since=soon", 400, "since"),
    ],
)
def test_errors_are_json_with_the_right_status(
    client: TestClient, method: str, path: str, status: int, expected: str
) -> None:
    assert expected in error_of(client.request(method, path), status)


def test_schema_not_ready_is_503(tmp_path: Path, settings: Settings) -> None:
    empty = replace(settings, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    with TestClient(create_app(web_settings(empty))) as client:
        for path in ("/api/v1/tasks", "/api/v1/health", "/metrics"):
            assert "celery-taskq db upgrade" in error_of(client.get(path), 503)
        response = client.get("/")
        assert response.status_code == 503
        assert "celery-taskq db upgrade" in response.text


def test_openapi_is_published_with_bodies_and_errors(client: TestClient) -> None:
    schema = client.get("/api/v1/openapi.json").json()
    assert set(schema["paths"]) == {
        "/api/v1/health",
        "/api/v1/tasks",
        "/api/v1/tasks/{task_id}",
        "/api/v1/tasks/{task_id}/cancel",
        "/api/v1/tasks/{task_id}/retry",
        "/api/v1/tasks/{task_id}/resend",
        "/api/v1/runs/{run_id}",
        "/api/v1/runners",
        "/api/v1/report",
        "/api/v1/runs-over-time",
        "/api/v1/schedules",
        "/api/v1/schedules/{name}",
        "/api/v1/schedules/{name}/pause",
        "/api/v1/schedules/{name}/resume",
        "/api/v1/schedules/{name}/run-now",
    }
    enqueue = schema["paths"]["/api/v1/tasks"]["post"]
    assert enqueue["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EnqueueIn"
    }
    assert {"201", "200", "401", "403", "409", "422"} <= set(enqueue["responses"])
    assert enqueue["security"] == [{"HTTPBearer": []}]
    assert schema["components"]["schemas"]["ErrorOut"]["required"] == ["error"]


# -- pages -------------------------------------------------------------------------------------


def test_pages_render(client: TestClient, service: TaskQueueService, clock: FakeClock) -> None:
    ids = seed(service, clock)
    overview = client.get("/")
    assert overview.status_code == 200
    assert "Runs by status over time" in overview.text
    assert "<svg" in overview.text
    assert client.get("/?since=7d").status_code == 200
    assert "since must be one of" in client.get("/?since=forever").text

    tasks = client.get("/tasks", params={"handler": "tests.handlers.Talk"}).text
    assert f'data-task-id="{ids["talk"]}"' in tasks
    assert f'data-task-id="{ids["ok"]}"' not in tasks
    bad = client.get("/tasks", params={"status": "lost"})
    assert bad.status_code == 400
    assert "unknown status" in bad.text

    task = client.get(f"/tasks/{ids['fail']}").text
    assert "the mail server refused" in task
    assert "E_SMTP" in task
    assert 'id="retry-form"' in task  # out of retries: retry offered, cancel not
    assert 'id="cancel-form"' not in task
    assert client.get("/tasks/999").status_code == 404
    assert "runner" in client.get("/runners").text
    run_id = client.get(f"/api/v1/tasks/{ids['ok']}").json()["runs"][0]["id"]
    moved = client.get(f"/runs/{run_id}", follow_redirects=False)
    assert moved.headers["location"] == f"/tasks/{ids['ok']}#run-{run_id}"


def test_pages_paginate_with_an_older_link(client: TestClient, service: TaskQueueService) -> None:
    created = [service.add_task("tests.handlers.Succeed", queued_by="pager") for _ in range(5)]
    first = client.get("/tasks", params={"queued_by": "pager", "limit": 2}).text
    older = re.search(r'href="(/tasks\?[^"]*)" id="older-link"', first)
    assert older is not None
    url = older.group(1).replace("&amp;", "&")
    assert f"before_id={created[3]}" in url
    assert "queued_by=pager" in url
    second = client.get(url).text
    assert [int(i) for i in re.findall(r'data-task-id="(\d+)"', second)] == [
        created[2],
        created[1],
    ]
    assert 'id="newest-link"' in second


def test_handler_output_is_escaped_everywhere(
    client: TestClient, service: TaskQueueService, database: Database
) -> None:
    evil = "<script>alert(1)</script>"
    task_id = service.add_task("tests.handlers.Succeed", {"html": evil}, title=evil)
    drive(service)
    with database.transaction() as connection:
        connection.execute(
            update(TaskRun).values(standard_output=evil, error_output=evil, error_message=evil)
        )
    for path in (f"/tasks/{task_id}", "/tasks"):
        page = client.get(path).text
        assert evil not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # JSON is pretty-printed, then escaped.
    assert "&#34;html&#34;: &#34;&lt;script&gt;" in client.get(f"/tasks/{task_id}").text
    run = client.get(f"/api/v1/tasks/{task_id}").json()["runs"][0]
    assert run["standard_output"] == evil  # the API returns the text as it is (JSON)


def test_pages_carry_a_strict_content_security_policy(
    client: TestClient, service: TaskQueueService
) -> None:
    task_id = service.add_task("tests.handlers.Succeed", create_run=True)  # open: live script
    response = client.get(f"/tasks/{task_id}")
    policy = response.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy)
    assert nonce is not None
    assert "default-src 'none'" in policy
    assert f'<script nonce="{nonce.group(1)}">' in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get(f"/tasks/{task_id}").headers["content-security-policy"] != policy


# -- forms -------------------------------------------------------------------------------------


def test_forms_need_the_token_field_or_the_session_cookie(
    client: TestClient, service: TaskQueueService
) -> None:
    task_id = service.add_task("tests.handlers.Succeed", create_run=True)
    page = client.get(f"/tasks/{task_id}").text
    assert 'id="cancel-form"' in page
    assert 'name="token"' in page

    refused = client.post(f"/tasks/{task_id}/cancel", data={"token": "wrong"})
    assert refused.status_code == 401
    assert "token" in refused.text

    cancelled = client.post(
        f"/tasks/{task_id}/cancel", data={"token": TOKEN}, follow_redirects=False
    )
    assert cancelled.status_code == 303
    assert cancelled.headers["location"] == f"/tasks/{task_id}?done=cancelled"
    assert "Task cancelled." in client.get(cancelled.headers["location"]).text

    bad_login = client.post("/login", data={"token": "nope"})
    assert bad_login.status_code == 401
    login = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert login.status_code == 303
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert TOKEN not in cookie
    # By the cookie: from the dashboard's own origin, with the session's CSRF token.
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/tasks").text)
    assert found is not None
    csrf = {"csrf_token": found.group(1)}
    own = {"Origin": "http://testserver"}
    retried = client.post(f"/tasks/{task_id}/retry", data=csrf, headers=own, follow_redirects=False)
    assert retried.status_code == 303, retried.text
    assert "signed in" in client.get("/").text

    queued = client.post(
        "/tasks",
        data={
            "handler": "tests.handlers.Succeed",
            "data": '{"a": 1}',
            "title": "From the form",
            **csrf,
        },
        headers=own,
        follow_redirects=False,
    )
    assert queued.status_code == 303, queued.text
    new_id = int(queued.headers["location"].split("/")[2].split("?")[0])
    assert client.get(f"/api/v1/tasks/{new_id}").json()["title"] == "From the form"
    assert (
        client.post(
            "/tasks",
            data={"handler": "tests.handlers.Succeed", "data": "{", **csrf},
            headers=own,
        ).status_code
        == 400
    )

    client.post("/logout")
    assert client.post(f"/tasks/{task_id}/cancel").status_code == 401


def test_forms_are_refused_when_writes_are_disabled(
    read_only: TestClient, service: TaskQueueService
) -> None:
    task_id = service.add_task("tests.handlers.Succeed", create_run=True)
    page = read_only.get(f"/tasks/{task_id}").text
    assert 'id="cancel-form"' not in page
    assert "read-only" in page
    for path in (f"/tasks/{task_id}/cancel", f"/tasks/{task_id}/retry", "/tasks", "/login"):
        response = read_only.post(path, data={"token": TOKEN})
        assert response.status_code == 403
        assert "writes are disabled" in response.text
    assert service.get_task(task_id).cancel_requested_on is None


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_are_computed_from_the_tables(
    client: TestClient, service: TaskQueueService, clock: FakeClock, database: Database
) -> None:
    seed(service, clock)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    succeed = "tests.handlers.Succeed"
    assert value("taskq_tasks", handler=succeed, status="success") == 1
    assert value("taskq_tasks", handler=succeed, status="never_run") == 1
    assert value("taskq_tasks", handler="tests.handlers.AlwaysFail", status="error") == 1
    assert value("taskq_runs", handler="tests.handlers.Talk", status="success") == 1
    assert value("taskq_runs", handler="tests.handlers.AlwaysFail", status="error") == 1
    assert value("taskq_run_duration_seconds_count", handler=succeed) == 1
    assert value("taskq_run_duration_seconds_bucket", handler=succeed, le="0.1") == 1
    assert value("taskq_run_duration_seconds_bucket", handler=succeed, le="+Inf") == 1
    assert value("taskq_run_duration_seconds_sum", handler=succeed) == 0
    assert value("taskq_runners_live", role="runner") == 0  # drive()'s runner has left
    assert value("taskq_runners_timed_out_total", role="runner") == 0
    assert value("taskq_due_runs") == 0  # the later task has no run yet

    with database.transaction() as connection:  # as the overseer marks a dead runner
        connection.execute(update(TaskRunner).values(status=RunnerStatus.TIMEOUT))
    reaped = [
        sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
        if sample.name == "taskq_runners_timed_out_total" and sample.labels["role"] == "runner"
    ]
    assert reaped == [1]


# -- settings and the command line -------------------------------------------------------------


def test_settings_from_the_environment_and_the_token_kept_out_of_repr() -> None:
    resolved = Settings.resolve(
        environ={"TASKQ_DASHBOARD_TOKEN": "hunter2", "TASKQ_FLOWER_URL": "http://f:5555"}
    )
    assert (resolved.dashboard_token, resolved.flower_url) == ("hunter2", "http://f:5555")
    assert "hunter2" not in repr(resolved)
    assert Settings().dashboard_token == ""


def test_cli_dashboard_serves_with_the_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    from celery_taskq.web import server

    calls: list[tuple[Settings, str, int]] = []
    apps: list[object] = []

    def serve(settings: Settings, host: str, port: int, celery_app: object) -> None:
        calls.append((settings, host, port))
        apps.append(celery_app)

    monkeypatch.setattr(server, "serve", serve)
    monkeypatch.setenv("TASKQ_FLOWER_URL", "http://flower:5555")
    code = main(["--database-url", database_url, "dashboard", "--host", "127.0.0.2", "--port", "9"])
    assert code == 0
    ((settings, host, port),) = calls
    assert (settings.database_url, settings.flower_url, host, port) == (
        database_url,
        "http://flower:5555",
        "127.0.0.2",
        9,
    )
    assert apps == [None]  # no --app: re-sends are refused
    assert main(["dashboard", "--port", "70000"]) == 2
    assert "70000" in capsys.readouterr().err


def test_cli_module_stays_light() -> None:
    program = (
        "import sys, celery_taskq.cli; print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_runs_marked_running_show_as_open(client: TestClient, service: TaskQueueService) -> None:
    task_id = service.add_task("tests.handlers.Succeed", create_run=True)
    run = service.get_task(task_id).runs[0]
    assert run.status is RunStatus.SCHEDULED
    page = client.get(f"/tasks/{task_id}").text
    assert f'data-live="/api/v1/runs/{run.id}"' in page
    assert '<progress max="100" value="0"' in page


def test_the_web_layer_reads_through_the_core_and_writes_no_sql() -> None:
    web = Path(__file__).resolve().parent.parent / "celery_taskq" / "web"
    for module in web.glob("*.py"):
        source = module.read_text()
        assert "sqlalchemy" not in source, module.name
        assert "celery_taskq.core.models import TaskQueue" not in source, module.name
