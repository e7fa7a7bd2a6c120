"""Property: any JSON-like value, stored through any writer, is read back by every reader.

Values are arbitrary JSON-like documents with every character (lone surrogates and NUL
included), ``NaN`` and infinities, integers past 64 bits, nesting thousands deep and strings of
more than a MiB. Each is sent through every writer: ``enqueue``, ``enqueue_many``, the HTTP JSON
API, the HTTP form, the command line, and raw SQL for what the writers refuse (as ``TaskData``,
as the run's ``Results`` and, for text, as its ``StandardOutput``). A writer either stores it or
refuses it clearly (a 4xx, an ``InvalidTaskError``, one ``error:`` line). Then every reader (the
API's list and task, the dashboard's list and task page, the command line's ``list`` and
``show``, metrics) answers without a 5xx or a traceback. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from celery_taskq.api import enqueue, enqueue_many
from celery_taskq.cli import main
from celery_taskq.core.exceptions import InvalidTaskError, StorageError
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from tests.strategies import any_text, json_documents
from tests.web_support import TOKEN, web_settings

HANDLER = "tests.handlers.Succeed"
PROPERTY = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

documents = json_documents(any_text)


@dataclass(frozen=True)
class Sample:
    """A value to store and its JSON text (shown briefly: the values run to MiBs)."""

    kind: str
    value: Any = field(repr=False)
    json_text: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Sample({self.kind}, {len(self.json_text):,} characters: {self.json_text[:80]!r})"


@st.composite
def samples(draw: st.DrawFn) -> Sample:
    """A document, the same nested deep, or one with a huge string."""
    kind = draw(st.sampled_from(["document", "document", "deep", "deep", "huge"]))
    inner = draw(documents)
    if kind == "deep":  # built by hand: json.dumps would recurse as deep as the value
        depth = draw(st.integers(min_value=90, max_value=3000))
        value: Any = inner
        for _ in range(depth):
            value = [value]
        return Sample(kind, value, "[" * depth + json.dumps(inner) + "]" * depth)
    if kind == "huge":
        size = draw(st.integers(min_value=100_000, max_value=1_200_000))
        char = draw(st.characters(codec=None, categories=None))
        value = {"huge": char * size, "inner": inner}
        return Sample(kind, value, json.dumps(value))
    return Sample(kind, inner, json.dumps(inner))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The dashboard and HTTP API, writes allowed."""
    with TestClient(create_app(web_settings(settings))) as client:
        yield client


def write_everywhere(
    value: Any,
    json_text: str,
    *,
    database: Database,
    service: TaskQueueService,
    client: TestClient,
    capsys: pytest.CaptureFixture[str],
) -> list[int]:
    """Send the value through every writer; each stores it or refuses it clearly. Return the
    ids of the tasks stored, the raw one last."""
    url = service.settings.database_url
    stored: list[int] = []
    try:
        stored.append(enqueue(HANDLER, value, database_url=url))
    except InvalidTaskError as exc:
        assert str(exc).strip()  # noqa: PT017 - a refusal is an allowed outcome, not expected
    try:
        stored += enqueue_many([{"handler": HANDLER, "data": value}], database_url=url)
    except InvalidTaskError as exc:
        assert str(exc).strip()  # noqa: PT017

    response = client.post(
        "/api/v1/tasks",
        content=f'{{"handler": "{HANDLER}", "data": {json_text}}}'.encode("utf-8", "surrogatepass"),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert response.status_code in (201, 400, 413, 422), response.text[:500]
    if response.status_code == 201:
        stored.append(response.json()["task_id"])
    response = client.post(
        "/tasks",
        data={"handler": HANDLER, "data": json_text, "token": TOKEN},
        headers={"Origin": str(client.base_url)},
        follow_redirects=False,
    )
    assert response.status_code in (303, 400, 413, 422), response.text[:500]
    if response.status_code == 303:
        stored.append(int(response.headers["location"].split("/")[2].split("?")[0]))

    code = main(["--database-url", url, "enqueue", HANDLER, json_text])
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    assert "Traceback" not in err
    if code == 0:
        stored.append(int(out))
    return [*stored, write_raw(database, service, value, json_text)]


SET_DATA = {
    "sqlite": 'UPDATE "TaskQueue" SET "TaskData" = :v WHERE "Id" = :id',
    "postgresql": 'UPDATE "TaskQueue" SET "TaskData" = CAST(:v AS jsonb) WHERE "Id" = :id',
}
SET_RESULTS = {
    "sqlite": 'UPDATE "TaskRuns" SET "Results" = :v WHERE "TaskQueueId" = :id',
    "postgresql": 'UPDATE "TaskRuns" SET "Results" = CAST(:v AS jsonb) WHERE "TaskQueueId" = :id',
}
SET_OUTPUT_BYTES = (
    'UPDATE "TaskRuns" SET "StandardOutput" = CAST(:o AS TEXT) WHERE "TaskQueueId" = :id'
)


def write_raw(database: Database, service: TaskQueueService, value: Any, json_text: str) -> int:
    """A task whose data and run's results are the JSON text, written past every check (on
    SQLite, a huge string also as the run's output, in the bytes it encodes to: invalid UTF-8
    for a lone surrogate). Where the database refuses the text (PostgreSQL's jsonb has no
    ``NaN``), the task keeps ``{}``. Return its id."""
    task_id = service.add_task(HANDLER, {}, create_run=True)
    output = value.get("huge") if isinstance(value, dict) else None
    try:
        with database.transaction() as connection:
            parameters = {"v": json_text, "id": task_id}
            connection.execute(text(SET_DATA[database.dialect]), parameters)
            connection.execute(text(SET_RESULTS[database.dialect]), parameters)
            if isinstance(output, str) and database.dialect == "sqlite":
                connection.execute(
                    text(SET_OUTPUT_BYTES),
                    {"o": output.encode("utf-8", "surrogatepass"), "id": task_id},
                )
    except (StorageError, DBAPIError):
        assert database.dialect == "postgresql"
    return task_id


def read_everywhere(
    task_ids: list[int],
    *,
    database_url: str,
    client: TestClient,
    capsys: pytest.CaptureFixture[str],
    cli_json: bool,
) -> None:
    """Read the tasks through every reader: the lists and metrics, then each task's API answer
    and page, and the command line's show of the last one."""
    for path in ("/api/v1/tasks?limit=8", "/tasks?limit=8", "/metrics"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:500])
    for task_id in task_ids:
        for path in (f"/api/v1/tasks/{task_id}", f"/tasks/{task_id}"):
            response = client.get(path)
            assert response.status_code == 200, (path, response.text[:500])
    for args in (
        ["list", "--limit", "8", *(["--json"] if cli_json else [])],
        ["show", str(task_ids[-1])],
    ):
        assert main(["--database-url", database_url, *args]) == 0
        out, err = capsys.readouterr()
        assert (bool(out.strip()), err) == (True, "")


@given(sample=samples(), cli_json=st.booleans(), pick=st.integers(min_value=0, max_value=5))
@PROPERTY
def test_every_value_through_every_writer_is_read_by_every_reader(
    database: Database,
    service: TaskQueueService,
    client: TestClient,
    capsys: pytest.CaptureFixture[str],
    sample: Sample,
    cli_json: bool,
    pick: int,
) -> None:
    # Given a value; when every writer is given it, each stores it or refuses it clearly
    stored = write_everywhere(
        sample.value,
        sample.json_text,
        database=database,
        service=service,
        client=client,
        capsys=capsys,
    )
    # Then every reader reads what was stored: the lists hold every task; each task is read
    # by every reader for the raw one, and for one other picked (over the examples, every
    # writer's)
    read_everywhere(
        [stored[pick % len(stored)], stored[-1]],
        database_url=service.settings.database_url,
        client=client,
        capsys=capsys,
        cli_json=cli_json,
    )
