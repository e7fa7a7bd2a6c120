"""The task list's search, sort and status chips on the page and in the HTTP API (``q``,
``sort``, ``order``, ``offset``), over FastAPI's TestClient on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from celery_taskq.core.listing import STATUS_FILTERS
from celery_taskq.core.models import TaskQueue
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.reports import search
from celery_taskq.reports.search import SORT_COLUMNS
from celery_taskq.web import api_routes, create_app
from tests.web_support import web_settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A dashboard on the test database."""
    with TestClient(create_app(web_settings(settings))) as client:
        yield client


def listed(html: str) -> list[int]:
    """The task ids of the page's table, in order."""
    return [int(found) for found in re.findall(r'<tr data-task-id="(\d+)"', html)]


def api_ids(client: TestClient, **params: Any) -> list[int]:
    response = client.get("/api/v1/tasks", params=params)
    assert response.status_code == 200, response.text
    return [task["id"] for task in response.json()["tasks"]]


def test_the_page_searches_sorts_and_filters_by_chip(
    client: TestClient, service: TaskQueueService, database: Database
) -> None:
    # Given tasks, one with a value deep in its data and one with a Celery id
    plain = service.add_task("tests.handlers.Succeed", {"n": 1}, title="plain")
    deep = service.add_task("tests.handlers.AlwaysFail", {"customer": {"email": "zoe@example.org"}})
    native = service.add_task("tests.handlers.Succeed", queued_by="ops")
    with database.transaction() as connection:
        connection.execute(
            update(TaskQueue).where(TaskQueue.id == native).values(celery_task_id="c-7f3e91")
        )
    service.cancel_task(plain)

    # A search finds a task by a value inside its data, and by its Celery id
    page = client.get("/tasks", params={"q": "ZOE@example"})
    assert page.status_code == 200
    assert listed(page.text) == [deep]
    assert 'value="ZOE@example"' in page.text
    assert listed(client.get("/tasks", params={"q": "c-7f3e91"}).text) == [native]
    assert listed(
        client.get("/tasks", params={"sort": "id", "order": "asc", "offset": "0"}).text
    ) == [
        plain,
        deep,
        native,
    ]
    assert 'id="search-window"' not in page.text

    # Column headers sort (a second click reverses), keeping the search and the filter
    by_handler = client.get("/tasks", params={"sort": "handler", "order": "asc"}).text
    assert listed(by_handler) == [deep, plain, native]
    header = re.search(
        r'<a href="/tasks\?([^"]*)" data-sort="handler" class="sorted asc"', by_handler
    )
    assert header is not None
    assert "order=desc" in header.group(1)
    reversed_page = client.get("/tasks", params={"sort": "handler", "order": "desc"}).text
    assert listed(reversed_page) == [native, plain, deep]

    # Chips: cancelled and never-run among the statuses, each a link that applies at once
    chips = client.get("/tasks", params={"q": "handlers"}).text
    for chip in ("any", "scheduled", "error", "cancelled", "never-run"):
        assert f'data-status="{chip}"' in chips
    cancelled_link = re.search(r'href="/tasks\?([^"]*)" data-status="cancelled"', chips)
    assert cancelled_link is not None
    cancelled_query = cancelled_link.group(1).replace("&amp;", "&")
    assert "q=handlers" in cancelled_query
    assert listed(client.get(f"/tasks?{cancelled_query}").text) == [plain]
    assert set(listed(client.get("/tasks?status=never-run").text)) == {plain, deep, native}


def test_the_page_says_when_the_window_bounded_a_search(
    client: TestClient, service: TaskQueueService, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [service.add_task("tests.handlers.Succeed", {"k": "needle"}) for _ in range(3)]
    monkeypatch.setattr(search, "SEARCH_WINDOW", 2)
    page = client.get("/tasks", params={"q": "ne"}).text
    assert listed(page) == ids[:0:-1]
    assert 'id="search-window"' in page


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"q": "a\x00b"}, "search must not contain NUL characters"),
        ({"q": "x" * 10_240}, "search is 10240 characters long: at most 200"),
        ({"sort": "Title"}, "unknown sort 'Title'"),
        ({"order": "up"}, "unknown order 'up'"),
        ({"status": "lost"}, "unknown status 'lost'"),
        ({"sort": "handler", "offset": "99999"}, "offset must be from 0 to 10000"),
        ({"before_id": "5", "sort": "handler"}, "before_id pages the default order only"),
        ({"sort": "handler", "offset": "ten"}, "offset must be a whole number"),
        ({"sort": "handler", "offset": "-1"}, "offset must be from 0 to 10000"),
    ],
)
def test_bad_list_input_is_refused_on_the_page_with_its_reason(
    client: TestClient, params: dict[str, str], message: str
) -> None:
    page = client.get("/tasks", params=params)
    assert page.status_code == 400
    assert message in html.unescape(page.text)
    assert listed(page.text) == []


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"q": "a\x00b"}, 400, "search must not contain NUL characters"),
        ({"q": "x" * 10_240}, 400, "search is 10240 characters long: at most 200"),
        # Names and numbers are checked by the API's schema, which lists the allowed values
        ({"sort": "Title"}, 422, "query.sort"),
        ({"order": "up"}, 422, "query.order"),
        ({"status": "lost"}, 422, "query.status"),
        ({"sort": "handler", "offset": "99999"}, 422, "query.offset"),
    ],
)
def test_bad_list_input_is_refused_by_the_api(
    client: TestClient, params: dict[str, str], status: int, message: str
) -> None:
    response = client.get("/api/v1/tasks", params=params)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_the_api_offers_exactly_the_filters_and_sorts_the_query_knows() -> None:
    assert get_args(api_routes.StatusName) == STATUS_FILTERS
    assert get_args(api_routes.SortName) == tuple(SORT_COLUMNS)


def test_the_api_searches_sorts_and_pages_by_offset(
    client: TestClient, service: TaskQueueService
) -> None:
    ids = [service.add_task("tests.handlers.Succeed", {"batch": "B-17%"}) for _ in range(3)]
    other = service.add_task("tests.handlers.AlwaysFail", {"batch": "B-170"})

    assert api_ids(client, q="b-17%") == ids[::-1]
    assert api_ids(client, q="B-17_") == []
    first = client.get("/api/v1/tasks", params={"sort": "handler", "order": "asc", "limit": 2})
    body = first.json()
    assert [task["id"] for task in body["tasks"]] == [other, ids[0]]
    assert body["next_offset"] == 2
    assert body["next_before_id"] is None
    assert body["search_window_bounded"] is False
    assert api_ids(client, sort="handler", order="asc", limit=2, offset=2) == ids[1:]
    assert api_ids(client, status="never-run", q="B-170") == [other]
