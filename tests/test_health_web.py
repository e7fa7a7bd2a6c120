"""The dashboard's probes (``/healthz``, ``/readyz``) and the liveness metrics (beat-tick age,
due backlog per queue), on SQLite and PostgreSQL, over the app's test client; the probes once
more through a served dashboard."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.reports import backlog
from celery_taskq.web import create_app
from tests.test_health import behind_head, tick
from tests.test_reports import Rows
from tests.web_support import live_server


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A dashboard on the test database."""
    with TestClient(create_app(settings)) as client:
        yield client


def test_healthz_and_readyz_on_a_ready_database(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert [check["state"] for check in ready.json()["checks"]] == ["ok", "ok"]
    assert client.head("/readyz").status_code == 200
    assert client.get("/api/v1/health").json() == {"status": "ok"}  # still there


def test_readyz_is_503_with_the_reason_when_the_schema_is_behind(
    client: TestClient, database: Database
) -> None:
    behind_head(database)

    ready = client.get("/readyz")

    assert ready.status_code == 503
    assert ready.json()["status"] == "unready"
    assert ready.json()["reason"].startswith("schema: at revision ")
    assert "run celery-taskq db upgrade" in ready.json()["reason"]
    assert client.get("/healthz").status_code == 200  # liveness needs no database


def test_without_a_database_healthz_answers_and_readyz_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "taskq.db"
    with TestClient(create_app(Settings(database_url=f"sqlite:///{missing}"))) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["reason"] == f"database: no SQLite database file at {missing}"
    assert [check["state"] for check in ready.json()["checks"]] == ["failed", "skipped"]
    assert not missing.parent.exists()


def test_probes_through_a_served_dashboard(tmp_path: Path, sqlite_template: Path) -> None:
    database = tmp_path / "taskq.db"
    database.write_bytes(sqlite_template.read_bytes())
    app = create_app(Settings(database_url=f"sqlite:///{database}"))
    with live_server(app) as url:
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as answer:  # noqa: S310
            assert (answer.status, json.load(answer)) == (200, {"status": "ok"})
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as answer:  # noqa: S310
            assert (answer.status, json.load(answer)["status"]) == (200, "ready")
        database.unlink()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/readyz", timeout=10)  # noqa: S310
        assert refused.value.code == 503
        assert json.load(refused.value)["reason"].startswith("database: no SQLite database file")


def samples(client: TestClient, name: str) -> dict[str, float]:
    """The samples of a metric family, by their one label's value."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == name:
            return {next(iter(s.labels.values())): s.value for s in family.samples}
    raise AssertionError(f"no {name} in /metrics")


def test_liveness_metrics(client: TestClient, database: Database) -> None:
    assert samples(client, "taskq_beat_tick_age_seconds") == {}  # never ticked: no sample
    assert samples(client, "taskq_due_backlog_age_seconds") == {}
    now = datetime.now(UTC)
    tick(database, "process", now - timedelta(seconds=40))
    tick(database, "create_runners", now - timedelta(seconds=400))
    rows = Rows(database)
    for waited, queue in ((600, "reports"), (30, None), (90, None), (-60, "reports")):
        task = rows.task(
            "app.jobs.A", now - timedelta(hours=1), scheduled_on=now - timedelta(seconds=waited)
        )
        rows.run(task, RunStatus.SCHEDULED)
        if queue is not None:
            set_queue(database, task, queue)
    running = rows.task("app.jobs.A", now - timedelta(hours=2))
    rows.run(running, RunStatus.RUNNING, started=now - timedelta(hours=1))  # not backlog

    ticks = samples(client, "taskq_beat_tick_age_seconds")
    ages = samples(client, "taskq_due_backlog_age_seconds")
    runs = samples(client, "taskq_due_backlog_runs")

    assert set(ticks) == {"process", "create_runners"}
    assert 40 <= ticks["process"] < 100
    assert 400 <= ticks["create_runners"] < 460
    assert set(ages) == set(runs) == {"default", "reports"}
    assert (runs["default"], runs["reports"]) == (2, 1)  # the future run is not due
    assert 90 <= ages["default"] < 150
    assert 600 <= ages["reports"] < 660
    direct = backlog.due_backlog(database)
    assert [queue.due_runs for queue in direct] == [runs[queue.queue] for queue in direct]


def set_queue(database: Database, task_id: int, queue: str) -> None:
    """Put a task and its runs in ``queue``."""
    with database.transaction() as connection:
        connection.execute(update(TaskQueue).where(TaskQueue.id == task_id).values(queue=queue))
        connection.execute(
            update(TaskRun).where(TaskRun.task_queue_id == task_id).values(queue=queue)
        )
