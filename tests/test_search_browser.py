"""The task list's search, sort, status chips and time-range picker in a real browser.

One chromium, one live dashboard and one SQLite database for the module (the queries are
tested on both databases in test_search.py and test_search_web.py); Playwright drives
Debian's chromium as in test_web_browser.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from tests.test_web_browser import browser, chromium
from tests.web_support import live_server, web_settings

pytestmark = pytest.mark.slow

__all__ = ["browser", "chromium"]  # the module-scoped browser fixtures, shared


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[TaskQueueService]:
    """The queue service on the wall clock, over a migrated SQLite file of the module's own."""
    path = tmp_path_factory.mktemp("search-browser") / "taskq.db"
    shutil.copyfile(sqlite_template, path)
    settings = Settings(database_url=f"sqlite:///{path}")
    database = Database(settings.database_url)
    yield TaskQueueService(database, settings)
    database.close()


@pytest.fixture(scope="module")
def dashboard(service: TaskQueueService) -> Iterator[str]:
    """A live dashboard on the module's database; its URL."""
    with live_server(create_app(web_settings(service.settings))) as url:
        yield url


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page; the browser's console errors (a CSP refusal would be one) are kept."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    page.console_errors = errors  # type: ignore[attr-defined]
    yield page
    context.close()


def listed(page: Page) -> list[int]:
    """The task ids of the table, in order."""
    return [
        int(found)
        for found in page.locator("#task-table tbody tr[data-task-id]").evaluate_all(
            "rows => rows.map(row => row.dataset.taskId)"
        )
    ]


def test_search_finds_a_task_by_a_value_inside_its_data(
    page: Page, dashboard: str, service: TaskQueueService
) -> None:
    # Given tasks whose data differ deep inside
    wanted = service.add_task(
        "tests.handlers.Succeed", {"order": {"lines": [{"sku": "KB-4411", "qty": 2}]}}
    )
    other = service.add_task("tests.handlers.Succeed", {"order": {"lines": [{"sku": "KB-4412"}]}})
    failing = service.add_task("tests.handlers.AlwaysFail", {"order": {"lines": []}}, title="zz")
    service.cancel_task(failing)
    page.goto(f"{dashboard}/tasks")
    assert listed(page) == [failing, other, wanted]

    # When the operator searches for the value and presses Enter
    page.fill("#task-search", "kb-4411")
    page.press("#task-search", "Enter")
    page.wait_for_url("**/tasks?*q=kb-4411*")

    # Then the list holds that task only, and the search box keeps the text
    assert listed(page) == [wanted]
    assert page.input_value("#task-search") == "kb-4411"

    # The time-range picker applies at once (no button), keeping the search
    page.select_option("#time-range", "1h")
    page.wait_for_url("**since=1h*")
    assert "q=kb-4411" in page.url
    assert listed(page) == [wanted]

    # A status chip filters at once: cancelled is derived from the columns
    page.goto(f"{dashboard}/tasks")
    page.click("#status-chips a[data-status=cancelled]")
    page.wait_for_url("**status=cancelled*")
    assert listed(page) == [failing]
    page.click("#status-chips a[data-status=any]")
    page.wait_for_url(f"{dashboard}/tasks")

    # A column header sorts, and a second click reverses it
    page.click("#task-table th a[data-sort=handler]")
    page.wait_for_url("**sort=handler*")
    assert listed(page) == [failing, wanted, other]
    page.click("#task-table th a[data-sort=handler]")
    page.wait_for_url("**order=desc*")
    assert listed(page) == [other, wanted, failing]
    # The picker's script ran under the page's Content-Security-Policy (it has the nonce)
    refused = [text for text in page.console_errors if "Content Security Policy" in text]  # type: ignore[attr-defined]
    assert refused == []
