"""Schedules over HTTP, on SQLite and PostgreSQL: the API's reads and token-guarded writes,
refusals that write nothing, and the page's buttons behind the token and CSRF checks."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from celery_taskq.cli import main
from celery_taskq.core.schedule_models import TaskSchedule
from celery_taskq.core.schedules_firing import fire_due_schedules
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from tests.helpers import count
from tests.web_support import TOKEN, web_settings

AUTH = {"Authorization": f"Bearer {TOKEN}"}
OWN = "http://testserver"
NEW = {
    "name": "reports",
    "handler": "tests.handlers.Succeed",
    "data": {"to": "ops", "password": "hunter2"},
    "crontab": "30 2 * * *",
    "timezone": "Europe/Paris",
    "misfire_policy": "skip",
}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A dashboard with a token, on the test database."""
    with TestClient(create_app(web_settings(settings))) as client:
        yield client


def test_the_api_adds_edits_pauses_runs_and_removes_a_schedule(
    client: TestClient, database: Database
) -> None:
    # Given no token, a write is refused and nothing is written
    assert client.post("/api/v1/schedules", json=NEW).status_code == 401
    # When a schedule is added with the token
    added = client.post("/api/v1/schedules", json=NEW, headers=AUTH)
    assert added.status_code == 201, added.text
    assert added.json()["crontab"] == "30 2 * * *"
    assert added.json()["data"] != NEW["data"]  # its password redacted, as a task's data is
    # Then it is listed, and edits, pause, resume and run-now each answer the schedule
    assert [item["name"] for item in client.get("/api/v1/schedules").json()] == ["reports"]
    edited = client.patch("/api/v1/schedules/reports", json={"interval": 60}, headers=AUTH)
    assert (edited.json()["interval"], edited.json()["crontab"]) == (60, None)
    assert client.post("/api/v1/schedules/reports/pause", headers=AUTH).json()["paused"]
    assert not client.post("/api/v1/schedules/reports/resume", headers=AUTH).json()["paused"]
    task_id = client.post("/api/v1/schedules/reports/run-now", headers=AUTH).json()["task_id"]
    shown = client.get("/api/v1/schedules/reports").json()
    assert (shown["last_task_id"], shown["last_status"]) == (task_id, "scheduled")
    assert shown["slots"] == []
    # And removing it leaves its task
    assert client.delete("/api/v1/schedules/reports", headers=AUTH).status_code == 204
    assert client.get("/api/v1/schedules/reports").status_code == 404
    assert client.get(f"/api/v1/tasks/{task_id}").status_code == 200


BAD_SCHEDULES = [
    ({"handler": "tests.handlers.NoSuchHandler"}, 400, "NoSuchHandler"),
    ({"crontab": "30 2 * *"}, 400, "five fields"),
    ({"timezone": "Mars/Olympus"}, 400, "unknown timezone"),
    ({"name": "twice"}, 409, "exists already"),
    ({"misfire_policy": "later"}, 422, "misfire_policy"),
]
"""Changes to a good schedule that make it bad, with the status and what the error says."""


def test_bad_schedules_are_refused_with_their_reason_and_nothing_is_written(
    client: TestClient, database: Database
) -> None:
    assert client.post("/api/v1/schedules", json={**NEW, "name": "twice"}, headers=AUTH)
    for changes, status, message in BAD_SCHEDULES:
        refused = client.post("/api/v1/schedules", json={**NEW, **changes}, headers=AUTH)
        assert refused.status_code == status, refused.text
        assert message in refused.text
    assert count(database, TaskSchedule) == 1


def test_the_page_lists_schedules_and_its_buttons_need_the_session_and_csrf_token(
    client: TestClient,
) -> None:
    # Given a schedule and a signed-in session
    client.post("/api/v1/schedules", json=NEW, headers=AUTH)
    assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
    page = client.get("/schedules").text
    assert "reports" in page
    assert "cron 30 2 * * * Europe/Paris" in page
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    # When the pause button is sent without the CSRF token, it is refused
    refused = client.post(
        "/schedules/reports/pause", data={}, headers={"Origin": OWN}, follow_redirects=False
    )
    assert refused.status_code == 403
    assert not client.get("/api/v1/schedules/reports").json()["paused"]
    # When it is sent with it, the schedule is paused and the page says so
    paused = client.post(
        "/schedules/reports/pause",
        data={"csrf_token": csrf.group(1)},
        headers={"Origin": OWN},
        follow_redirects=True,
    )
    assert "Schedule paused." in paused.text
    assert client.get("/api/v1/schedules/reports").json()["paused"]


def test_the_pages_edit_form_changes_the_timing_and_refuses_bad_parts_writing_nothing(
    client: TestClient,
) -> None:
    # Given a crontab schedule and a signed-in session with its CSRF token
    client.post("/api/v1/schedules", json=NEW, headers=AUTH)
    assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
    page = client.get("/schedules").text
    assert 'action="/schedules/reports/edit"' in page
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None

    def edit(**fields: str) -> httpx2.Response:
        return client.post(
            "/schedules/reports/edit",
            data={"csrf_token": csrf.group(1), **fields},
            headers={"Origin": OWN},
            follow_redirects=True,
        )

    # When bad parts are sent, each is refused with its reason and nothing changes
    for fields, reason in (
        ({"interval": "60", "crontab": "* * * * *"}, "not both"),
        ({"interval": "0"}, "at least 1"),
        ({"crontab": "61 * * * *"}, "crontab"),
        ({"timezone": "Mars/Olympus"}, "Mars/Olympus"),
        ({"misfire_policy": "sometimes"}, "misfire policy"),
        ({}, "at least one part"),
    ):
        refused = edit(**fields)
        assert refused.status_code == 400, (fields, refused.text)
        assert reason in refused.text, (fields, refused.text)
    shown = client.get("/api/v1/schedules/reports").json()
    assert (shown["interval"], shown["crontab"], shown["misfire_policy"]) == (
        None,
        "30 2 * * *",
        "skip",
    )
    # When an interval and a misfire policy are sent, they replace the crontab and the policy
    changed = edit(interval="120", misfire_policy="catch_up_once")
    assert "Schedule changed" in changed.text
    shown = client.get("/api/v1/schedules/reports").json()
    assert (shown["interval"], shown["crontab"], shown["misfire_policy"]) == (
        120,
        None,
        "catch_up_once",
    )


def test_readers_and_the_tick_cope_with_hostile_stored_schedules(
    client: TestClient, database: Database, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a due schedule whose stored data is nested 5,000 deep and whose title and name
    # hold control characters (written by hand, past every check)
    client.post("/api/v1/schedules", json={**NEW, "crontab": None, "interval": 1}, headers=AUTH)
    as_json = ":v" if database.dialect == "sqlite" else "CAST(:v AS jsonb)"
    with database.transaction() as connection:
        connection.execute(
            text(
                f'UPDATE "TaskSchedules" SET "TaskData" = {as_json}, "Title" = :title,'  # noqa: S608
                ' "Name" = :name, "NextRunOn" = "CreatedOn"'
            ),
            {"v": "[" * 5000 + "]" * 5000, "title": "t\x1b[2J" * 30, "name": "n\x07"},
        )
    # Then the API and the command line answer it, bounded and escaped
    listed = client.get("/api/v1/schedules")
    assert listed.status_code == 200, listed.text
    assert "[nested too deep]" in listed.text
    assert client.get("/schedules").status_code == 200
    result = main(["--database-url", settings.database_url, "schedules", "list"])
    assert result == 0
    # And the tick refuses to fire it, says why, and goes on
    with caplog.at_level(logging.WARNING):
        assert fire_due_schedules(database, settings, datetime.now(UTC)) == 0
    assert "nested" in caplog.text
