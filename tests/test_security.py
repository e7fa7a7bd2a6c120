"""Security: the handler allow-list, a read-only dashboard without the token, the token compared
in constant time, no SQL built from strings, HTML escaping, and redaction of secrets in data.

The allow-list's basics (names and paths under a prefix, hand-inserted rows refused by the
runner) are in ``tests/test_registry.py::test_allow_list_admits_names_under_it_and_nothing_else``;
the token's 401/403 answers per API route in ``tests/test_web_api.py``.
"""

from __future__ import annotations

import ast
import hmac
import importlib
import json
import pkgutil
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select, update

import celery_taskq.web
from celery_taskq.cli import main
from celery_taskq.core.exceptions import HandlerNotAllowedError
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import DEFAULT_REDACT_PATTERNS, Settings
from celery_taskq.core.steps import STEPS_HANDLER
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.redact import REDACTED, redact
from celery_taskq.web import create_app
from tests.conftest import PROJECT_ROOT, FakeClock
from tests.helpers import count, drive, insert_task_row, results, runs_of, task_row
from tests.web_support import TOKEN, web_settings

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """Dashboards on the test database (lifespan started, closed after the test)."""
    clients: list[TestClient] = []

    def make(**options: Any) -> TestClient:
        client = TestClient(create_app(web_settings(settings, **options)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# -- the allow-list ------------------------------------------------------------------------


def test_allow_list_holds_for_rows_queued_before_it_was_narrowed_and_for_steps(
    database: Database, settings: Settings, clock: FakeClock
) -> None:
    open_service = TaskQueueService(database, settings, clock=clock)
    queued_earlier = open_service.add_task("tests.fault_handlers.Grandchild")
    strict = TaskQueueService(
        database,
        replace(settings, allowed_handler_prefixes=("tests.handlers", STEPS_HANDLER)),
        clock=clock,
    )
    # A prefix allows whole parts only, and a step's handler is checked like any other.
    for refused in ("tests.handlers_evil.Succeed", "tests.fault_handlers.Leak", "os.system"):
        with pytest.raises(HandlerNotAllowedError):
            strict.add_task(refused)
    with pytest.raises(HandlerNotAllowedError):
        strict.add_task(
            STEPS_HANDLER, {"steps": [{"handler": "tests.fault_handlers.Leak", "settings": {}}]}
        )
    assert count(database, TaskQueue) == 1
    hand_written = insert_task_row(database, "tests.fault_handlers.BinaryOutput", clock())
    drive(strict)
    for task_id in (queued_earlier, hand_written):
        (run,) = runs_of(database, task_id)
        assert (run.status, run.error_code) == (RunStatus.ERROR, "HandlerNotAllowedError")
        assert run.standard_output == ""  # the handler never ran


# -- a read-only dashboard -----------------------------------------------------------------

_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_NOT_WRITES = {"/login", "/logout"}  # they only set or clear the session cookie


def write_routes() -> list[tuple[str, str]]:
    """Every route of every web module's router that changes state, as (method, path)."""
    found = []
    for module_info in pkgutil.iter_modules(celery_taskq.web.__path__):
        module = importlib.import_module(f"celery_taskq.web.{module_info.name}")
        router = getattr(module, "router", None)
        if not isinstance(router, APIRouter):
            continue
        for route in router.routes:
            if isinstance(route, APIRoute) and route.path not in _NOT_WRITES:
                found += [
                    (method, route.path) for method in (route.methods or set()) & _WRITE_METHODS
                ]
    return sorted(found)


def snapshot_tables(database: Database) -> list[Any]:
    """Every row of TaskQueue and TaskRuns, for before/after comparison."""
    with database.transaction(read_only=True) as connection:
        return [
            *connection.execute(select(TaskQueue).order_by(TaskQueue.id)).all(),
            *connection.execute(select(TaskRun).order_by(TaskRun.id)).all(),
        ]


@pytest.mark.parametrize("configured_token", ["", TOKEN], ids=["no-token", "token-not-sent"])
def test_every_write_route_is_refused_without_the_token_and_writes_nothing(
    make_client: Callable[..., TestClient],
    service: TaskQueueService,
    database: Database,
    configured_token: str,
) -> None:
    finished = service.add_task("tests.handlers.AlwaysFail", max_retries=1)
    queued = service.add_task("tests.handlers.Succeed", create_run=True)
    drive(service)
    open_task = service.add_task("tests.handlers.Succeed", create_run=True)
    client = make_client(token=configured_token)
    routes = write_routes()
    assert ("POST", "/api/v1/tasks") in routes
    assert ("POST", "/tasks/{task_id}/cancel") in routes  # the HTML forms too
    before = snapshot_tables(database)
    expected = 401 if configured_token else 403
    for method, path in routes:
        for task_id in (finished, queued, open_task):
            url = path.replace("{task_id}", str(task_id))
            for body in (
                {"json": {"handler": "tests.handlers.Succeed"}},
                {"data": {"handler": "tests.handlers.Succeed", "token": "wrong"}},
            ):
                response = client.request(method, url, **body)  # type: ignore[arg-type]
                assert response.status_code == expected, (method, url, response.text)
    assert snapshot_tables(database) == before


def test_tokens_are_compared_with_compare_digest(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # auth.py calls hmac.compare_digest
    client = make_client()
    response = client.post("/api/v1/tasks", json={"handler": "nowhere"}, headers=AUTH)
    assert response.status_code == 400  # the token passed; the handler did not
    # Checked before the body is read (ApiTokenGuard), then by the route's dependency.
    assert calls == [(TOKEN.encode(), TOKEN.encode())] * 2
    calls.clear()
    wrong = client.post("/api/v1/tasks/1/cancel", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert calls == [(b"nope", TOKEN.encode())]
    calls.clear()
    form = client.post("/tasks/1/retry", data={"token": "guess"})
    assert form.status_code == 401
    assert (b"guess", TOKEN.encode()) in calls


def test_the_web_layer_never_compares_a_token_with_equality() -> None:
    offenders = []
    for path in sorted((PROJECT_ROOT / "celery_taskq" / "web").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare) and any(
                isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
            ):
                names = {
                    part.attr if isinstance(part, ast.Attribute) else part.id
                    for part in ast.walk(node)
                    if isinstance(part, ast.Attribute | ast.Name)
                }
                if any("token" in name.lower() or "cookie" in name.lower() for name in names):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


# -- no SQL from strings -------------------------------------------------------------------

SQL_CALLS = {"text", "exec_driver_sql", "execute", "executescript"}


def _is_constant_name(name: str) -> bool:
    """``UPPER_CASE`` module constants and ``CamelCase`` enums, by the naming convention."""
    bare = name.lstrip("_")
    return bool(bare) and (bare.isupper() or bare[0].isupper())


def _is_constant(node: ast.expr) -> bool:
    """Whether ``node`` is built from literals and code constants only (never a value)."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return _is_constant_name(node.id)
    if isinstance(node, ast.Attribute):  # RunStatus.RUNNING.value
        return _is_constant(node.value)
    if isinstance(node, ast.JoinedStr):
        return all(
            isinstance(part, ast.Constant)
            or (isinstance(part, ast.FormattedValue) and _is_constant(part.value))
            for part in node.values
        )
    if isinstance(node, ast.BinOp):
        return _is_constant(node.left) and _is_constant(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id in {"int", "str", "float"} and all(map(_is_constant, node.args))
    return False


def built_sql(source: str, filename: str = "<source>") -> list[str]:
    """Calls of SQL functions whose statement is built by formatting or joining values."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        if name not in SQL_CALLS:
            continue
        statement = node.args[0]
        formatted = (
            isinstance(statement, ast.JoinedStr)
            or (isinstance(statement, ast.BinOp) and isinstance(statement.op, ast.Mod | ast.Add))
            or (
                isinstance(statement, ast.Call)
                and isinstance(statement.func, ast.Attribute)
                and statement.func.attr == "format"
            )
        )
        if formatted and not _is_constant(statement):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_the_sql_checker_catches_each_way_of_building_a_statement() -> None:
    bad = """
text(f"SELECT * FROM t WHERE a = {value}")
connection.exec_driver_sql("DELETE FROM t WHERE id = %s" % value)
connection.execute(text("SELECT " + column))
session.execute("SELECT {}".format(column))
text(f"SELECT {request.args.name}")
cursor.execute("PRAGMA " + str(setting))
"""
    assert len(built_sql(bad)) == 6
    good = """
text("SELECT 1")
text(RUN_OPEN_SQL)
text(f"SELECT 1")
text("SELECT " "1" + "2")
text("WITH x AS (" + _SET_SQL + ")")
text(f"'{RunnerRole.RUNNER.value}'")
cursor.execute(f"PRAGMA busy_timeout = {int(TIMEOUT_SECONDS * 1000)}")
connection.execute(select(t).where(t.c.id == value))
"""
    assert built_sql(good) == []


def test_no_module_builds_sql_by_formatting_strings() -> None:
    offenders = []
    for path in sorted((PROJECT_ROOT / "celery_taskq").rglob("*.py")):
        offenders += built_sql(path.read_text(), str(path.relative_to(PROJECT_ROOT)))
    assert offenders == []


# -- HTML escaping -------------------------------------------------------------------------

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"onerror="alert(2)'
IMAGE = '"><img src=x onerror=alert(3)>'


def test_everything_a_task_carries_is_escaped_on_the_dashboard(
    make_client: Callable[..., TestClient], service: TaskQueueService, database: Database
) -> None:
    payload = SCRIPT + ATTRIBUTE + IMAGE
    task_id = service.add_task(
        "tests.handlers.Echo",
        {"text": payload, "fail": True, payload: payload},
        title=payload,
        queued_by=payload[:200],
        max_retries=1,
    )
    drive(service)
    with database.transaction() as connection:
        connection.execute(
            update(TaskRun).values(
                results={"html": payload}, error_code=payload[:200], progress_status=payload[:200]
            )
        )
    (run,) = runs_of(database, task_id)
    assert (run.standard_output, run.error_message) == (payload + "\n", payload)
    client = make_client()
    for path in (f"/tasks/{task_id}", "/tasks", "/", "/runners"):
        page = client.get(path).text
        for raw in ("<script>alert", "<img", 'onerror="alert', '"onerror='):
            assert raw not in page, (path, raw)
    page = client.get(f"/tasks/{task_id}").text
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6  # every field shows it
    assert "&#34;onerror=&#34;alert(2)" in page


# -- redaction -----------------------------------------------------------------------------

SECRET = "hunter2-very-secret"  # noqa: S105 - a value the tests must never see shown
DATA = {
    "user": "ann",
    "Password": SECRET,
    "smtp": {"host": "mail", "API-Key": SECRET, "servers": [{"auth_token": SECRET, "port": 25}]},
    "headers": [{"Authorization": f"Bearer {SECRET}"}],
    "credentials": {"nested": SECRET},
    "note": "the word password in a value is kept",
}
REDACTED_DATA = {
    "user": "ann",
    "Password": REDACTED,
    "smtp": {
        "host": "mail",
        "API-Key": REDACTED,
        "servers": [{"auth_token": REDACTED, "port": 25}],
    },
    "headers": [{"Authorization": REDACTED}],
    "credentials": REDACTED,
    "note": "the word password in a value is kept",
}


def test_redact_matches_keys_case_insensitively_at_any_depth() -> None:
    assert redact(DATA, DEFAULT_REDACT_PATTERNS) == REDACTED_DATA
    assert redact(DATA, ()) == DATA
    assert redact({"stripeApiKey": 1, "monkey": 2}, ["api_key"]) == {
        "stripeApiKey": REDACTED,
        "monkey": 2,
    }
    assert redact([{"x": {"ssn": "1"}}], ["SSN"]) == [{"x": {"ssn": REDACTED}}]


def test_redact_patterns_are_configurable() -> None:
    assert Settings.resolve(environ={}).redact_patterns == DEFAULT_REDACT_PATTERNS
    env = {"TASKQ_REDACT_PATTERNS": "ssn, iban"}
    assert Settings.resolve(environ=env).redact_patterns == ("ssn", "iban")
    assert Settings.resolve(environ={"TASKQ_REDACT_PATTERNS": ""}).redact_patterns == ()


@pytest.fixture
def secret_task(service: TaskQueueService) -> int:
    """A finished task whose data carries secrets; its handler echoes the data it got."""
    task_id = service.add_task("tests.handlers.Succeed", DATA)
    drive(service)
    return task_id


def test_secrets_are_redacted_on_the_dashboard_and_in_the_api(
    make_client: Callable[..., TestClient], secret_task: int, database: Database
) -> None:
    client = make_client()
    task = client.get(f"/api/v1/tasks/{secret_task}").json()
    assert task["data"] == REDACTED_DATA
    listed = client.get("/api/v1/tasks").json()["tasks"]
    assert [item["data"] for item in listed] == [REDACTED_DATA]
    page = client.get(f"/tasks/{secret_task}").text
    task_data = re.search(r'<pre id="task-data">(.*?)</pre>', page, re.DOTALL)
    assert task_data is not None
    assert SECRET not in task_data.group(1)
    assert REDACTED in task_data.group(1)
    # Stored as queued, and the handler got the real values (it echoed them as its results).
    assert task_row(database, secret_task).task_data == DATA
    assert results(runs_of(database, secret_task)[0]) == {"echo": DATA}


def test_secrets_are_redacted_by_the_command_line(
    database_url: str, secret_task: int, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: str) -> str:
        assert main(["--database-url", database_url, *args]) == 0
        out, _ = capsys.readouterr()
        return out

    shown = run("show", str(secret_task))
    data_line = next(line for line in shown.splitlines() if line.startswith("  data: "))
    assert json.loads(data_line.removeprefix("  data: ")) == REDACTED_DATA
    listed = json.loads(run("list", "--json"))
    assert [task["data"] for task in listed["tasks"]] == [REDACTED_DATA]
    report = run("report", "--json")
    assert SECRET not in report


def test_a_configured_pattern_redacts_in_the_api(
    make_client: Callable[..., TestClient], settings: Settings, service: TaskQueueService
) -> None:
    task_id = service.add_task("tests.handlers.Succeed", {"ssn": "123", "Password": "p"})
    client = TestClient(create_app(replace(web_settings(settings), redact_patterns=("SSN",))))
    with client:
        assert client.get(f"/api/v1/tasks/{task_id}").json()["data"] == {
            "ssn": REDACTED,
            "Password": "p",
        }


def test_redaction_module_is_used_at_every_place_data_is_shown() -> None:
    shown_at = {
        "celery_taskq/cli/tasks.py",
        "celery_taskq/cli/demo.py",
        "celery_taskq/web/api_routes.py",
        "celery_taskq/web/pages.py",
    }
    for name in shown_at:
        assert "redacted_" in (PROJECT_ROOT / name).read_text(), name
    # A schedule's data is shown (CLI and HTTP) only through reports/schedules.py, which redacts.
    assert (
        "redact(snapshot.data" in (PROJECT_ROOT / "celery_taskq/reports/schedules.py").read_text()
    )
    for name in ("celery_taskq/cli/schedules.py", "celery_taskq/web/schedule_routes.py"):
        assert "shown_schedule(" in (PROJECT_ROOT / name).read_text(), name
    # Anything else that puts task data into output would have to be added above.
    readers = {
        str(path.relative_to(PROJECT_ROOT))
        for path in (PROJECT_ROOT / "celery_taskq").rglob("*.py")
        if re.search(r"\.task_data\b", path.read_text())
    }
    assert readers <= shown_at | {
        "celery_taskq/cli/task_text.py",  # renders what cli/tasks.py redacted
        "celery_taskq/web/schemas.py",  # serialises what api_routes.py redacted
        "celery_taskq/reports/redact.py",
        "celery_taskq/core/runner/loop.py",  # hands the real data to the handler
        "celery_taskq/core/runner/outcome.py",  # stores change_data_on_error's new data
        "celery_taskq/reports/shown.py",  # bounds what the places above then redact
        "celery_taskq/reports/task_steps.py",  # lists the steps of what pages.py redacted
        "celery_taskq/core/statements/runs.py",
        "celery_taskq/core/statements/tasks.py",
        "celery_taskq/core/intake.py",
        "celery_taskq/celery/audit.py",
        "celery_taskq/core/snapshots.py",
        "celery_taskq/core/steps.py",
        "celery_taskq/core/resend.py",  # copies the stored data into a re-send's row
        "celery_taskq/core/statements/native.py",  # stores a native task's args and kwargs
        "celery_taskq/core/schedules.py",  # stores a schedule's data, run-now enqueues it
        "celery_taskq/core/schedules_spec.py",  # reads a schedule's definition from config
        "celery_taskq/core/schedules_firing.py",  # enqueues a firing with the schedule's data
        "celery_taskq/core/statements/schedules.py",  # reads the due schedules to fire
    }, readers
