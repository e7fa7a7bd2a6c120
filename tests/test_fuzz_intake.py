"""Property-based fuzzing of every way a task comes in: the API, the command line, HTTP.

Whatever is given, an enqueue either writes exactly its rows or is refused with a clear error
(:class:`InvalidTaskError`, a click usage error, a JSON 4xx with a message) and writes nothing.
On SQLite and PostgreSQL; a modest number of examples each.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_taskq.api import enqueue, enqueue_many
from celery_taskq.cli import cli
from celery_taskq.core.exceptions import InvalidTaskError
from celery_taskq.core.models import TaskQueue, TaskRun
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web import create_app
from tests.helpers import count, task_row
from tests.strategies import any_text, json_documents
from tests.web_support import TOKEN, web_settings

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

short_text = st.one_of(any_text, st.text(max_size=8), st.sampled_from(["", " ", "a\x00b"]))
json_like = json_documents(short_text)
task_data = st.one_of(json_like, st.builds(set), st.builds(object), st.binary(max_size=4))
handlers = st.one_of(
    st.sampled_from(
        [
            "tests.handlers.Succeed",
            "tests.handlers.RefuseNegative",
            "tests.handlers.NotAHandler",
            "tests.nowhere.Handler",
            "taskq.steps",
            "",
            "no-dots",
        ]
    ),
    short_text,
)
max_retries = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=10),
    st.integers(min_value=2**31 - 2, max_value=2**40),
    st.booleans(),
    st.floats(allow_nan=False, max_value=10),
    st.text(max_size=3),
)
times = st.one_of(
    st.none(),
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(
        min_value=datetime(9999, 12, 31), timezones=st.just(timezone(-timedelta(hours=5)))
    ),
    st.datetimes(max_value=datetime(1, 1, 1, 2), timezones=st.just(timezone(timedelta(hours=5)))),
    st.datetimes(),  # naive
)
optional_text = st.one_of(st.none(), short_text, st.text(min_size=250, max_size=300))
queued_by = st.one_of(optional_text, st.integers(), st.booleans())


def rows(database: Database) -> tuple[int, int]:
    """Rows in TaskQueue and TaskRuns."""
    return count(database, TaskQueue), count(database, TaskRun)


def expected_document(data: Any) -> Any:
    """What an accepted ``data`` is stored as."""
    return {} if data is None else json.loads(json.dumps(data))


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.close()


@given(
    handler=handlers,
    data=task_data,
    retries=max_retries,
    scheduled_on=times,
    by=queued_by,
    title=optional_text,
)
@FUZZ
def test_enqueue_writes_its_rows_or_refuses_clearly(
    database_url: str,
    db: Database,
    handler: Any,
    data: Any,
    retries: Any,
    scheduled_on: Any,
    by: Any,
    title: Any,
) -> None:
    before = rows(db)
    refusal: InvalidTaskError | None = None
    try:
        task_id = enqueue(
            handler,
            data,
            max_retries=retries,
            scheduled_on=scheduled_on,
            queued_by=by,
            title=title,
            database_url=database_url,
        )
    except InvalidTaskError as exc:
        refusal = exc
    if refusal is not None:
        assert str(refusal).strip()
        assert rows(db) == before  # nothing written
        return
    tasks, runs = rows(db)
    assert tasks == before[0] + 1
    assert runs in (before[1], before[1] + 1)  # a run when due
    assert task_row(db, task_id).task_data == expected_document(data)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"data": {"note": "a\x00b"}}, "must not contain NUL characters"),
        ({"data": {"a\x00": 1}}, "must not contain NUL characters"),
        ({"data": ["\ud800"]}, "must be valid Unicode text"),
        (
            {"max_retries": 2**31},
            r"max_retries must be an integer of 1 or more \(at most 2147483647\)",
        ),
        ({"title": "\udfff"}, "title must be valid Unicode text"),
        ({"unique_key": "k\x00"}, "unique_key must not contain NUL characters"),
        ({"queued_by": "me\x00"}, "queued_by must be a string"),
        (
            {"scheduled_on": datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=5)))},
            "scheduled_on is out of range once converted to UTC",
        ),
    ],
)
def test_values_a_database_cannot_store_are_refused_before_it(
    database_url: str, db: Database, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidTaskError, match=message):
        enqueue("tests.handlers.Succeed", database_url=database_url, **arguments)
    with pytest.raises(InvalidTaskError, match="the task handler must not contain NUL"):
        enqueue("tests.handlers.Succeed\x00", database_url=database_url)
    assert rows(db) == (0, 0)


def test_a_report_window_out_of_range_is_a_usage_error(database_url: str) -> None:
    args = ["--database-url", database_url, "report", "--since", "99999999999999w"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "'99999999999999w' is out of range" in result.output


spec = st.fixed_dictionaries(
    {"handler": handlers},
    optional={
        "data": task_data,
        "max_retries": max_retries,
        "scheduled_on": times,
        "queued_by": queued_by,
        "title": optional_text,
        "unique_key": optional_text,
        "bogus": st.integers(),
    },
)


@given(items=st.one_of(st.lists(spec, max_size=4), st.just("not a list"), st.just([1, 2])))
@FUZZ
def test_enqueue_many_writes_all_or_nothing(database_url: str, db: Database, items: Any) -> None:
    before = rows(db)
    refusal: InvalidTaskError | None = None
    try:
        ids = enqueue_many(items, database_url=database_url)
    except InvalidTaskError as exc:
        refusal = exc
    if refusal is not None:
        assert str(refusal).strip()
        assert rows(db) == before
        return
    tasks, _ = rows(db)
    new_tasks = tasks - before[0]
    # A unique key taken by an unfinished task returns that task instead of a new row.
    assert new_tasks == len(set(ids) - set(range(1, before[0] + 1)))
    assert len(ids) == len(items)


cli_text = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
    st.sampled_from(["", "-", "--", "--help-me", "{}", "[1]", "null", "NaN", '{"n": -1}']),
)


@given(
    handler=st.one_of(
        st.sampled_from(["tests.handlers.Succeed", "tests.handlers.RefuseNegative"]), cli_text
    ),
    data=st.one_of(st.none(), cli_text, json_like.map(lambda value: json.dumps(value))),
    options=st.lists(
        st.tuples(
            st.sampled_from(["--max-retries", "--at", "--queued-by", "--title", "--unique-key"]),
            st.one_of(
                cli_text,
                st.integers(min_value=-(2**40), max_value=2**40).map(str),
                st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
                st.sampled_from(["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"]),
            ),
        ),
        max_size=3,
    ),
)
@FUZZ
def test_cli_enqueue_prints_an_id_or_refuses_clearly(
    database_url: str, db: Database, handler: str, data: str | None, options: list[tuple[str, str]]
) -> None:
    args = ["--database-url", database_url, "enqueue", handler]
    if data is not None:
        args.append(data)
    for option, value in options:
        args += [option, value]
    before = rows(db)
    result = CliRunner().invoke(cli, args)
    if result.exit_code == 0:
        assert result.output.strip().isdigit()
        # A unique key taken by an unfinished task (an earlier example's) returns that task
        # instead of a new row.
        created = int(result.output) > before[0]
        assert created or "--unique-key" in args
        assert rows(db)[0] == before[0] + created
        return
    assert rows(db) == before
    if result.exit_code == 2:  # click's usage error
        assert "error:" in result.output
    else:
        assert isinstance(result.exception, InvalidTaskError), result.exception
        assert str(result.exception).strip()


@given(
    since=st.one_of(
        st.from_regex(r"\A[0-9]{1,20}[smhdwSMHDW]\Z"),
        st.from_regex(r"\A([0-9]{1,6}[smhdw]){2,3}\Z"),
        cli_text,
        st.sampled_from(["99999999999999w", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59Z"]),
    )
)
@settings(parent=FUZZ, max_examples=25)
def test_cli_report_since_is_read_or_refused_as_usage(database_url: str, since: str) -> None:
    result = CliRunner().invoke(cli, ["--database-url", database_url, "report", "--since", since])
    assert result.exit_code in (0, 2), result.exception
    if result.exit_code == 2:
        assert "Invalid value for '--since'" in result.output


body_values = st.one_of(json_like, st.sampled_from([math.inf, -math.inf, math.nan]))
bodies = st.one_of(
    st.fixed_dictionaries(
        {"handler": handlers},
        optional={
            "data": body_values,
            "max_retries": st.one_of(max_retries.filter(lambda v: not isinstance(v, float))),
            "scheduled_on": st.one_of(
                cli_text,
                st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
                st.sampled_from(["9999-12-31T23:59:59-05:00", "2026-01-01T00:00:00"]),
            ),
            "queued_by": body_values,
            "title": body_values,
            "unique_key": body_values,
            "on_duplicate": st.one_of(st.sampled_from(["return", "raise"]), cli_text),
            "extra": st.integers(),
        },
    ),
    json_like,
)


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """The HTTP API on the test database, with the token configured (any handler allowed)."""
    app = create_app(web_settings(settings))
    with TestClient(app) as client:
        yield client


def check_refusal(response: Any) -> None:
    """A 4xx with a clear JSON message."""
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"].strip()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@given(body=bodies)
@FUZZ
def test_http_enqueue_creates_its_task_or_refuses_with_json(
    api: TestClient, db: Database, body: Any
) -> None:
    before = rows(db)
    response = api.post("/api/v1/tasks", content=json.dumps(body), headers=AUTH)
    if response.status_code == 201:
        assert rows(db)[0] == before[0] + 1
        return
    if response.status_code == 200:  # the unfinished task holding the unique key
        assert rows(db) == before
        return
    check_refusal(response)
    assert rows(db) == before


@given(
    body=st.one_of(
        st.binary(max_size=40), any_text.map(lambda text: text.encode("utf-8", "surrogatepass"))
    ),
    path=st.sampled_from(["/api/v1/tasks", "/api/v1/tasks/1/cancel", "/api/v1/tasks/1/retry"]),
)
@settings(parent=FUZZ, max_examples=25)
def test_http_posts_of_garbage_are_refused_with_json(
    api: TestClient, db: Database, body: bytes, path: str
) -> None:
    before = rows(db)
    response = api.post(path, content=body, headers={**AUTH, "Content-Type": "application/json"})
    if path == "/api/v1/tasks":
        if response.status_code in (200, 201):  # garbage that happens to be a valid body
            return
        check_refusal(response)
        assert rows(db) == before
    else:  # cancel and retry take no body: the task does not exist, whatever was sent
        assert response.status_code == 404, response.text
        assert rows(db) == before
