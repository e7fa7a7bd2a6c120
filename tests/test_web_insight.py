"""The Insight page and the dashboard's look over TestClient, on SQLite and PostgreSQL: the
per-handler table, queues, beat ticks and heartbeats judged stale, the overview's chart on a
fresh install, and a task page's read-only hint, red progress bar and steps."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, update

from celery_taskq.core.models import BeatTick, RunnerStatus, RunStatus, TaskQueue, TaskRun
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from celery_taskq.web.charts import MIN_BUCKETS
from tests.test_reports import A, B, Rows
from tests.web_support import field, row_of, web_settings


@pytest.fixture
def rows(database: Database) -> Rows:
    """A writer of rows into the test database."""
    return Rows(database)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A dashboard with a token on the test database."""
    with TestClient(create_app(web_settings(settings))) as client:
        yield client


# -- the page -------------------------------------------------------------------------------


def seed_now(database: Database, rows: Rows, now: datetime) -> dict[str, int]:
    """Runs of two handlers in the last hour, a due backlog in two queues (one waiting for
    ten minutes), an OnProcess tick 5 s ago (OnCreateTaskRunners never ticked), and two running
    runners, one of which last beat an hour ago."""
    for seconds, status in [(1, RunStatus.SUCCESS), (3, RunStatus.ERROR)]:
        started = now - timedelta(minutes=1, seconds=seconds)
        rows.run(
            rows.task(A, now - timedelta(minutes=30)), status, started=started, seconds=seconds
        )
    rows.run(rows.task(B, now - timedelta(minutes=20)), RunStatus.SUCCESS, finished=now)
    waiting = {"mail": now - timedelta(minutes=10), "reports": now - timedelta(seconds=20)}
    for queue, due in waiting.items():
        task = rows.task("app.jobs.Due", due)
        rows.run(task, RunStatus.SCHEDULED)
        with database.transaction() as connection:
            connection.execute(update(TaskQueue).where(TaskQueue.id == task).values(queue=queue))
            connection.execute(
                update(TaskRun).where(TaskRun.task_queue_id == task).values(queue=queue)
            )
    with database.transaction() as connection:
        connection.execute(
            insert(BeatTick).values(event="process", slot=1, ticked_on=now - timedelta(seconds=5))
        )
    fresh = rows.runner(RunnerStatus.RUNNING, now - timedelta(hours=2), heartbeat=now)
    stale = rows.runner(
        RunnerStatus.RUNNING, now - timedelta(hours=2), heartbeat=now - timedelta(hours=1)
    )
    rows.runner(RunnerStatus.SUCCESS, now - timedelta(hours=2), finished=now)
    return {"fresh": fresh, "stale": stale}


def test_insight_page_shows_handlers_queues_beat_and_heartbeats(
    client: TestClient, database: Database, rows: Rows
) -> None:
    # Given an hour of activity, a backlog, beat ticks and runners
    runners = seed_now(database, rows, datetime.now(UTC))

    # When the page is read
    response = client.get("/insight?since=1h")
    assert response.status_code == 200, response.text
    html = response.text

    # Then the nav links to it, and each handler's figures are shown
    assert '<a href="/insight" class="current">Insight</a>' in html
    a_row = row_of(html, "data-handler", A)
    assert field(a_row, "runs") == "2"
    assert field(a_row, "failed") == "1"
    assert field(a_row, "failure-rate") == "50.0%"
    assert field(a_row, "p50") == "2.000"
    assert field(a_row, "p95") == "2.900"
    assert field(a_row, "throughput") == "2.00"
    assert field(row_of(html, "data-handler", B), "p50") == "-"  # it never started
    # And the queues with their depth, the one waiting too long highlighted
    mail, reports_queue = row_of(html, "data-queue", "mail"), row_of(html, "data-queue", "reports")
    assert field(mail, "due") == "1"
    assert 'class="stale"' in mail
    assert "waiting too long" in mail
    assert 'class="stale"' not in reports_queue
    assert 595 < float(field(mail, "oldest").split()[0]) < 900
    # And the beat: OnProcess fresh, OnCreateTaskRunners never ticked
    assert 'class="stale"' not in row_of(html, "data-event", "process")
    assert "never ticked" in row_of(html, "data-event", "create_runners")
    # And the running runners, the silent one highlighted; finished runners are not listed
    assert 'class="stale"' in row_of(html, "data-runner-id", str(runners["stale"]))
    assert 'class="stale"' not in row_of(html, "data-runner-id", str(runners["fresh"]))
    assert html.count("<tr data-runner-id=") == 2
    # And the Runners page highlights the same runner
    runners_page = client.get("/runners").text
    for name, stale in (("stale", True), ("fresh", False)):
        opening = re.search(rf'<tr id="runner-{runners[name]}"[^>]*>', runners_page)
        assert opening, name
        assert ('class="stale"' in opening.group(0)) is stale, name


def test_insight_page_on_an_empty_database_and_a_bad_window(client: TestClient) -> None:
    html = client.get("/insight").text
    overview = client.get("/").text
    assert 'id="chart-empty"' in overview  # the overview's chart is empty, and whole
    assert 'id="chart-since"' not in overview
    for empty in ("no-handlers", "no-queues", "no-runners"):
        assert f'id="{empty}"' in html
    refused = client.get("/insight?since=2h")
    assert refused.status_code == 400
    assert "since must be one of 1h, 6h, 24h, 7d, 30d" in refused.text


def test_overview_chart_of_a_fresh_install_narrows_to_its_runs(
    client: TestClient, rows: Rows
) -> None:
    # Given a fresh install whose only runs ended in the last minutes
    now = datetime.now(UTC)
    for minutes in (1, 4):
        rows.run(rows.task(A, now), RunStatus.SUCCESS, finished=now - timedelta(minutes=minutes))
    # When the overview's default day is shown
    html = client.get("/").text
    # Then the chart has its minimum of one-minute bars, not 24 hour-long ones, and names UTC
    assert html.count('<g class="bar"') == MIN_BUCKETS
    assert re.search(r'id="chart-timezone"[^>]*>times in UTC<', html)
    assert "from the window's first run" in html  # the heading says the chart is narrowed
    assert 'id="chart-empty"' not in html
