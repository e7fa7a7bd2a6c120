"""Task data limits: the same depth and size limits, with the same message, at every intake.

``enqueue``, ``enqueue_many``, the command line, the HTTP form and the HTTP JSON API are each
given the same documents: one level too deep, thousands of levels deep (past Python's recursion
limit, where a JSON parser would fail before any check), and one too large. Each refuses them
with the message of :func:`celery_taskq.core.intake.check_task_data` (the HTTP intakes with a 422)
and writes nothing. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from celery_taskq.api import enqueue, enqueue_many
from celery_taskq.cli import main
from celery_taskq.core.exceptions import (
    ConfigurationError,
    InvalidTaskDataError,
    TaskDataLimitError,
)
from celery_taskq.core.intake import check_task_data
from celery_taskq.core.models import TaskQueue, TaskRun
from celery_taskq.core.settings import DEFAULT_TASK_DATA_MAX_BYTES, Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.decoding import loads_json
from celery_taskq.core.storage.storable import MAX_JSON_DEPTH
from celery_taskq.web import create_app
from tests.helpers import count
from tests.web_support import TOKEN, web_settings

MAX_BYTES = 2048
"""The size limit the tests set (TASKQ_TASK_DATA_MAX_BYTES)."""

HANDLER = "tests.handlers.Succeed"
TOO_DEEP = f"task data is nested too deeply: more than {MAX_JSON_DEPTH} levels of objects and lists"


def nested(depth: int) -> Any:
    """A document ``depth`` levels deep: objects and lists in turn, an integer at the bottom."""
    document: Any = 1
    for level in range(depth):
        document = [document] if level % 2 else {"k": document}
    return document


def too_large_message(document: Any) -> str:
    size = len(json.dumps(document, separators=(",", ":")).encode())
    return (
        f"task data is too large: {size:,} bytes as JSON, more than the limit of "
        f"{MAX_BYTES:,} bytes (TASKQ_TASK_DATA_MAX_BYTES)"
    )


LARGE = {"blob": "x" * MAX_BYTES}
REFUSED = {
    "one-level-too-deep": (json.dumps(nested(MAX_JSON_DEPTH + 1)), TOO_DEEP),
    "past-the-recursion-limit": ("[" * 5000 + "]" * 5000, TOO_DEEP),
    "too-large": (json.dumps(LARGE), too_large_message(LARGE)),
}
"""Documents (as JSON text) every intake refuses, with the message each must give."""

Intake = Callable[[str], tuple[str, int | None]]
"""Send a document (JSON text) through one intake; return its error message and HTTP status."""


@pytest.fixture
def limited(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The test settings with the small size limit, also in the environment (API and CLI)."""
    monkeypatch.setenv("TASKQ_TASK_DATA_MAX_BYTES", str(MAX_BYTES))
    return replace(settings, task_data_max_bytes=MAX_BYTES)


@pytest.fixture
def client(limited: Settings) -> Iterator[TestClient]:
    """The dashboard and HTTP API with writes allowed."""
    with TestClient(create_app(web_settings(limited))) as client:
        yield client


def through_enqueue(database_url: str) -> Intake:
    def send(text: str) -> tuple[str, int | None]:
        with pytest.raises(TaskDataLimitError) as refused:
            enqueue(HANDLER, loads_json(text), database_url=database_url)
        return str(refused.value), None

    return send


def through_enqueue_many(database_url: str) -> Intake:
    def send(text: str) -> tuple[str, int | None]:
        with pytest.raises(TaskDataLimitError) as refused:
            enqueue_many(
                [{"handler": HANDLER}, {"handler": HANDLER, "data": loads_json(text)}],
                database_url=database_url,
            )
        message = str(refused.value)
        assert message.startswith("task 1: ")  # the refused item, by position
        return message.removeprefix("task 1: "), None

    return send


def through_cli(database_url: str, capsys: pytest.CaptureFixture[str]) -> Intake:
    def send(text: str) -> tuple[str, int | None]:
        code = main(["--database-url", database_url, "enqueue", HANDLER, text])
        out, err = capsys.readouterr()
        assert (code, out) == (1, "")
        assert err.startswith("error: "), err
        assert err.count("\n") == 1, err
        return err.removeprefix("error: ").strip(), None

    return send


def through_form(client: TestClient) -> Intake:
    def send(text: str) -> tuple[str, int | None]:
        response = client.post(
            "/tasks",
            data={"handler": HANDLER, "data": text, "token": TOKEN},
            headers={"Origin": str(client.base_url)},
            follow_redirects=False,
        )
        assert response.headers["content-type"].startswith("text/html")
        return response.text, response.status_code

    return send


def through_json_api(client: TestClient) -> Intake:
    def send(text: str) -> tuple[str, int | None]:
        response = client.post(
            "/api/v1/tasks",
            content=f'{{"handler": "{HANDLER}", "data": {text}}}',
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        assert response.headers["content-type"].startswith("application/json")
        return str(response.json()["error"]), response.status_code

    return send


@pytest.mark.parametrize("intake", ["enqueue", "enqueue_many", "cli", "form", "json_api"])
def test_every_intake_refuses_the_same_documents_with_the_same_message(
    limited: Settings,
    database: Database,
    client: TestClient,
    capsys: pytest.CaptureFixture[str],
    intake: str,
) -> None:
    # Given one intake
    url = limited.database_url
    send = {
        "enqueue": lambda: through_enqueue(url),
        "enqueue_many": lambda: through_enqueue_many(url),
        "cli": lambda: through_cli(url, capsys),
        "form": lambda: through_form(client),
        "json_api": lambda: through_json_api(client),
    }[intake]()

    for document, (text, expected) in REFUSED.items():
        # When a document over a limit is sent
        message, status = send(text)

        # Then it is refused with the limit's message (a 422 over HTTP)
        if intake == "form":
            assert expected in message, document  # the error page shows it
        else:
            assert message == expected, document
        assert status == (422 if intake in ("form", "json_api") else None), document

    # And nothing was written
    assert count(database, TaskQueue) == 0
    assert count(database, TaskRun) == 0


@pytest.mark.parametrize("intake", ["enqueue", "cli", "form", "json_api"])
def test_documents_at_the_limits_are_accepted(
    limited: Settings,
    database: Database,
    client: TestClient,
    capsys: pytest.CaptureFixture[str],
    intake: str,
) -> None:
    # Given documents exactly as deep and exactly as large as allowed
    deepest = nested(MAX_JSON_DEPTH)
    overhead = len(json.dumps({"blob": ""}, separators=(",", ":")))
    largest = {"blob": "é" * ((MAX_BYTES - overhead) // 2)}  # two bytes a character in UTF-8
    assert len(json.dumps(largest, separators=(",", ":"), ensure_ascii=False).encode()) in (
        MAX_BYTES,
        MAX_BYTES - 1,
    )
    url = limited.database_url

    for document in (deepest, largest):
        text = json.dumps(document, ensure_ascii=False)
        # When each is sent through the intake
        if intake == "enqueue":
            enqueue(HANDLER, document, database_url=url)
        elif intake == "cli":
            assert main(["--database-url", url, "enqueue", HANDLER, text]) == 0
        elif intake == "form":
            response = client.post(
                "/tasks",
                data={"handler": HANDLER, "data": text, "token": TOKEN},
                headers={"Origin": str(client.base_url)},
                follow_redirects=False,
            )
            assert response.status_code == 303, response.text
        else:
            response = client.post(
                "/api/v1/tasks",
                json={"handler": HANDLER, "data": document},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.status_code == 201, response.text

    # Then both are stored
    assert count(database, TaskQueue) == 2


def test_check_task_data_is_the_one_check() -> None:
    # Within the limits: nothing to say
    check_task_data(nested(MAX_JSON_DEPTH))
    check_task_data({"a": "x" * 100}, max_bytes=110)
    check_task_data(None)

    # Over them: the limit's error, naming the limit
    with pytest.raises(TaskDataLimitError, match=f"more than {MAX_JSON_DEPTH} levels"):
        check_task_data(nested(MAX_JSON_DEPTH + 1))
    with pytest.raises(TaskDataLimitError, match="more than the limit of 100 bytes"):
        check_task_data({"a": "x" * 100}, max_bytes=100)
    assert DEFAULT_TASK_DATA_MAX_BYTES == 1024 * 1024
    with pytest.raises(TaskDataLimitError, match=r"1,048,576 bytes \(TASKQ_TASK_DATA_MAX_BYTES\)"):
        check_task_data("x" * DEFAULT_TASK_DATA_MAX_BYTES)

    # A document that contains itself is refused as too deep, not by a RecursionError
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(TaskDataLimitError, match="nested too deeply"):
        check_task_data(cycle)

    # What JSON or a database cannot hold stays refused, with its own message
    with pytest.raises(InvalidTaskDataError, match="cannot be stored as JSON"):
        check_task_data({"x": float("nan")})
    with pytest.raises(InvalidTaskDataError, match="must not contain NUL"):
        check_task_data(["a\x00"])


def test_the_size_limit_is_a_setting() -> None:
    settings = Settings.resolve(environ={"TASKQ_TASK_DATA_MAX_BYTES": "4096"})
    assert settings.task_data_max_bytes == 4096
    assert Settings.resolve(environ={}).task_data_max_bytes == DEFAULT_TASK_DATA_MAX_BYTES
    with pytest.raises(ConfigurationError, match="task_data_max_bytes must be positive"):
        Settings(task_data_max_bytes=0)
