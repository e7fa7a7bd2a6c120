"""Live pages without a browser: every live page marks its data regions and carries the update
script (nonce-tagged, at the configured interval); ``dashboard_refresh_interval = 0`` leaves
the pages as loaded. The browser behaviour is in ``tests/test_web_live_browser.py``."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from celery_taskq.core.exceptions import ConfigurationError
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.web import create_app
from tests.web_support import web_settings

LIVE_PAGES = {
    "/": ["overview"],
    "/tasks": ["task-table"],
    "/runners": ["runner-counts", "runner-table"],
    "/schedules": ["schedule-table"],
}


def test_live_pages_carry_their_regions_and_the_update_script(
    settings: Settings, service: TaskQueueService
) -> None:
    task_id = service.add_task("tests.handlers.Succeed", create_run=True)
    steps = service.add_steps_task(
        [{"handler": "tests.handlers.Succeed"}, {"handler": "tests.handlers.Succeed"}]
    )
    app = create_app(replace(web_settings(settings), dashboard_refresh_interval=2.5))
    with TestClient(app) as client:
        for path, regions in {
            **LIVE_PAGES,
            f"/tasks/{task_id}": ["task-fields", "runs"],
            f"/tasks/{steps}": ["task-fields", "task-steps", "runs"],
        }.items():
            response = client.get(path)
            assert response.status_code == 200, path
            for region in regions:
                assert f'data-live-region="{region}"' in response.text, (path, region)
            nonce = re.search(
                r"script-src 'nonce-([^']+)'", response.headers["content-security-policy"]
            )
            assert nonce is not None
            scripts = re.findall(r'<script nonce="([^"]*)">(.*?)</script>', response.text, re.S)
            live = [body for tag_nonce, body in scripts if "taskq.live.paused" in body]
            assert len(live) == 1, path
            assert all(tag_nonce == nonce.group(1) for tag_nonce, _ in scripts), path
            assert "const every = 2500;" in live[0]
        # A page without data regions has none to update (the script returns at once there)
        assert re.search(r"<[a-z]+ [^>]*data-live-region=", client.get("/login").text) is None


def test_a_zero_interval_leaves_the_pages_as_loaded(settings: Settings) -> None:
    app = create_app(replace(web_settings(settings), dashboard_refresh_interval=0))
    with TestClient(app) as client:
        for path in LIVE_PAGES:
            assert "taskq.live.paused" not in client.get(path).text, path


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="dashboard_refresh_interval must be 0 or more"):
        Settings(dashboard_refresh_interval=-1)
    resolved = Settings.resolve(environ={"TASKQ_DASHBOARD_REFRESH_INTERVAL": "0.5"})
    assert resolved.dashboard_refresh_interval == 0.5
