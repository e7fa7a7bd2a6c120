"""Request bodies are capped before they are parsed or authenticated; API writes authenticate
before reading the body; HEAD answers wherever GET does.

The memory test starts the real dashboard (``celery-taskq dashboard``, uvicorn) in a child
process and streams 300 MiB bodies at it, generated as they are sent, over a raw socket that
stops sending once the server has answered (as a well-behaved client does).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import pkgutil
import select
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

import celery_taskq.web
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from celery_taskq.web.body_limit import MAX_BODY_BYTES, BodyLimitMiddleware, body_limit
from tests.conftest import PROJECT_ROOT
from tests.helpers import drive, runs_of, wait_for
from tests.test_security import snapshot_tables
from tests.web_support import TOKEN, free_port, web_settings

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MiB = 1024 * 1024
LIMIT = body_limit(Settings())
OVER = LIMIT + MiB


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A dashboard with writes enabled on the test database."""
    with TestClient(create_app(web_settings(settings))) as client:
        yield client


class Chunks:
    """A body sent in 64 KiB chunks without a Content-Length; counts the chunks taken.

    (TestClient takes the whole body at the app's first read: the count tells whether the app
    read at all. The live test below shows that reading stops at the limit.)
    """

    def __init__(self, total: int, piece: bytes = b" ") -> None:
        self.total = total
        self.chunk = piece * (64 * 1024 // len(piece))
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        while sent < self.total:
            self.taken += 1
            sent += len(self.chunk)
            yield self.chunk


# -- body size -------------------------------------------------------------------------------


def test_bodies_over_the_limit_are_refused_with_413_and_write_nothing(
    client: TestClient, database: Database
) -> None:
    before = snapshot_tables(database)
    big_json = json.dumps({"handler": "tests.handlers.Succeed", "data": {"x": "y" * OVER}})
    declared = client.post("/api/v1/tasks", content=big_json, headers=AUTH)
    assert declared.status_code == 413
    assert "larger than the dashboard's limit" in declared.json()["error"]
    chunked = client.post("/api/v1/tasks", content=Chunks(OVER), headers=AUTH)
    assert chunked.status_code == 413
    assert "larger than the dashboard's limit" in chunked.json()["error"]
    form = Chunks(OVER, b"data=x&")
    page = client.post(
        "/tasks", content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert page.status_code == 413
    assert "text/html" in page.headers["content-type"]
    assert "larger than the dashboard&#39;s limit" in page.text
    assert snapshot_tables(database) == before
    # Just under the limit is read (and refused for what it says, not for its size).
    under = client.post("/api/v1/tasks", content=b" " * (LIMIT - 100) + b"{}", headers=AUTH)
    assert under.status_code == 422


def test_the_limit_makes_room_for_the_largest_task_data(settings: Settings) -> None:
    assert body_limit(Settings()) == 3 * Settings().task_data_max_bytes + 64 * 1024
    assert body_limit(replace(settings, task_data_max_bytes=1000)) == MAX_BODY_BYTES
    larger = replace(web_settings(settings), task_data_max_bytes=2 * OVER)
    with TestClient(create_app(larger)) as client:
        read = client.post("/api/v1/tasks", content=b" " * OVER + b"{}", headers=AUTH)
        assert read.status_code == 422  # read and parsed: not refused for its size


def test_api_writes_are_refused_before_their_body_is_read(
    client: TestClient, settings: Settings, database: Database
) -> None:
    before = snapshot_tables(database)
    for path in ("/api/v1/tasks", "/api/v1/tasks/1/cancel", "/api/v1/tasks/1/retry"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            body = Chunks(OVER)
            response = client.post(path, content=body, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert body.taken == 0, "the body was read before the token was checked"
    with TestClient(create_app(web_settings(settings, token=""))) as read_only:
        body = Chunks(OVER)
        assert read_only.post("/api/v1/tasks", content=body, headers=AUTH).status_code == 403
        assert body.taken == 0
    # A form from another origin is refused before its body is read, too.
    body = Chunks(OVER, b"token=x&")
    refused = client.post("/tasks", content=body, headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    assert body.taken == 0
    assert snapshot_tables(database) == before


def test_a_content_length_that_is_not_a_number_is_refused() -> None:
    reached: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)  # pragma: no cover - must not be reached

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:  # pragma: no cover - never read
        return {"type": "http.request", "body": b"", "more_body": False}

    for declared, status in ((b"12abc", 400), (b"-1", 400), (b"9" * 40, 413)):
        sent.clear()
        scope: Scope = {
            "type": "http",
            "method": "POST",
            "path": "/api/v1/tasks",
            "raw_path": b"/api/v1/tasks",
            "root_path": "",
            "scheme": "http",
            "query_string": b"",
            "headers": [(b"host", b"testserver"), (b"content-length", declared)],
            "server": ("testserver", 80),
        }
        asyncio.run(BodyLimitMiddleware(app)(scope, receive, send))
        assert sent[0]["status"] == status
        assert json.loads(sent[1]["body"])["error"]
    assert reached == []


# -- HEAD ------------------------------------------------------------------------------------


def get_paths(app: Any, task_id: int, run_id: int) -> list[str]:
    """Every GET route of the app (each web module's router, and the app's own), concrete."""
    routes: list[Any] = [route for route in app.router.routes if isinstance(route, Route)]
    for module_info in pkgutil.iter_modules(celery_taskq.web.__path__):
        module = importlib.import_module(f"celery_taskq.web.{module_info.name}")
        router = getattr(module, "router", None)
        if isinstance(router, APIRouter):
            routes += [route for route in router.routes if isinstance(route, APIRoute)]
    paths = {
        route.path.replace("{task_id}", str(task_id))
        .replace("{run_id}", str(run_id))
        .replace("{name}", "no-such-schedule")
        for route in routes
        if "GET" in (route.methods or set())
    }
    assert all("{" not in path for path in paths), paths
    return sorted(paths)


def test_head_answers_wherever_get_does(client: TestClient, service: TaskQueueService) -> None:
    task_id = service.add_task("tests.handlers.Talk")
    drive(service)
    (run,) = runs_of(service.database, task_id)
    paths = get_paths(client.app, task_id, run.id)
    assert {"/", "/tasks", "/metrics", "/api/v1/health", "/api/v1/openapi.json"} <= set(paths)
    for path in [*paths, "/nowhere", "/api/v1/tasks/999999"]:
        get = client.get(path, follow_redirects=False)
        head = client.head(path, follow_redirects=False)
        assert head.status_code == get.status_code, path
        assert head.content == b"", path
        assert head.headers.get("content-type") == get.headers.get("content-type"), path
        assert "content-security-policy" in head.headers, path
    assert client.head("/api/v1/health").status_code == 200


# -- the real server ---------------------------------------------------------------------------

BIG = 300 * MiB


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")  # pragma: no cover


def stream_post(
    port: int, path: str, total: int, headers: dict[str, str], chunked: bool
) -> tuple[int, int]:
    """POST ``total`` bytes, made as they are sent; stop once the server answers.

    Returns the answer's status and how many body bytes were sent.
    """
    piece = b"x" * (256 * 1024)
    framed = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        pending = memoryview(framed)
        while sent < total:
            readable, writable, _ = select.select([connection], [connection], [], 60)
            if readable:
                break  # the server has answered: stop sending
            assert writable, "the server neither reads nor answers"
            written = connection.send(pending)
            pending = pending[written:]
            if not pending:
                pending = memoryview(framed)
                sent += len(piece)
        else:
            if chunked:
                connection.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n" not in answer:
            received = connection.recv(4096)
            assert received, "the server closed the connection without an answer"
            answer += received
    return int(answer.split(b" ", 2)[1]), sent


@pytest.fixture
def live_dashboard(tmp_path: Path, sqlite_template: Path) -> Iterator[tuple[int, psutil.Process]]:
    """``celery-taskq dashboard`` with a token, on a fresh SQLite file: its port and process."""
    database = tmp_path / "taskq.db"
    shutil.copyfile(sqlite_template, database)
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery_taskq",
            "--database-url",
            f"sqlite:///{database}",
            "dashboard",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, "TASKQ_DASHBOARD_TOKEN": TOKEN, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: health(port) == 200 or child.poll() is not None, what="the dashboard")
        assert child.poll() is None, (tmp_path / "dashboard.log").read_text()
        yield port, psutil.Process(child.pid)
    finally:
        child.terminate()
        child.wait(timeout=30)
        log.close()


def health(port: int, method: str = "GET") -> int:
    """The status of ``/api/v1/health`` (0 while nothing listens); HEAD answers no body."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/health", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - local URL
            body = response.read()
            assert body == b"" if method == "HEAD" else json.loads(body) == {"status": "ok"}
            return int(response.status)
    except OSError:
        return 0


@pytest.mark.slow
def test_a_300_mib_body_does_not_grow_the_servers_memory(
    live_dashboard: tuple[int, psutil.Process],
) -> None:
    port, server = live_dashboard
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    json_type = {"Content-Type": "application/json"}
    cases: list[tuple[str, dict[str, str], bool, set[int]]] = [
        ("/api/v1/tasks", json_type, True, {401}),  # no token: refused before reading
        ("/api/v1/tasks", json_type, False, {413}),  # a declared length over the limit
        ("/api/v1/tasks", {**json_type, **AUTH}, True, {413}),  # with the token: read, capped
        ("/tasks", form, True, {413}),  # a form has to be read for its token field
        ("/login", form, True, {413}),
    ]
    for path, headers, chunked, _ in cases:  # warm up: first-use imports and buffers
        stream_post(port, path, OVER, headers, chunked)
    rss_before = server.memory_info().rss
    peak_before = peak_rss(server.pid)
    for path, headers, chunked, expected in cases:
        status, sent = stream_post(port, path, BIG, headers, chunked)
        assert status in expected, (path, headers, chunked, status)
        assert sent < 64 * MiB, f"{path}: the answer came only after {sent} bytes"
    assert server.memory_info().rss - rss_before < 50 * MiB
    assert peak_rss(server.pid) - peak_before < 50 * MiB
    # The server still answers, HEAD included.
    assert health(port) == 200
    assert health(port, "HEAD") == 200
