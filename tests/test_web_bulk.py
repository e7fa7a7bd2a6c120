"""Bulk retry and cancel from the task list: the confirmation page writes nothing, the action is
bounded and behind the token and the CSRF checks, and each task is changed wholly or not at all
(a task that cannot be changed is reported, and the others go on).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Table, insert

from celery_taskq.core.bulk import MAX_BULK_TASKS
from celery_taskq.core.models import RunStatus, TaskQueue
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.reports import search
from celery_taskq.web import create_app
from tests.helpers import drive, runs_of, task_row
from tests.test_security import snapshot_tables
from tests.test_web_csrf import OWN, csrf_of, sign_in
from tests.web_support import TOKEN, web_settings

MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(settings: Settings) -> Iterator[MakeClient]:
    """Dashboards on the test database (``token=""``: read-only)."""
    clients: list[TestClient] = []

    def make(**options: Any) -> TestClient:
        client = TestClient(create_app(web_settings(settings, **options)), base_url=OWN)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def failed_tasks(service: TaskQueueService, count: int) -> list[int]:
    """Tasks whose one run failed, out of retries."""
    ids = [service.add_task("tests.handlers.AlwaysFail", max_retries=1) for _ in range(count)]
    drive(service)
    return ids


def act(client: TestClient, action: str, ids: list[int] | str, **fields: str) -> Any:
    """POST the confirmation form of ``action`` for ``ids`` (with the token unless overridden)."""
    task_ids = ids if isinstance(ids, str) else ",".join(str(task_id) for task_id in ids)
    return client.post(
        f"/bulk/{action}",
        data={"task_ids": task_ids, "token": TOKEN, **fields},
        follow_redirects=False,
    )


def outcomes(page: str) -> dict[int, str]:
    """Each task's outcome on the result page: ``yes`` (changed) or ``no`` (refused)."""
    return {
        int(task_id): done
        for task_id, done in re.findall(r'data-task-id="(\d+)" data-done="(yes|no)"', page)
    }


def test_the_confirmation_shows_the_count_and_writes_nothing(
    make_client: MakeClient, service: TaskQueueService, database: Database
) -> None:
    # Given three failed tasks and one that succeeded, all listed with a checkbox
    failed = failed_tasks(service, 3)
    other = service.add_task("tests.handlers.Succeed", {"customer": "acme-7"})
    drive(service)
    client = make_client()
    listing = client.get("/tasks").text
    for task_id in [*failed, other]:
        assert f'name="task_id" value="{task_id}" form="bulk-form"' in listing
    before = snapshot_tables(database)

    # When two are ticked, the page asks to confirm two, and carries exactly their ids
    page = client.get("/bulk", params={"action": "retry", "task_id": failed[:2]})
    assert page.status_code == 200, page.text
    assert '<span id="bulk-count">2</span>' in page.text
    assert f'name="task_ids" value="{failed[0]},{failed[1]}"' in page.text
    assert 'action="/bulk/retry"' in page.text

    # And "all matching" takes the list's filter: the three failed ones, newest first
    every = client.get(
        "/bulk", params={"action": "cancel", "all": "1", "handler": "tests.handlers.AlwaysFail"}
    )
    assert every.status_code == 200, every.text
    assert '<span id="bulk-count">3</span>' in every.text
    assert f'value="{",".join(str(task_id) for task_id in reversed(failed))}"' in every.text
    # And the list's search too: a value inside a task's data
    searched = client.get("/bulk", params={"action": "retry", "all": "1", "q": "acme-7"})
    assert '<span id="bulk-count">1</span>' in searched.text
    assert f'name="task_ids" value="{other}"' in searched.text
    assert snapshot_tables(database) == before


def test_a_bulk_retry_gives_each_task_a_run_and_reports_the_one_it_cannot(
    make_client: MakeClient,
    service: TaskQueueService,
    database: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given three failed tasks and one with a run in progress
    failed = failed_tasks(service, 3)
    busy = service.add_task("tests.handlers.Succeed", create_run=True)
    busy_before = [(run.id, run.status) for run in runs_of(database, busy)]
    client = make_client()

    # When all four are retried in one action
    with caplog.at_level(logging.INFO, logger="celery_taskq.core.bulk"):
        response = act(client, "retry", [*failed, busy])

    # Then the three get one new scheduled run each, and the busy one is reported, unchanged
    assert response.status_code == 200, response.text
    assert outcomes(response.text) == {**dict.fromkeys(failed, "yes"), busy: "no"}
    assert f"task {busy} already has a run in progress" in response.text
    for task_id in failed:
        assert [run.status for run in runs_of(database, task_id)] == [
            RunStatus.ERROR,
            RunStatus.SCHEDULED,
        ]
        assert task_row(database, task_id).last_status is RunStatus.SCHEDULED
    assert [(run.id, run.status) for run in runs_of(database, busy)] == busy_before
    # And the log says who did it
    (record,) = [r for r in caplog.records if getattr(r, "action", "") == "tasks_bulk_retry"]
    assert record.by == "dashboard (token, testclient)"  # type: ignore[attr-defined]
    assert record.task_ids == failed  # type: ignore[attr-defined]
    assert record.refused_ids == [busy]  # type: ignore[attr-defined]


def test_a_bulk_cancel_by_a_signed_in_session_reports_finished_and_unknown_tasks(
    make_client: MakeClient, service: TaskQueueService, database: Database
) -> None:
    # Given two tasks waiting for their runs, one finished, and an id that is nobody's
    (finished,) = failed_tasks(service, 1)
    waiting = [service.add_task("tests.handlers.Succeed", create_run=True) for _ in range(2)]
    finished_before = task_row(database, finished)
    client = make_client()
    csrf = sign_in(client)

    # When they are cancelled by the signed-in session (with its CSRF token, from this origin)
    response = client.post(
        "/bulk/cancel",
        data={"task_ids": f"{waiting[0]},{waiting[1]},{finished},999999", "csrf_token": csrf},
        headers={"Origin": OWN},
        follow_redirects=False,
    )

    # Then the waiting ones are cancelled and their runs ended; the others are reported
    assert response.status_code == 200, response.text
    assert outcomes(response.text) == {
        waiting[0]: "yes",
        waiting[1]: "yes",
        finished: "no",
        999999: "no",
    }
    assert f"task {finished} has already finished" in response.text
    assert "no task with id 999999" in response.text
    for task_id in waiting:
        assert task_row(database, task_id).cancel_requested_on is not None
        assert [run.error_code for run in runs_of(database, task_id)] == ["cancelled"]
    after = task_row(database, finished)
    assert (after.cancel_requested_on, after.last_status) == (None, finished_before.last_status)


@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_refusals_write_nothing(
    make_client: MakeClient, service: TaskQueueService, database: Database, action: str
) -> None:
    failed = failed_tasks(service, 2)
    open_tasks = [service.add_task("tests.handlers.Succeed", create_run=True) for _ in range(2)]
    ids = [*failed, *open_tasks]
    client = make_client()
    before = snapshot_tables(database)
    too_many = list(range(1, MAX_BULK_TASKS + 2))
    refusals: list[tuple[Any, int, str]] = [
        # no credentials at all, and a wrong token
        (act(client, action, ids, token=""), 401, "token"),
        (act(client, action, ids, token="guess"), 401, "token"),  # noqa: S106
        # from another origin, whatever the form carries
        (
            client.post(
                f"/bulk/{action}",
                data={"task_ids": "1", "token": TOKEN},
                headers={"Origin": "http://127.0.0.1:9999"},
            ),
            403,
            "not from this dashboard",
        ),
        # above the maximum, an id that is not one, nothing selected, an unknown action
        (act(client, action, too_many), 400, f"at most {MAX_BULK_TASKS} tasks"),
        (act(client, action, f"{ids[0]},{ids[1]},x7"), 400, "'x7' is not a whole number"),
        (act(client, action, f"{ids[0]},0"), 400, "'0' is not a whole number"),
        (act(client, action, f"{ids[0]},\u00b2"), 400, "'\u00b2' is not a whole number"),
        (act(client, action, f"{ids[0]},{'9' * 5000}"), 400, "is not a whole number from 1"),
        (act(client, action, ""), 400, "select at least one task"),
        (act(client, "delete", ids), 400, "unknown bulk action 'delete'"),
    ]
    session = make_client()
    sign_in(session)
    refusals += [
        # the session cookie without its CSRF token, or without an Origin
        (
            session.post(
                f"/bulk/{action}", data={"task_ids": str(ids[0])}, headers={"Origin": OWN}
            ),
            403,
            "CSRF token",
        ),
        (
            session.post(
                f"/bulk/{action}",
                data={"task_ids": str(ids[0]), "csrf_token": csrf_of(session.get("/tasks").text)},
            ),
            403,
            "Origin or Referer",
        ),
    ]
    for response, status, message in refusals:
        assert response.status_code == status, response.text
        assert message in html.unescape(response.text)
    # The confirmation refuses the same bounds
    assert client.get("/bulk", params={"action": action, "task_id": too_many}).status_code == 400
    assert client.get("/bulk", params={"action": action}).status_code == 400
    assert snapshot_tables(database) == before


def test_all_matching_above_the_maximum_is_refused(
    make_client: MakeClient, database: Database
) -> None:
    now = datetime.now(UTC)
    with database.transaction() as connection:
        connection.execute(
            insert(cast(Table, TaskQueue.__table__)),
            [
                {
                    "TaskHandlerClass": "tests.handlers.Succeed",
                    "TaskData": {},
                    "ScheduledOn": now,
                    "QueuedOn": now,
                    "MaxRetries": 1,
                    "TaskRunsFailed": 0,
                }
            ]
            * (MAX_BULK_TASKS + 1),
        )
    client = make_client()
    response = client.get("/bulk", params={"action": "cancel", "all": "1"})
    assert response.status_code == 400
    assert f"at most {MAX_BULK_TASKS} tasks, and more than that match this filter" in response.text
    narrowed = client.get("/bulk", params={"action": "cancel", "all": "1", "handler": "nope"})
    assert narrowed.status_code == 400
    assert "no task matches this filter" in narrowed.text


def test_a_read_only_dashboard_offers_no_bulk_action(
    make_client: MakeClient, service: TaskQueueService, database: Database
) -> None:
    failed_tasks(service, 1)
    client = make_client(token="")
    assert 'id="bulk-form"' not in client.get("/tasks").text
    before = snapshot_tables(database)
    assert client.get("/bulk", params={"action": "retry", "task_id": "1"}).status_code == 403
    assert act(client, "retry", [1]).status_code == 403
    assert snapshot_tables(database) == before


def test_all_matching_says_when_the_search_looked_at_the_newest_tasks_only(
    make_client: MakeClient, service: TaskQueueService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a search window of 3 tasks (10,000 in use) and a matching task older than it
    monkeypatch.setattr(search, "SEARCH_WINDOW", 3)
    old = service.add_task("tests.handlers.Succeed", {"tag": "x"})
    newer = [service.add_task("tests.handlers.Succeed", {"tag": "x"}) for _ in range(3)]
    client = make_client()
    # When every task matching a search too short for an index is selected (any database)
    page = client.get("/bulk", params={"action": "cancel", "all": "1", "q": "x"})
    # Then the selection is the window's, and the page says older tasks were not looked at
    assert page.status_code == 200, page.text
    assert 'id="bulk-window"' in page.text
    assert f'value="{",".join(str(task_id) for task_id in reversed(newer))}"' in page.text
    assert f'href="/tasks/{old}"' not in page.text
