"""Helpers shared by the web tests: an app client on the test database, a live server, and
the rows of a rendered page."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import uvicorn
from fastapi import FastAPI

from celery_taskq.core.settings import Settings

TOKEN = "s3cret-token"  # noqa: S105 - the test dashboard's token
FLOWER = "http://flower.example:5555"
ALLOWED = ("tests.handlers",)


def web_settings(settings: Settings, *, token: str = TOKEN, flower_url: str = FLOWER) -> Settings:
    """The test settings with a dashboard token, a Flower URL and handlers limited to tests."""
    return replace(
        settings,
        dashboard_token=token,
        flower_url=flower_url,
        allowed_handler_prefixes=ALLOWED,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free local port in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def row_of(html: str, attribute: str, value: str) -> str:
    """The ``<tr>`` (with its opening tag) whose ``attribute`` is ``value``."""
    found = re.search(rf'<tr {attribute}="{re.escape(value)}"[^>]*>.*?</tr>', html, re.S)
    assert found, f"no row {attribute}={value}"
    return found.group(0)


def field(row: str, name: str) -> str:
    """The text of the row's cell ``data-field=name``, tags stripped."""
    found = re.search(rf'data-field="{name}">(.*?)</td>', row, re.S)
    assert found, name
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()
