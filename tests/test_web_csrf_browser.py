"""The dashboard's write forms in a real browser, and a same-site attack on them.

Signing in and each write form (queue, cancel, retry, sign out) work in chromium: the browser
sends the pages' hidden CSRF token and its own Origin. A page on another port of the same host
is same-site, so chromium sends the ``SameSite=Strict`` session cookie along with its form, yet
the dashboard refuses it (403) and writes nothing.

Uses the browser fixtures of ``tests/test_web_browser.py`` (skipped without chromium, failing
under CI).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import Page

from celery_taskq.core.listing import TaskFilter, list_tasks
from celery_taskq.core.queue import TaskQueueService
from tests import test_web_browser
from tests.helpers import drive
from tests.web_support import TOKEN

pytestmark = pytest.mark.slow

# The browser test's fixtures, under their own names so that pytest finds them here too.
chromium = test_web_browser.chromium
browser = test_web_browser.browser
page = test_web_browser.page
dashboard = test_web_browser.dashboard


def sign_in(page: Page, dashboard: str) -> None:
    """Sign in through the form."""
    page.goto(f"{dashboard}/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url("**/login?done=signed-in")


def test_sign_in_and_every_write_form_work_in_the_browser(
    page: Page, dashboard: str, service: TaskQueueService
) -> None:
    failed = service.add_task("tests.handlers.AlwaysFail", max_retries=1)
    drive(service)
    sign_in(page, dashboard)

    page.goto(f"{dashboard}/tasks")
    page.fill("#enqueue-form input[name=handler]", "tests.handlers.Succeed")
    page.fill("#enqueue-form input[name=title]", "From the browser")
    page.click("#enqueue-form button[type=submit]")
    page.wait_for_url("**/tasks/*?done=queued")
    queued = int(page.url.split("/tasks/")[1].split("?")[0])
    assert service.get_task(queued).title == "From the browser"

    page.click("#cancel-form button[type=submit]")
    page.wait_for_url(f"**/tasks/{queued}?done=cancelled")
    assert service.get_task(queued).cancel_requested_on is not None

    page.goto(f"{dashboard}/tasks/{failed}")
    page.click("#retry-form button[type=submit]")
    page.wait_for_url(f"**/tasks/{failed}?done=retried")
    assert len(service.get_task(failed).runs) == 2

    page.goto(f"{dashboard}/login")
    page.click("form[action='/logout'] button[type=submit]")
    page.wait_for_url("**/login?done=signed-out")
    assert "sign in to write" in page.locator("header").inner_text()


@pytest.fixture
def attacker() -> Iterator[tuple[str, dict[str, str]]]:
    """A site on another port of 127.0.0.1 serving pages from a dict: its URL and the dict."""
    pages: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="attacker", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pages
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def test_a_page_on_another_port_cannot_write_with_the_session_cookie(
    page: Page,
    dashboard: str,
    service: TaskQueueService,
    attacker: tuple[str, dict[str, str]],
) -> None:
    task_id = service.add_task("tests.handlers.Succeed", create_run=True)
    before = service.get_task(task_id)
    sign_in(page, dashboard)
    attacker_url, pages = attacker
    pages["/cancel.html"] = (
        f'<form method="post" action="{dashboard}/tasks/{task_id}/cancel">'
        '<input type="hidden" name="csrf_token" value="guessed">'
        '<button type="submit">win a prize</button></form>'
    )
    pages["/enqueue.html"] = (
        f'<form method="post" action="{dashboard}/tasks">'
        '<input type="hidden" name="handler" value="tests.handlers.Succeed">'
        '<button type="submit">win a prize</button></form>'
    )
    for attack in ("/cancel.html", "/enqueue.html"):
        page.goto(attacker_url + attack)
        with page.expect_navigation() as navigation:
            page.click("button[type=submit]")
        response = navigation.value
        assert response is not None
        assert response.status == 403, attack
        assert "not from this dashboard" in page.locator("#error-message").inner_text()
        # The cookie was sent (the page is rendered signed in): only the CSRF checks stopped it.
        assert "signed in" in page.locator("header").inner_text()
    after = service.get_task(task_id)
    assert after.cancel_requested_on is None
    assert after == before
    assert [task.id for task in list_tasks(service.database, TaskFilter()).tasks] == [task_id]
