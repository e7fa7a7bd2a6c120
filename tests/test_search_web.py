"""The task list's search, sort and status chips in the HTTP API (``q``,
``sort``, ``order``, ``offset``), over FastAPI's TestClient on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient

from celery_taskq.core.listing import STATUS_FILTERS
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
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
