"""Readers never crash on what was stored: values written straight into the tables with SQL.

An older version, another writer or a hand-written ``UPDATE`` can leave what intake refuses: JSON
nested 5,000 deep, tens of MiB of text, invalid JSON text and bytes that are not UTF-8 (SQLite),
``NaN``, numbers past what ``int()`` converts, lone surrogates, JSON that is not an object,
out-of-range progress (with the check constraint bypassed as an old schema would), NULLs where a
finished run has times. Every reader (the HTTP API's list, task and run, the dashboard's pages,
metrics, the command line's ``show`` and ``list`` in-process and as a real process) answers
without a 5xx or a traceback, and marks what it cut. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from celery_taskq.cli import main
from celery_taskq.core.exceptions import StorageError
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.shown import SHOWN_MAX_CHARS, TOO_DEEP
from celery_taskq.web import create_app
from tests.conftest import CLI
from tests.web_support import web_settings

HANDLER = "tests.handlers.Succeed"
HUGE = 20 * 1024 * 1024
"""Characters of the huge values (tens of MiB)."""

DEEP = "[" * 5000 + "]" * 5000
WEIRD = "\u202eright-to-left \u2028line\u2029para \U0001f600 \ufeff\uffff e\u0301 \u200b"
"""Valid Unicode that is awkward to show (NUL-free: PostgreSQL stores it)."""

STEPS = json.dumps({"steps": [{"status": {}, "step": [], "title": 5}, None, "x", {"status": 7}]})
"""Results of a multi-step run as another writer might have left them."""


def write_raw(database_url: str, statements: list[tuple[str, dict[str, Any]]]) -> None:
    """Run SQL as a writer that bypasses this library (and, on SQLite, the check constraints)."""
    if database_url.startswith("sqlite"):
        raw = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            raw.execute("PRAGMA ignore_check_constraints = ON")
            for statement, parameters in statements:
                raw.execute(statement, parameters)
            raw.commit()
        finally:
            raw.close()
        return
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            for statement, parameters in statements:
                connection.execute(text(statement), parameters)
    finally:
        engine.dispose()


def hostile_rows(service: TaskQueueService, database_url: str) -> dict[str, tuple[int, int]]:
    """Tasks (each with one run) overwritten with hostile values; name -> (task id, run id)."""
    sqlite = database_url.startswith("sqlite")
    as_json = ":value" if sqlite else "CAST(:value AS jsonb)"
    as_text = ":value" if sqlite else "CAST(:value AS text)"
    ids: dict[str, tuple[int, int]] = {}
    statements: list[tuple[str, dict[str, Any]]] = []

    def row(name: str, **columns: tuple[str, Any]) -> None:
        task_id = service.add_task(HANDLER, {}, create_run=True)
        run_id = service.get_task(task_id).runs[0].id
        ids[name] = (task_id, run_id)
        for column, (expression, value) in columns.items():
            table, key = (
                ("TaskRuns", run_id) if column.startswith("run:") else ("TaskQueue", task_id)
            )
            name_of_column = column.removeprefix("run:")
            statements.append(
                (
                    f'UPDATE "{table}" SET "{name_of_column}" = '  # noqa: S608 - the test's SQL
                    f'{expression.replace(":value", ":v")} WHERE "Id" = :id',
                    {"v": value, "id": key},
                )
            )

    if not sqlite:  # an old schema without the range check, as SQLite's pragma simulates
        statements.append(
            (
                'ALTER TABLE "TaskRuns" DROP CONSTRAINT "ck_TaskRuns_percents_completed_range"',
                {},
            )
        )
    row(
        "deep",
        TaskData=(as_json, DEEP),
        **{"run:Results": (as_json, DEEP), "run:Checkpoint": (as_json, DEEP)},
    )
    row(
        "huge",
        TaskData=(as_json, json.dumps({"s": "d" * HUGE})),
        **{
            "run:StandardOutput": (as_text, "o" * HUGE),
            "run:ErrorMessage": (as_text, "m" * (3 * 1024 * 1024)),
            "run:Results": (as_json, json.dumps(["r" * 1024] * 4096)),
        },
    )
    row("number", TaskData=(as_json, "5"), **{"run:Results": (as_json, '"just text"')})
    row("list", TaskData=(as_json, "[1, [2], {}]"), **{"run:Results": (as_json, "null")})
    row(
        "weird",
        TaskData=(as_json, json.dumps({WEIRD: WEIRD})),
        Title=(as_text, WEIRD),
        QueuedById=(as_text, WEIRD),
        TaskHandlerClass=(as_text, "tests." + WEIRD),
        **{"run:ErrorCode": (as_text, WEIRD), "run:ProgressStatus": (as_text, WEIRD)},
    )
    row(
        "steps",
        **{
            "run:Results": (as_json, STEPS),
            "run:Status": (as_text, "error"),
            "run:FinishedOn": (
                ":value" if sqlite else "CAST(:value AS timestamptz)",
                "2026-01-01 12:00:00",
            ),
            "run:StartedOn": (as_text if sqlite else "NULL", None),
        },
    )
    row("over-100", **{"run:PercentsCompleted": (":value", 999)})
    row("below-0", **{"run:PercentsCompleted": (":value", -5)})
    if sqlite:  # what only SQLite lets a writer store
        row(
            "invalid-json",
            TaskData=(":value", "{not json"),
            **{"run:Results": (":value", "[1, 2"), "run:Checkpoint": (":value", "\x00\x01")},
        )
        row(
            "not-utf8",
            TaskHandlerClass=("CAST(x'7465737473ff2e58' AS TEXT)", None),
            Title=("CAST(x'41ff80eda080' AS TEXT)", None),
            QueuedById=("CAST(x'c0' AS TEXT)", None),
            **{
                "run:StandardOutput": ("CAST(x'6f6b0aff' AS TEXT)", None),
                "run:ErrorMessage": ("x'00ff'", None),  # a BLOB in a TEXT column
            },
        )
        row(
            "surrogates",
            TaskData=(":value", '{"\\udc80": ["\\ud800", NaN, Infinity, -Infinity, 1e999]}'),
            **{"run:Results": (":value", '"\\udfff"')},
        )
        row("garbage-counts", MaxRetries=(":value", "many"), TaskRunsFailed=(":value", "x"))
    else:
        row("big-number", TaskData=(as_json, '{"n": 1e5000, "m": -1e-5000}'))
    write_raw(database_url, statements)
    return ids


@pytest.fixture
def hostile(service: TaskQueueService, settings: Settings) -> dict[str, tuple[int, int]]:
    """The hostile rows, in the test database."""
    return hostile_rows(service, settings.database_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The dashboard and HTTP API on the test database."""
    with TestClient(create_app(web_settings(settings)), raise_server_exceptions=True) as client:
        yield client


def test_every_reader_renders_every_stored_value(
    client: TestClient,
    settings: Settings,
    hostile: dict[str, tuple[int, int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given rows no intake would have written
    api = read_api(client, hostile)
    pages = read_pages(client, hostile)
    shown = read_cli(settings.database_url, hostile, capsys)

    # Then every reader answered (checked as it read), and what was cut is marked where it was
    for answer in (api["deep"], pages["deep"], shown["deep"]):
        assert TOO_DEEP in answer
    cut = f"… [truncated: {HUGE - SHOWN_MAX_CHARS:,} more characters]"
    for answer in (pages["huge"], shown["huge"]):
        assert cut in answer
    huge = json.loads(api["huge"])
    assert huge["runs"][0]["standard_output"] == "o" * SHOWN_MAX_CHARS + cut
    assert huge["data"]["s"].endswith(" more characters]")
    assert "more items]" in huge["runs"][0]["results"][-1]
    assert json.loads(api["number"])["data"] == 5
    assert json.loads(api["weird"])["title"] == WEIRD
    assert json.loads(api["over-100"])["runs"][0]["percents_completed"] == 100
    assert json.loads(api["below-0"])["runs"][0]["percents_completed"] == 0
    assert 'value="100"' in pages["over-100"]
    assert 'value="0"' in pages["below-0"]
    assert "step" in shown["steps"]
    if "invalid-json" in hostile:
        for answer in (api["invalid-json"], pages["invalid-json"], shown["invalid-json"]):
            assert "[unreadable JSON: " in answer
        assert "\ufffd" in json.loads(api["not-utf8"])["title"]
        assert json.loads(api["surrogates"])["data"] == {
            "\ufffd": ["\ufffd", "NaN", "Infinity", "-Infinity", "Infinity"]
        }
        assert json.loads(api["garbage-counts"])["max_retries"] == 0
    else:
        assert json.loads(api["big-number"])["data"]["n"].startswith("1000")


def read_api(client: TestClient, hostile: dict[str, tuple[int, int]]) -> dict[str, str]:
    """The API's list, and each task and run; every answer a 200. Name -> the task's JSON."""
    listed = client.get("/api/v1/tasks", params={"limit": 50})
    assert listed.status_code == 200, listed.text[:500]
    assert len(listed.json()["tasks"]) == len(hostile)
    answers = {}
    for name, (task_id, run_id) in hostile.items():
        task = client.get(f"/api/v1/tasks/{task_id}")
        run = client.get(f"/api/v1/runs/{run_id}")
        assert task.status_code == 200, (name, task.text[:500])
        assert run.status_code == 200, (name, run.text[:500])
        assert 0 <= run.json()["percents_completed"] <= 100
        answers[name] = task.text
    return answers


def read_pages(client: TestClient, hostile: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Every dashboard page and metrics; every answer a 200. Name -> the task's page."""
    for path in ["/tasks", "/", "/?since=30d", "/runners"]:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:500])
    metrics = client.get("/metrics")
    assert metrics.status_code == 200, metrics.text[:500]
    assert list(text_string_to_metric_families(metrics.text))
    pages = {}
    for name, (task_id, _) in hostile.items():
        page = client.get(f"/tasks/{task_id}")
        assert page.status_code == 200, (name, page.text[:500])
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        pages[name] = page.text
    return pages


def read_cli(
    url: str, hostile: dict[str, tuple[int, int]], capsys: pytest.CaptureFixture[str]
) -> dict[str, str]:
    """``list`` (table and JSON) and ``show`` of each task, in-process; each exits 0 with
    nothing on stderr. Name -> what show printed."""
    for extra in ([], ["--json"]):
        assert main(["--database-url", url, "list", "--limit", "50", *extra]) == 0
        out, err = capsys.readouterr()
        assert (bool(out.strip()), err) == (True, "")
    shown = {}
    for name, (task_id, _) in hostile.items():
        assert main(["--database-url", url, "show", str(task_id)]) == 0, name
        shown[name], err = capsys.readouterr()
        assert err == "", (name, err)
    return shown


SHOW_SQL = {
    "sqlite": (
        'UPDATE "TaskQueue" SET "TaskData" = :v WHERE "Id" = :id',
        'UPDATE "TaskRuns" SET "Results" = :v, "StandardOutput" = '
        "CAST(x'6f6b0aff1b5b326a' AS TEXT) WHERE \"Id\" = :id",
    ),
    "postgresql": (
        'UPDATE "TaskQueue" SET "TaskData" = CAST(:v AS jsonb) WHERE "Id" = :id',
        'UPDATE "TaskRuns" SET "Results" = CAST(:v AS jsonb), "StandardOutput" = :o '
        'WHERE "Id" = :id',
    ),
}
"""A task's data and its run's results and output, overwritten for the subprocess test."""


def test_a_real_command_line_process_shows_hostile_values(
    settings: Settings,
    database: Database,
    service: TaskQueueService,
    subprocess_env: dict[str, str],
) -> None:
    # Given a task whose data, results and output another writer left hostile
    task_id = service.add_task(HANDLER, {}, create_run=True)
    run_id = service.get_task(task_id).runs[0].id
    set_data, set_run = SHOW_SQL[database.dialect]
    results = json.dumps({"text": "x" * (2 * SHOWN_MAX_CHARS)})
    write_raw(
        settings.database_url,
        [
            (set_data, {"v": DEEP, "id": task_id}),
            (set_run, {"v": results, "o": WEIRD, "id": run_id}),
        ],
    )

    # When the real command shows it
    done = subprocess.run(
        [*CLI, "show", str(task_id)],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Then it succeeds with no traceback, and marks what it cut
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert TOO_DEEP in done.stdout
    assert "more characters]" in done.stdout


def test_unknown_statuses_cannot_be_stored(
    service: TaskQueueService, database: Database, settings: Settings
) -> None:
    # Given a task and its run; when a writer tries an unknown status, the database refuses
    task_id = service.add_task(HANDLER, {}, create_run=True)
    for statement in (
        'UPDATE "TaskQueue" SET "LastStatus" = \'exploded\' WHERE "Id" = :id',
        'UPDATE "TaskRuns" SET "Status" = \'exploded\' WHERE "TaskQueueId" = :id',
    ):
        with pytest.raises(StorageError), database.transaction() as connection:
            connection.execute(text(statement), {"id": task_id})
    # Then the task still reads
    assert service.get_task(task_id).runs[0].status.value == "scheduled"


def test_a_secret_at_the_cut_of_a_huge_value_is_redacted_before_it_is_cut(
    service: TaskQueueService,
    settings: Settings,
    client: TestClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a stored value whose URL, with its password, straddles the point readers cut at
    url = "postgresql://taskq:hunter2secret@db.example/taskq"
    value = "x" * (SHOWN_MAX_CHARS - 30) + url
    task_id = service.add_task(HANDLER, {"n": 1})
    as_json = ":data" if settings.database_url.startswith("sqlite") else "CAST(:data AS jsonb)"
    write_raw(
        settings.database_url,
        [
            (
                f'UPDATE "TaskQueue" SET "TaskData" = {as_json} WHERE "Id" = :id',  # noqa: S608
                {"data": json.dumps({"dsn": value}), "id": task_id},
            )
        ],
    )
    # Then no reader shows any part of the password: it is masked before the value is cut
    answer = client.get(f"/api/v1/tasks/{task_id}")
    assert answer.status_code == 200
    page = client.get(f"/tasks/{task_id}")
    assert page.status_code == 200
    assert main(["--database-url", settings.database_url, "show", str(task_id)]) == 0
    shown, _ = capsys.readouterr()
    for text_shown in (answer.text, page.text, shown):
        assert "hunter2" not in text_shown
