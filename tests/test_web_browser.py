"""The dashboard in a real browser: Playwright drives Debian's chromium against a live server.

The dashboard runs with uvicorn in a thread on a free port over the test database; runs are
worked by a real ``celery-taskq runner`` process. The browser is the ``chromium`` found on
PATH (Playwright never downloads one). Without it these tests skip, except under CI (or
``TASKQ_REQUIRE_SERVERS=1``), where they fail. The screenshot test also saves the pages into
``docs/screenshots/`` for the README (from the SQLite run): when a file is missing, or every
time with ``TASKQ_UPDATE_SCREENSHOTS=1``, so that a test run leaves the work tree clean.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Dialog, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from sqlalchemy import update

from celery_taskq.core.models import RunnerRole, RunnerStatus, RunStatus, TaskRunner
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from tests.conftest import PROJECT_ROOT
from tests.fixtures.postgres import servers_required
from tests.helpers import runs_of, start_runner, wait_for
from tests.test_reports import Rows
from tests.web_support import FLOWER, live_server, web_settings

SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
UPDATE_SCREENSHOTS = os.environ.get("TASKQ_UPDATE_SCREENSHOTS", "").strip() == "1"
"""Rewrite the README's screenshots even when they exist (they are written when missing)."""
EVIL = "<script>alert(1)</script>"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium binary on PATH; skip (fail under CI) without it."""
    path = shutil.which("chromium")
    if path is None:
        reason = "chromium is not installed (apt-get install chromium)"
        if servers_required():
            pytest.fail(f"{reason}\n(CI=true: browser tests may not be skipped)", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    """Headless chromium for the module's tests."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context and page; dialogs are recorded (and dismissed)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    dialogs: list[str] = []

    def record(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    page.dialogs = dialogs  # type: ignore[attr-defined]
    yield page
    context.close()


@pytest.fixture
def dashboard(settings: Settings) -> Iterator[str]:
    """A live dashboard (token and Flower URL configured) on the test database; its URL."""
    app = create_app(web_settings(Settings(database_url=settings.database_url)))
    with live_server(app) as url:
        yield url


def handler_cells(page: Page) -> list[str]:
    """The handler column of the task table."""
    return [
        cell.strip()
        for cell in page.locator("#task-table tbody tr td:nth-child(2)").all_inner_texts()
    ]


def test_filter_the_list_and_open_a_task(
    page: Page, dashboard: str, live: TaskQueueService
) -> None:
    talk = live.add_task("tests.handlers.Talk", queued_by="bob", title="Talker")
    for n in range(3):
        live.add_task("tests.handlers.Succeed", {"n": n}, queued_by="alice")
    live.add_task("tests.handlers.Echo", {"text": "hi"}, queued_by="bob")

    page.goto(f"{dashboard}/tasks")
    assert len(handler_cells(page)) == 5
    page.fill("input[name=handler]", "tests.handlers.Succeed")
    page.click("#task-filters button[type=submit]")
    page.wait_for_url("**/tasks?*handler=tests.handlers.Succeed*")
    assert handler_cells(page) == ["tests.handlers.Succeed"] * 3

    page.fill("input[name=handler]", "")
    page.fill("input[name=queued_by]", "bob")
    page.click("#task-filters button[type=submit]")
    page.wait_for_url("**queued_by=bob*")
    assert sorted(handler_cells(page)) == ["tests.handlers.Echo", "tests.handlers.Talk"]

    page.click(f"#task-table a[href='/tasks/{talk}'] >> nth=0")
    page.wait_for_url(f"**/tasks/{talk}")
    assert page.locator("h1").inner_text().startswith(f"Task {talk}")
    assert "Talker" in page.locator("h1").inner_text()


def test_the_progress_bar_advances_while_a_runner_works(
    page: Page,
    dashboard: str,
    live: TaskQueueService,
    database: Database,
    subprocess_env: dict[str, str],
    spawn: list[subprocess.Popen[str]],
) -> None:
    task_id = live.add_task(
        "tests.handlers.Steps", {"steps": 5, "pause": 0.8}, title="Five steps", create_run=True
    )
    page.goto(f"{dashboard}/tasks/{task_id}")
    assert page.locator(".run [data-field=status]").inner_text() == "scheduled"

    start_runner(spawn, subprocess_env, "--burst")
    seen: list[tuple[float, str]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            value = page.locator(".run progress").evaluate("bar => bar.value")
            step = page.locator(".run [data-field=step]").inner_text()
            status = page.locator(".run [data-field=status]").inner_text()
        except PlaywrightError:  # the page reloads itself when the run ends
            continue
        if not seen or seen[-1] != (value, step):
            seen.append((value, step))
        if status == "success":
            break
        time.sleep(0.1)

    percents = [value for value, _ in seen]
    assert percents == sorted(percents), f"the bar went back: {seen}"
    between = {value for value in percents if 0 < value < 100}
    assert len(between) >= 2, f"the bar did not advance step by step: {seen}"
    assert any(step.startswith("step ") and "/5" in step for _, step in seen), seen
    # Once the run has ended the page reloads and shows it finished.
    page.wait_for_function("() => document.querySelector('.run .status').textContent === 'success'")
    assert page.locator(".run progress").evaluate("bar => bar.value") == 100
    assert page.locator(".run .results").inner_text().strip().startswith("{")
    assert runs_of(database, task_id)[0].status is RunStatus.SUCCESS


def test_markup_in_output_is_shown_as_text(
    page: Page,
    dashboard: str,
    live: TaskQueueService,
    database: Database,
    subprocess_env: dict[str, str],
    spawn: list[subprocess.Popen[str]],
) -> None:
    task_id = live.add_task(
        "tests.handlers.Echo", {"text": EVIL, "fail": True}, title=EVIL, max_retries=1
    )
    live.process_queue()
    runner = start_runner(spawn, subprocess_env, "--burst")
    runner.communicate(timeout=60)
    wait_for(lambda: runs_of(database, task_id)[0].status is RunStatus.ERROR, what="the run")

    page.goto(f"{dashboard}/tasks/{task_id}")
    page.wait_for_load_state("load")
    for selector in ("pre.stdout", "pre.stderr", "h1", "#task-data"):
        assert EVIL in page.locator(selector).inner_text(), selector
    assert EVIL in page.locator(".run dl.fields").inner_text()  # the error message
    scripts = page.evaluate("() => [...document.scripts].map(script => script.textContent)")
    assert not any("alert(1)" in script for script in scripts)
    page.goto(f"{dashboard}/tasks")
    assert EVIL in page.locator("#task-table").inner_text()
    page.wait_for_timeout(300)
    assert page.dialogs == []  # type: ignore[attr-defined]


def seed_history(database: Database, now: datetime) -> None:
    """A day of finished runs of a few handlers, and the runners (some of Celery) that ran them."""
    rows = Rows(database)
    old_runner = rows.runner(
        RunnerStatus.SUCCESS,
        now - timedelta(hours=25),
        finished=now - timedelta(hours=10),
        heartbeat=now - timedelta(hours=10),
        host="app-2",
        pid=877,
    )
    rows.runner(RunnerStatus.TIMEOUT, now - timedelta(hours=9), finished=now - timedelta(hours=8))
    live_runner = rows.runner(
        RunnerStatus.RUNNING, now - timedelta(hours=10), heartbeat=now, host="app-1", pid=3121
    )
    worker = rows.runner(
        RunnerStatus.RUNNING,
        now - timedelta(hours=1),
        heartbeat=now,
        host="app-2",
        pid=912,
        role=RunnerRole.CELERY_WORKER,
    )
    with database.transaction() as connection:
        for runner_id, name in [(live_runner, "celery@app-1"), (worker, "celery@app-2")]:
            connection.execute(
                update(TaskRunner).where(TaskRunner.id == runner_id).values(worker_hostname=name)
            )
    handlers = ["myapp.reports.SendReport", "myapp.media.Resize", "myapp.billing.Invoice"]
    for index in range(60):
        when = now - timedelta(minutes=23 * 60 - index * 23)
        handler = handlers[index % 3]
        task = rows.task(handler, when - timedelta(seconds=30), max_retries=1)  # no retries
        status = RunStatus.SUCCESS
        if index % 7 == 3:
            status = RunStatus.ERROR
        elif index % 19 == 5:
            status = RunStatus.TIMEOUT
        rows.run(
            task,
            status,
            started=when,
            seconds=1.5 + (index % 5) * 0.7,
            runner=old_runner if when < now - timedelta(hours=10) else live_runner,
            code=None if status is RunStatus.SUCCESS else "E_SMTP",
            message=None if status is RunStatus.SUCCESS else "SMTP refused",
        )


def test_screenshots_of_every_page(
    page: Page,
    dashboard: str,
    live: TaskQueueService,
    database: Database,
    database_url: str,
    subprocess_env: dict[str, str],
    spawn: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    seed_history(database, datetime.now(UTC))
    live.add_task("tests.handlers.Talk", queued_by="user-7", title="Say hello")
    steps = live.add_task(
        "tests.handlers.Steps",
        {"steps": 4, "pause": 0.05},
        queued_by="user-7",
        title="Render quarterly report",
    )
    live.add_task("tests.handlers.AlwaysFail", max_retries=2, queued_by="cron")
    live.process_queue()
    start_runner(spawn, subprocess_env, "--burst").communicate(timeout=60)
    live.add_task(
        "tests.handlers.Succeed",
        scheduled_on=datetime.now(UTC) + timedelta(hours=1),
        queued_by="cron",
        title="Tomorrow's digest",
    )

    shots: dict[str, Any] = {
        "overview": "/",
        "tasks": "/tasks?limit=20",
        "task": f"/tasks/{steps}",
        "runners": "/runners",
        "insight": "/insight",
        "overview-dark": "/",
    }
    for name, path in shots.items():
        page.emulate_media(color_scheme="dark" if name.endswith("-dark") else "light")
        page.goto(f"{dashboard}{path}")
        page.wait_for_load_state("load")
        assert page.locator("h1").count() == 1
        shot = tmp_path / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        kept = SCREENSHOTS / shot.name
        if database_url.startswith("sqlite") and (UPDATE_SCREENSHOTS or not kept.exists()):
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, kept)

    page.goto(f"{dashboard}/")
    assert page.locator("#runs-chart rect").count() > 10
    page.goto(f"{dashboard}/runners")
    for name in ("celery@app-1", "celery@app-2"):
        assert page.locator(f"#runner-table a[href='{FLOWER}/worker/{name}']").count() == 1
