"""``celery-taskq --app``: the command line and the dashboard read the app's Celery config.

A project of its own in a temporary directory (a Celery app configured from its
``celeryconfig`` module, with ``taskq_*`` keys, and a handler) is driven by the installed
``celery-taskq`` script from that directory, as its developer would: the project imports only
because the current directory is on the import path, and the database its config names is
the one every command, the runners it starts and the dashboard use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_taskq.cli import main
from celery_taskq.core.models import RunStatus
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.helpers import wait_for
from tests.test_schema import HEAD_REVISION
from tests.web_support import free_port

SCRIPT = Path(sys.executable).with_name("celery-taskq")
"""The console script, as installed: unlike ``python -m``, it puts no directory on the path."""

RUNNER_LIMIT = 2
"""The project's ``taskq_task_runner_limit``: ``create-runners`` starts this many."""

PROJECT_FILES = {
    "__init__.py": "",
    "celery.py": """
from celery import Celery

from celery_taskq.celery import install

app = Celery("{package}")
app.config_from_object("{package}.celeryconfig")
install(app)
""",
    "celeryconfig.py": """
broker_url = "memory://"
taskq_database_url = {database_url!r}
taskq_db_schema = {db_schema!r}
taskq_task_runner_limit = {runner_limit}
taskq_poll_interval = 0.05
""",
    "handlers.py": """
from celery_taskq import TaskHandler


class Hello(TaskHandler):
    def handle_task_run(self, run):
        print("hello from the project")
        return {{"name": run.data["name"]}}
""",
    "plain.py": """
from celery import Celery

app = Celery("plain")
""",
    "broken.py": """
raise RuntimeError("the project's module is broken")
""",
}


def make_project(root: Path, package: str, database_url: str, db_schema: str = "") -> Path:
    """A project directory holding ``package``; returns the directory."""
    directory = root / "project"
    (directory / package).mkdir(parents=True)
    for name, source in PROJECT_FILES.items():
        text = source.format(
            package=package,
            database_url=database_url,
            db_schema=db_schema,
            runner_limit=RUNNER_LIMIT,
        )
        (directory / package / name).write_text(text.lstrip())
    return directory


def project_env() -> dict[str, str]:
    """The environment without celery_taskq's variables or an import path of the tests."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TASKQ_") and key != "PYTHONPATH"
    }


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def project_database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """An empty database for the project, and the schema its config puts the tables in."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'project.db'}", ""
    return str(request.getfixturevalue("postgresql_empty_url")), "project_jobs"


@pytest.fixture
def dashboards() -> Iterator[list[subprocess.Popen[str]]]:
    """Dashboard processes started by a test, ended at its end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.terminate()
        process.communicate(timeout=30)


def get_json(url: str) -> Any:
    """The JSON document at ``url``."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a local test server
        return json.load(response)


def test_every_command_reads_the_apps_config_from_the_project_directory(
    tmp_path: Path,
    project_database: tuple[str, str],
    dashboards: list[subprocess.Popen[str]],
) -> None:
    database_url, db_schema = project_database
    project = make_project(tmp_path, "proj", database_url, db_schema)
    env = project_env()

    def cli(*args: str, extra_env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [str(SCRIPT), *args],
            cwd=project,
            env={**env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, ""), done
        return done.stdout

    # Given no TASKQ_* variable at all, only the app's config
    # When the tables are made, a task queued (its handler imported from the project), and
    # runners started, with the app given by -A, TASKQ_APP and --app module:attribute
    in_schema = f" (schema {db_schema})" if db_schema else ""
    upgraded = cli("-A", "proj", "db", "upgrade")
    assert upgraded == f"database at revision {HEAD_REVISION}{in_schema}\n"
    task_id = int(
        cli("enqueue", "proj.handlers.Hello", '{"name": "x"}', extra_env={"TASKQ_APP": "proj"})
    )
    # (without an app, the project's modules still import from the current directory)
    variables = {"TASKQ_DATABASE_URL": database_url, "TASKQ_DB_SCHEMA": db_schema}
    other_id = int(cli("enqueue", "proj.handlers.Hello", '{"name": "y"}', extra_env=variables))
    started = cli("--app", "proj.celery:app", "create-runners", "--burst")
    # Then create-runners obeyed the app's TaskRunnerLimit, and its runners, which read the same
    # config, worked the tasks in the app's database
    assert started == f"runners started: {RUNNER_LIMIT}\n"
    database = Database(database_url, schema=db_schema)
    try:
        service = TaskQueueService(database, Settings(database_url=database_url))
        wait_for(
            lambda: all(
                service.get_task(queued).last_status is RunStatus.SUCCESS
                for queued in (task_id, other_id)
            ),
            what="the runners to work the tasks",
        )
    finally:
        database.close()
    assert not (project / "celery_taskq.db").exists()
    # And the dashboard started with -A shows it
    port = free_port()
    dashboard = subprocess.Popen(
        [str(SCRIPT), "-A", "proj", "dashboard", "--port", str(port)],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    dashboards.append(dashboard)
    base = f"http://127.0.0.1:{port}/api/v1"

    def task() -> Any:
        if dashboard.poll() is not None:
            raise AssertionError(f"the dashboard ended: {dashboard.communicate()}")
        try:
            return get_json(f"{base}/tasks/{task_id}")
        except OSError:
            return None

    shown = wait_for(task, what="the dashboard to answer")
    assert shown["handler"] == "proj.handlers.Hello"
    ((run,),) = [shown["runs"]]
    assert (run["status"], run["results"]) == ("success", {"name": "x"})
    assert run["standard_output"] == "hello from the project\n"


@pytest.fixture
def project_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A project for this process, as the working directory; its modules forgotten after."""
    package = f"proj_{os.getpid()}_{time.monotonic_ns()}"
    monkeypatch.chdir(make_project(tmp_path, package, f"sqlite:///{tmp_path / 'p.db'}"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("TASKQ_APP", raising=False)
    yield package
    for name in [name for name in sys.modules if name.split(".")[0] == package]:
        del sys.modules[name]


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("nowhere_at_all", "there is no module 'nowhere_at_all'"),
        ("{package}.nothing", "module '{package}' has no attribute 'nothing'"),
        ("{package}.plain:nothing", "module '{package}.plain' has no attribute 'nothing'"),
        ("{package}.broken", "importing it failed: RuntimeError: the project's module is broken"),
        ("{package}.handlers:Hello", "it is a type, not a Celery app"),
    ],
)
def test_a_bad_app_is_one_clear_line(
    project_package: str, app: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = app.format(package=project_package)
    assert main(["-A", app, "list"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"error: cannot load the Celery app {app!r} (--app, TASKQ_APP): "
        f"{expected.format(package=project_package)}\n"
    )
    assert not Path("p.db").exists()


def test_the_worker_of_an_app_without_celery_taskq_is_refused(
    project_package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = f"{project_package}.plain"
    assert main(["-A", app, "worker"]) == 1
    assert capsys.readouterr().err == (
        f"error: the Celery app {app!r} has not installed celery_taskq: "
        "call celery_taskq.celery.install(app) where the app is made\n"
    )
