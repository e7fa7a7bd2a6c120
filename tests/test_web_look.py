"""The dashboard's look in a real browser: dark mode, a phone-wide layout, red failed progress
bars and badges that keep apart.

Playwright drives Debian's chromium (the ``chromium`` on PATH; without it these tests skip,
except under CI, where they fail). One browser, one live dashboard and one SQLite database
serve the whole module; its rows are written once, the runs worked by an in-process runner.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, ViewportSize

from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.steps import Step
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from tests.helpers import drive
from tests.test_web_browser import browser, chromium, seed_history
from tests.web_support import live_server, web_settings

PHONE = ViewportSize(width=420, height=860)
DESKTOP = ViewportSize(width=1280, height=860)
ERROR_RED = "rgb(207, 34, 46)"
"""``--error`` of the light scheme."""

pytestmark = pytest.mark.slow

__all__ = ["browser", "chromium"]  # the module-scoped browser fixtures, shared


@dataclass(frozen=True)
class Site:
    """The live dashboard and the tasks the module's tests look at."""

    url: str
    failed: int
    """A task whose only run failed (and which was cancelled after)."""
    steps: int
    """A multi-step task that ran to its end, with long data."""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Site]:
    """A dashboard (token configured) over a SQLite database with a day of history, a failed
    and cancelled task, and a finished multi-step task."""
    path = tmp_path_factory.mktemp("look") / "taskq.db"
    shutil.copyfile(sqlite_template, path)
    settings = Settings(
        database_url=f"sqlite:///{path}",
        poll_interval=0.05,
        runner_memory_limit_mb=4096,
        retry_backoff_base=0.0,
    )
    database = Database(settings.database_url)
    service = TaskQueueService(database, settings)
    seed_history(database, datetime.now(UTC))
    failed = service.add_task("tests.handlers.AlwaysFail", max_retries=2, title="Charge card")
    long_text = "a-very-long-value-without-spaces-" * 12
    steps = service.add_steps_task(
        [
            Step("tests.handlers.Succeed", {"text": long_text}, title="fetch"),
            Step("tests.handlers.Succeed", title="store"),
        ],
        title="Nightly import",
    )
    drive(service)
    service.cancel_task(failed)
    try:
        with live_server(create_app(web_settings(settings))) as url:
            yield Site(url=url, failed=failed, steps=steps)
    finally:
        database.close()


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    """A page 420 px wide."""
    context = browser.new_context(viewport=PHONE)
    yield context.new_page()
    context.close()


def test_dark_mode_follows_the_colour_scheme(browser: Browser, site: Site) -> None:
    shots: dict[str, bytes] = {}
    backgrounds: dict[str, str] = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport=DESKTOP, color_scheme=scheme)
        page = context.new_page()
        page.goto(f"{site.url}/")
        backgrounds[scheme] = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        shots[scheme] = page.screenshot(full_page=True)
        context.close()
    assert shots["light"] != shots["dark"]
    assert backgrounds == {"light": "rgb(255, 255, 255)", "dark": "rgb(13, 17, 23)"}


def test_no_page_scrolls_sideways_at_420_px(phone: Page, site: Site) -> None:
    paths = [
        "/",
        "/tasks",
        f"/tasks/{site.steps}",
        f"/tasks/{site.failed}",
        "/runners",
        "/schedules",
        "/insight",
    ]
    for path in paths:
        phone.goto(f"{site.url}{path}")
        widths = phone.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], f"{path} scrolls sideways: {widths}"
    # The task list is wider than a phone: it scrolls inside its own box
    phone.goto(f"{site.url}/tasks")
    table = phone.locator("#task-table")
    inner, outer = table.evaluate("table => [table.scrollWidth, table.clientWidth]")
    assert inner > outer
    assert table.evaluate("table => getComputedStyle(table).overflowX") == "auto"


def test_a_failed_run_has_a_red_bar_and_its_badges_keep_apart(browser: Browser, site: Site) -> None:
    context = browser.new_context(viewport=DESKTOP, color_scheme="light")
    page = context.new_page()
    page.goto(f"{site.url}/tasks/{site.failed}")
    bar = page.locator(".run progress")
    assert bar.evaluate("bar => getComputedStyle(bar).accentColor") == ERROR_RED
    page.goto(f"{site.url}/tasks/{site.steps}")
    assert page.locator(".run progress").evaluate("bar => getComputedStyle(bar).accentColor") != (
        ERROR_RED
    )
    assert page.locator("#task-steps [data-field=step-status]").all_inner_texts() == [
        "success",
        "success",
    ]
    # The failed task is also cancelled: its two badges in the list do not touch
    page.goto(f"{site.url}/tasks")
    row = page.locator(f"#task-table tr[data-task-id='{site.failed}']")
    error = row.locator(".status.error").bounding_box()
    cancelled = row.locator(".status.cancelled").bounding_box()
    assert error is not None
    assert cancelled is not None
    apart = cancelled["x"] >= error["x"] + error["width"] + 2
    below = cancelled["y"] >= error["y"] + error["height"]
    assert apart or below, (error, cancelled)
    context.close()
