"""Live pages and actions in a real browser: Playwright drives Debian's chromium against one live
dashboard, one real ``celery-taskq runner`` process and one real Celery worker on a Redis server
of the module's own, all on one PostgreSQL database, set up once for the module.

- a page updates in place (no reload) while the runner works; a region with a ticked row is
  left alone; the pause toggle is remembered and stops the updates; a hidden tab fetches nothing;
- a bulk retry of 3 selected tasks, confirmed, creates 3 runs;
- re-sending a failed native Celery task from its page runs it again under the worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from playwright.sync_api import Browser, Page
from pytest_redis import factories

from celery_taskq.core.models import RunStatus
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from tests.conftest import CLI, PROJECT_ROOT
from tests.fixtures.postgres import _fresh_database, skip_or_fail
from tests.helpers import runs_of, task_row, wait_for
from tests.test_resend_e2e import task_of
from tests.test_web_browser import browser, chromium
from tests.web_support import TOKEN, live_server, web_settings

pytestmark = [pytest.mark.slow, pytest.mark.postgresql]

__all__ = ["browser", "chromium"]  # the module-scoped browser fixtures, shared

REFRESH = 0.5
"""The dashboard's live update interval here (seconds)."""

live_redis_server = factories.redis_proc(timeout=3600)
"""A Redis server of the module's own: its worker outlives the session server's idle timeout,
and no other test flushes it."""


@dataclass
class Stack:
    """The module's dashboard and the processes behind it."""

    url: str
    database: Database
    service: TaskQueueService
    directory: Path
    worker_log: Path
    celery_app: Any


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """PostgreSQL, Redis, a runner, a Celery worker of ``tests.resend_app`` and the dashboard."""
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    directory = tmp_path_factory.mktemp("live")
    with contextlib.ExitStack() as cleanup:
        database_url = cleanup.enter_context(
            contextlib.contextmanager(_fresh_database)(
                request.getfixturevalue("taskq_postgresql_server"),
                request.getfixturevalue("taskq_postgresql_schema_template"),
            )
        )
        server = request.getfixturevalue("live_redis_server")
        redis_url = f"redis://{server.host}:{server.port}/0"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "TASKQ_DATABASE_URL": database_url,
            "TASKQ_POLL_INTERVAL": "0.05",
            "TASKQ_HEARTBEAT_INTERVAL": "0.5",
            "RESEND_BROKER_URL": redis_url,
        }
        processes: list[subprocess.Popen[bytes]] = []

        def stop() -> None:
            for process in processes:  # the worker's cold shutdown: nothing is left to finish
                if process.poll() is None:
                    process.send_signal(
                        signal.SIGQUIT if process is processes[0] else signal.SIGTERM
                    )
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=30)

        cleanup.callback(stop)
        worker_log = directory / "worker.log"
        with worker_log.open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [
                        *(sys.executable, "-m", "celery", "-A", "tests.resend_app", "worker"),
                        *("--concurrency", "1", "--loglevel", "INFO", "--hostname", "live@%h"),
                        *("--without-gossip", "--without-mingle"),
                    ],
                    env=env,
                    cwd=directory,
                    stdout=log,
                    stderr=log,
                )
            )
        with (directory / "runner.log").open("wb") as log:
            processes.append(
                subprocess.Popen([*CLI, "runner"], env=env, cwd=directory, stdout=log, stderr=log)
            )
        database = Database(database_url)
        cleanup.callback(database.close)
        celery_app = Celery("live_dashboard", broker=redis_url)
        celery_app.conf.broker_connection_retry_on_startup = True
        cleanup.callback(celery_app.close)
        settings = Settings(database_url=database_url, dashboard_refresh_interval=REFRESH)
        app = create_app(web_settings(settings), celery_app=celery_app)
        url = cleanup.enter_context(live_server(app))
        yield Stack(
            url,
            database,
            TaskQueueService(database, settings),
            directory,
            worker_log,
            celery_app,
        )


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (its own localStorage) and page."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    yield page
    context.close()


def row_status(page: Page, task_id: int) -> str:
    """The last-status cell of a task's row in the task list."""
    return page.locator(f"#task-table tr[data-task-id='{task_id}'] td:nth-child(4)").inner_text()


def wait_for_row(page: Page, task_id: int, text: str, timeout: float = 10_000) -> None:
    """Wait until the task list's row of ``task_id`` exists and shows ``text``."""
    page.wait_for_function(
        """([id, text]) => {
          const row = document.querySelector(`tr[data-task-id='${id}']`);
          return row !== null && row.innerText.includes(text);
        }""",
        arg=[task_id, text],
        timeout=timeout,
    )


def finished(stack: Stack, task_id: int, status: RunStatus = RunStatus.SUCCESS) -> None:
    """Wait until the runner has ended the task's latest run with ``status``."""
    wait_for(
        lambda: task_row(stack.database, task_id).last_status is status,
        timeout=60,
        what=f"task {task_id} to end {status.value}",
    )


def test_pages_update_in_place_while_the_runner_works(stack: Stack, page: Page) -> None:
    service = stack.service
    # Given the task list showing a task that has no run yet
    first = service.add_task("tests.handlers.Steps", {"steps": 2, "pause": 0.2}, title="first")
    page.goto(f"{stack.url}/tasks")
    page.evaluate("window.notReloaded = true")
    assert "never run" in row_status(page, first)
    assert page.locator("#live-toggle").get_attribute("aria-pressed") == "false"

    # When the runner works it, the row shows its outcome without a reload
    service.create_task_run(first)
    wait_for_row(page, first, "success", timeout=30_000)
    assert page.evaluate("window.notReloaded") is True

    # A region holding a ticked row is left alone while the operator uses it
    second = service.add_task("tests.handlers.Succeed", title="second")
    page.wait_for_selector(f"tr[data-task-id='{second}']", timeout=10_000)
    page.check(f"input[name=task_id][value='{first}']")
    service.create_task_run(second)
    finished(stack, second)
    page.wait_for_timeout(REFRESH * 3 * 1000)
    assert "never run" in row_status(page, second)
    assert page.is_checked(f"input[name=task_id][value='{first}']")
    page.uncheck(f"input[name=task_id][value='{first}']")
    wait_for_row(page, second, "success")

    # The pause toggle stops the updates, and is remembered across a reload
    page.click("#live-toggle")
    assert page.evaluate("localStorage.getItem('taskq.live.paused')") == "1"
    page.reload()
    assert page.locator("#live-toggle").get_attribute("aria-pressed") == "true"
    third = service.add_task("tests.handlers.Succeed", title="third", create_run=True)
    finished(stack, third)
    page.wait_for_timeout(REFRESH * 3 * 1000)
    assert page.locator(f"tr[data-task-id='{third}']").count() == 0
    page.click("#live-toggle")
    page.wait_for_selector(f"tr[data-task-id='{third}']", timeout=10_000)
    assert "success" in row_status(page, third)

    # While the tab is hidden nothing is fetched; shown again, it catches up at once
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    page.evaluate(
        """() => {
          Object.defineProperty(document, "hidden", {value: true, configurable: true});
          document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    fetched.clear()
    page.wait_for_timeout(REFRESH * 3 * 1000)
    assert fetched == []
    page.evaluate(
        """() => {
          Object.defineProperty(document, "hidden", {value: false, configurable: true});
          document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    page.wait_for_timeout(300)
    assert fetched
    assert fetched[0].startswith(f"{stack.url}/tasks")

    # The runners page updates in place too
    page.goto(f"{stack.url}/runners")
    page.evaluate("window.notReloaded = true")
    before = page.locator("#runner-table").inner_text()
    page.wait_for_function(  # heartbeat ages move on
        "(before) => document.querySelector('#runner-table').innerText !== before",
        arg=before,
        timeout=10_000,
    )
    assert page.evaluate("window.notReloaded") is True


def test_a_bulk_retry_of_three_selected_tasks_creates_three_runs(stack: Stack, page: Page) -> None:
    # Given three tasks that failed, out of retries, and one that succeeded
    failed = [
        stack.service.add_task("tests.handlers.AlwaysFail", max_retries=1, create_run=True)
        for _ in range(3)
    ]
    for task_id in failed:
        finished(stack, task_id, RunStatus.ERROR)

    # When the three are ticked on the task list, and the retry confirmed with the token
    page.goto(f"{stack.url}/tasks?handler=tests.handlers.AlwaysFail")
    for task_id in failed:
        page.check(f"input[name=task_id][value='{task_id}']")
    page.click("#bulk-retry")
    page.wait_for_url("**/bulk?*")
    assert page.locator("#bulk-count").inner_text() == "3"
    page.fill("#bulk-confirm-form input[name=token]", TOKEN)
    page.click("#bulk-confirm")
    page.wait_for_url("**/bulk/retry")

    # Then each task got a new run, and the page says so
    assert page.locator("#bulk-outcomes tr[data-done='yes']").count() == 3
    for task_id in failed:

        def retried(task_id: int = task_id) -> list[Any]:
            runs = runs_of(stack.database, task_id)
            return runs if len(runs) == 2 else []

        runs = wait_for(retried, what=f"task {task_id}'s retried run")
        assert runs[0].status is RunStatus.ERROR


def test_a_failed_native_task_is_resent_from_its_page_and_runs_again(
    stack: Stack, page: Page
) -> None:
    # Given a native Celery task that failed for good under the worker
    marker = str(stack.directory / "marker")
    sent = stack.celery_app.send_task(
        "resend.flip", args=[marker], kwargs={"greeting": "hello again"}
    )
    old = wait_for(
        lambda: (
            (task := task_of(stack.database, sent.id)) is not None
            and task.last_status is RunStatus.ERROR
            and task
        ),
        timeout=60,
        what=f"the first attempt to fail (worker log: {stack.worker_log})",
    )

    # When it is re-sent from its page
    page.goto(f"{stack.url}/tasks/{old.id}")
    page.fill("#resend-form input[name=token]", TOKEN)
    page.click("#resend-form button")
    page.wait_for_url("**/tasks/*?done=resent")
    new_id = int(page.url.split("/tasks/")[1].split("?")[0])
    assert new_id != old.id

    # Then the new task runs under the worker, and its page shows that in place
    page.evaluate("window.notReloaded = true")
    page.wait_for_function(
        "() => document.querySelector('#task-status').textContent === 'success'", timeout=60_000
    )
    assert page.evaluate("window.notReloaded") is True
    new = task_row(stack.database, new_id)
    assert (new.resent_from_id, new.queued_by_id) == (old.id, "dashboard")
    assert new.task_data == old.task_data
    assert [(run.status, run.results) for run in runs_of(stack.database, new_id)] == [
        (RunStatus.SUCCESS, "hello again")
    ]


def test_schedule_forms_keep_working_on_the_live_schedules_page(stack: Stack, page: Page) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    added = page.request.post(
        f"{stack.url}/api/v1/schedules",
        data={"name": "digest", "handler": "tests.handlers.Succeed", "interval": 3600},
        headers=auth,
    )
    assert added.status == 201, added.text()
    page.goto(f"{stack.url}/schedules")
    row = page.locator("#schedule-table tr", has_text="digest")

    # An Edit form being filled in is not replaced, though the table's data changed meanwhile
    row.locator("summary").click()
    row.locator("input[name=interval]").fill("120")
    shown = row.inner_text()
    ran = page.request.post(f"{stack.url}/api/v1/schedules/digest/run-now", headers=auth)
    assert ran.status == 201, ran.text()
    page.wait_for_timeout(REFRESH * 3 * 1000)
    assert row.locator("details").get_attribute("open") is not None
    assert row.locator("input[name=interval]").input_value() == "120"
    assert row.inner_text() == shown
    row.locator(".schedule-edit-form input[name=token]").fill(TOKEN)
    row.locator(".schedule-edit-form button").click()
    page.wait_for_url("**/schedules?done=edited")
    assert "every 120 s" in row.inner_text()
    assert any(status in row.inner_text() for status in ("scheduled", "running", "success"))

    # Pause works from the page; a resume made elsewhere shows in place
    row.locator(".schedule-pause input[name=token]").fill(TOKEN)
    row.locator(".schedule-pause button").click()
    page.wait_for_url("**/schedules?done=paused")
    assert "paused" in row.inner_text()
    page.evaluate("window.notReloaded = true")
    resumed = page.request.post(f"{stack.url}/api/v1/schedules/digest/resume", headers=auth)
    assert resumed.status == 200, resumed.text()
    page.wait_for_function(
        "() => document.querySelector('#schedule-table').innerText.includes('active')",
        timeout=10_000,
    )
    assert page.evaluate("window.notReloaded") is True
