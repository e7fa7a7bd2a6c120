"""CSRF: a form sent by the session cookie must come from the dashboard's own origin and carry
the session's CSRF token; a form carrying the token itself needs no CSRF token; the API is
never authenticated by the cookie. Every refusal is a 403 (or 401) that writes nothing.

``SameSite=Strict`` does not keep the cookie from a page of the same site (another port of the
host, a sibling subdomain), so those are the origins tried here, as in the browser test
(``tests/test_web_csrf_browser.py``), where the cookie really is sent along.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from celery_taskq.web.auth import SESSION_COOKIE
from tests.helpers import drive
from tests.test_security import snapshot_tables
from tests.web_support import TOKEN, web_settings

OWN = "http://testserver"
"""The origin of TestClient's requests (its default base URL)."""

MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(settings: Settings) -> Iterator[MakeClient]:
    """Dashboards on the test database, at a base URL of the test's choice."""
    clients: list[TestClient] = []

    def make(base_url: str = OWN) -> TestClient:
        client = TestClient(create_app(web_settings(settings)), base_url=base_url)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def sign_in(client: TestClient) -> str:
    """Sign in with the token (as a script would: no Origin); the session's CSRF token."""
    response = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/tasks").text)


def csrf_of(page: str) -> str:
    """The CSRF token in a page's write forms."""
    found = re.search(r'name="csrf_token" value="([^"]*)"', page)
    assert found is not None, "the page has no CSRF field"
    return found.group(1)


@pytest.fixture
def targets(service: TaskQueueService) -> dict[str, tuple[str, dict[str, str]]]:
    """Each write form: its path and fields (before the CSRF token), on tasks it can act on."""
    failed = service.add_task("tests.handlers.AlwaysFail", max_retries=1)
    drive(service)
    open_task = service.add_task("tests.handlers.Succeed", create_run=True)
    return {
        "enqueue": ("/tasks", {"handler": "tests.handlers.Succeed", "data": "{}"}),
        "cancel": (f"/tasks/{open_task}/cancel", {}),
        "retry": (f"/tasks/{failed}/retry", {}),
    }


def post(client: TestClient, path: str, fields: dict[str, str], **headers: str) -> Any:
    """POST a form without following the redirect."""
    return client.post(path, data=fields, headers=headers, follow_redirects=False)


def test_every_write_form_carries_the_sessions_csrf_token(
    make_client: MakeClient, service: TaskQueueService
) -> None:
    failed = service.add_task("tests.handlers.AlwaysFail", max_retries=1)
    drive(service)
    cancellable = service.add_task("tests.handlers.Succeed", create_run=True)
    client = make_client()
    assert csrf_of(client.get("/tasks").text) == ""  # not signed in: nothing to carry
    token = sign_in(client)
    assert len(token) == 64
    pages = {
        "enqueue-form": client.get("/tasks").text,
        "cancel-form": client.get(f"/tasks/{cancellable}").text,
        "retry-form": client.get(f"/tasks/{failed}").text,
        "logout": client.get("/login").text,
    }
    for form_id, page in pages.items():
        form = re.search(
            rf'<form[^>]*(?:id="{form_id}"|action="/{form_id}")[^>]*>(.*?)</form>', page, re.S
        )
        assert form is not None, form_id
        assert f'name="csrf_token" value="{token}"' in form.group(1), form_id
    # Per session: another sign-in gets another cookie and another token.
    other = make_client()
    assert sign_in(other) != token
    assert other.cookies[SESSION_COOKIE] != client.cookies[SESSION_COOKIE]
    assert TOKEN not in token


def test_a_form_sent_by_the_cookie_from_anywhere_else_is_refused_and_writes_nothing(
    make_client: MakeClient,
    database: Database,
    targets: dict[str, tuple[str, dict[str, str]]],
) -> None:
    client = make_client()
    token = sign_in(client)
    other_session = sign_in(make_client())
    foreign = "not from this dashboard"
    attempts: list[tuple[str, dict[str, str], str | None, str]] = [
        # (what, headers, CSRF token sent, expected words)
        ("another site", {"Origin": "http://evil.example"}, token, foreign),
        ("another port", {"Origin": "http://testserver:8001"}, token, foreign),
        ("another scheme", {"Origin": "https://testserver"}, token, foreign),
        ("an opaque origin", {"Origin": "null"}, token, foreign),
        ("a foreign referer", {"Referer": "http://testserver:8001/attack.html"}, token, foreign),
        ("no origin at all", {}, token, "must carry an Origin or Referer"),
        ("no CSRF token", {"Origin": OWN}, None, "CSRF token"),
        ("a wrong CSRF token", {"Origin": OWN}, "0" * 64, "CSRF token"),
        ("another session's token", {"Origin": OWN}, other_session, "CSRF token"),
        ("an empty CSRF token", {"Referer": f"{OWN}/tasks"}, "", "CSRF token"),
    ]
    before = snapshot_tables(database)
    for name, (path, fields) in targets.items():
        for what, headers, csrf, expected in attempts:
            sent = {**fields, **({} if csrf is None else {"csrf_token": csrf})}
            response = post(client, path, sent, **headers)
            assert response.status_code == 403, (name, what, response.text)
            assert expected in response.text, (name, what)
    assert snapshot_tables(database) == before


def test_a_sibling_subdomain_cannot_write(
    make_client: MakeClient,
    database: Database,
    targets: dict[str, tuple[str, dict[str, str]]],
) -> None:
    client = make_client("http://dash.example.com")
    token = sign_in(client)
    before = snapshot_tables(database)
    for path, fields in targets.values():
        for origin in (
            "http://evil.example.com",
            "http://example.com",
            "http://dash.example.com:81",
        ):
            response = post(client, path, {**fields, "csrf_token": token}, Origin=origin)
            assert response.status_code == 403, (path, origin)
    assert snapshot_tables(database) == before
    path, fields = targets["enqueue"]
    allowed = post(client, path, {**fields, "csrf_token": token}, Origin="http://dash.example.com")
    assert allowed.status_code == 303, allowed.text


def test_a_form_from_the_dashboards_own_page_writes(
    make_client: MakeClient,
    service: TaskQueueService,
    targets: dict[str, tuple[str, dict[str, str]]],
) -> None:
    client = make_client()
    token = sign_in(client)
    path, fields = targets["enqueue"]
    by_origin = post(client, path, {**fields, "csrf_token": token}, Origin=OWN)
    assert by_origin.status_code == 303, by_origin.text
    by_referer = post(client, path, {**fields, "csrf_token": token}, Referer=f"{OWN}/tasks")
    assert by_referer.status_code == 303, by_referer.text
    path, fields = targets["cancel"]
    assert post(client, path, {"csrf_token": token}, Origin=OWN).status_code == 303
    task_id = int(path.split("/")[2])
    assert service.get_task(task_id).cancel_requested_on is not None


def test_the_token_field_needs_no_csrf_token_but_still_no_foreign_origin(
    make_client: MakeClient, database: Database, targets: dict[str, tuple[str, dict[str, str]]]
) -> None:
    client = make_client()  # never signed in: a script sending the token itself
    path, fields = targets["enqueue"]
    before = snapshot_tables(database)
    refused = post(client, path, {**fields, "token": TOKEN}, Origin="http://evil.example")
    assert refused.status_code == 403
    assert snapshot_tables(database) == before
    assert post(client, path, {**fields, "token": TOKEN}).status_code == 303


def test_signing_in_and_out_from_another_origin_is_refused(make_client: MakeClient) -> None:
    client = make_client()
    refused = client.post(
        "/login", data={"token": TOKEN}, headers={"Origin": "http://evil.example"}
    )
    assert refused.status_code == 403
    assert SESSION_COOKIE not in client.cookies
    token = sign_in(client)
    logout = post(client, "/logout", {"csrf_token": token}, Origin="http://testserver:8001")
    assert logout.status_code == 403
    assert "signed in" in client.get("/").text
    assert post(client, "/logout", {"csrf_token": token}, Origin=OWN).status_code == 303


def test_the_cookie_never_authenticates_an_api_write(
    make_client: MakeClient, database: Database, targets: dict[str, tuple[str, dict[str, str]]]
) -> None:
    client = make_client()
    token = sign_in(client)
    before = snapshot_tables(database)
    for path in ("/api/v1/tasks", "/api/v1/tasks/1/cancel", "/api/v1/tasks/1/retry"):
        response = client.post(
            path,
            json={"handler": "tests.handlers.Succeed", "csrf_token": token},
            headers={"Origin": OWN, "X-CSRF-Token": token},
        )
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"] == "a valid dashboard token is required for this action"
    assert snapshot_tables(database) == before
    # The bearer token alone, from anywhere, is enough: a browser cannot send it cross-origin.
    bearer = {"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"}
    created = client.post(
        "/api/v1/tasks", json={"handler": "tests.handlers.Succeed"}, headers=bearer
    )
    assert created.status_code == 201, created.text
