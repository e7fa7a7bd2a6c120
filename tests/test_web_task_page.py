"""A task's page over TestClient, on SQLite and PostgreSQL: the steps of a multi-step task with
their statuses, the hint of a read-only dashboard, and the class that makes a failed run's
progress bar red."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from celery_taskq.core.models import RunStatus, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.steps import Step
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from tests.helpers import drive
from tests.web_support import field, row_of, web_settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A dashboard with a token on the test database."""
    with TestClient(create_app(web_settings(settings))) as client:
        yield client


def test_a_read_only_task_page_says_how_to_enable_writes(
    settings: Settings, service: TaskQueueService
) -> None:
    task_id = service.add_task("tests.handlers.Succeed")
    with TestClient(create_app(replace(web_settings(settings), dashboard_token=""))) as reader:
        html = reader.get(f"/tasks/{task_id}").text
        schedules = reader.get("/schedules").text
    hint = re.search(r'<p class="hint" id="read-only-hint">(.*?)</p>', html, re.S)
    assert hint, html
    assert "TASKQ_DASHBOARD_TOKEN" in hint.group(1)
    assert "cancel" in hint.group(1)
    # And the header's "read-only" leads to the page that explains it, naming the setting
    assert re.search(r'<a href="/login" id="read-only" title="[^"]*TASKQ_DASHBOARD_TOKEN', html)
    # And the schedules page says the same of its buttons
    assert re.search(r'id="read-only-hint">Read-only: set <code>TASKQ_DASHBOARD_TOKEN', schedules)
    with TestClient(create_app(web_settings(settings))) as writer:
        assert "read-only-hint" not in writer.get(f"/tasks/{task_id}").text
        assert "read-only-hint" not in writer.get("/schedules").text


def test_a_failed_run_has_a_red_progress_bar_class(
    client: TestClient, service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task("tests.handlers.Succeed", max_retries=1, create_run=True)
    with database.transaction() as connection:
        connection.execute(
            update(TaskRun)
            .where(TaskRun.task_queue_id == task_id)
            .values(status=RunStatus.ERROR, finished_on=datetime.now(UTC))
        )
    html = client.get(f"/tasks/{task_id}").text
    assert re.search(r'<progress [^>]*data-field="bar" class="error"', html)


def test_a_multi_step_task_page_shows_each_step_and_its_status(
    client: TestClient, service: TaskQueueService
) -> None:
    # Given a three-step task whose second step fails and stops it, worked once
    task_id = service.add_steps_task(
        [
            Step("tests.handlers.Succeed", title="prepare"),
            Step("tests.handlers.AlwaysFail", interrupt_on_step_fault=True, title="send"),
            Step("tests.handlers.Succeed", title="tidy"),
        ],
        max_retries=1,
    )
    drive(service)
    # When its page is read
    html = client.get(f"/tasks/{task_id}").text
    # Then each step shows its status, and the failed one its error and its run
    statuses = [
        field(row_of(html, "data-step", str(number)), "step-status") for number in (1, 2, 3)
    ]
    assert statuses == ["success", "error", "not run"]
    failed = row_of(html, "data-step", "2")
    assert "send" in failed
    assert re.search(r'href="#run-\d+"', failed)
    assert "<code>" in failed  # its error code
