"""Runner processes carry only what they run: no web framework, no migrations, no other commands.

A standalone runner (``celery-taskq runner``) and a Celery pool process (forked from
``celery-taskq worker``) are where memory counts: there is one per concurrent run. Each test
starts a fresh interpreter, loads what such a process loads, and lists ``sys.modules``:

- the runner's entry: the command line, its ``runner`` command, the runner loop; and a real
  ``celery-taskq runner --burst`` that works one run, with the modules listed as it exits;
- the pool process's entry: the ``worker`` command, the Celery layer (``install``, the event
  and runner tasks, the native audit), Celery's worker and its task tracer.

What must not be there is imported only by the dashboard (FastAPI, Starlette, pydantic,
Jinja2, uvicorn), by ``db upgrade`` (Alembic, Mako) or by the other commands.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from celery_taskq.core.queue import TaskQueueService
from tests.conftest import CLI

WEB_AND_MIGRATIONS = (
    "fastapi",
    "starlette",
    "pydantic",
    "pydantic_core",
    "jinja2",
    "uvicorn",
    "alembic",
    "mako",
    "celery_taskq.web",
    "celery_taskq.migrations",
    "celery_taskq.core.storage.migrate",
    "celery_taskq.reports.report",
    "celery_taskq.reports.sql",
)
"""Packages no runner process imports: the dashboard's, the migrations' and the reports'."""

OTHER_COMMANDS = tuple(
    f"celery_taskq.cli.{name}"
    for name in (
        "dashboard",
        "db",
        "demo",
        "health",
        "prune",
        "report",
        "schedules",
        "tasks",
        "top",
        "watch",
    )
)
"""The command modules a runner or worker never uses."""

CELERY = ("celery", "kombu", "billiard", "celery_taskq.celery")
"""A standalone runner works without Celery."""

LIST_MODULES = "import json, sys; print(json.dumps(sorted(sys.modules)))"

RUNNER_ENTRY = """
import click
from celery_taskq.cli import cli
command = cli.get_command(click.Context(cli), "runner")
assert command is not None
import celery_taskq.core.runner.loop
"""

POOL_ENTRY = """
import click
from celery_taskq.cli import cli
command = cli.get_command(click.Context(cli), "worker")
assert command is not None
from celery_taskq.celery import create_app
import celery_taskq.celery.audit, celery_taskq.celery.audit_attempts
import celery_taskq.celery.audit_beat, celery_taskq.celery.audit_message
import celery_taskq.celery.audit_processes, celery_taskq.celery.audit_publish
import celery_taskq.celery.audit_signals, celery_taskq.celery.audit_writer
import celery_taskq.celery.install, celery_taskq.celery.tasks
import celery_taskq.core.runner.loop
import celery.app.trace, celery.worker
from celery_taskq.core.settings import Settings
create_app(Settings(database_url="sqlite://", broker_url="memory://"))
"""


def modules_after(program: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``program``."""
    done = subprocess.run(
        [sys.executable, "-c", program + "\n" + LIST_MODULES],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def present(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The ``packages`` (or their submodules) found in ``modules``."""
    return sorted(
        package
        for package in packages
        if any(module == package or module.startswith(package + ".") for module in modules)
    )


def test_runner_entry_imports_no_web_framework_migrations_celery_or_other_command() -> None:
    # Given a fresh interpreter, When it loads the runner command and the runner loop
    modules = modules_after(RUNNER_ENTRY)

    # Then the runner loop is there, and nothing of the dashboard, migrations, Celery or the
    # other commands
    assert "celery_taskq.core.runner.loop" in modules
    assert present(modules, WEB_AND_MIGRATIONS + CELERY + OTHER_COMMANDS) == []


def test_pool_process_entry_imports_no_web_framework_migrations_or_other_command() -> None:
    # Given a fresh interpreter, When it loads what a worker's pool process runs
    modules = modules_after(POOL_ENTRY)

    # Then Celery and the audit are there, and nothing of the dashboard, migrations or the
    # other commands
    assert {"celery.worker", "celery_taskq.celery.audit_signals"} <= modules
    assert present(modules, WEB_AND_MIGRATIONS + OTHER_COMMANDS) == []


DUMP_AT_EXIT = """
import atexit, json, runpy, sys
def dump():
    with open({path!r}, "w") as output:
        json.dump(sorted(sys.modules), output)
atexit.register(dump)
sys.argv = ["celery-taskq", "runner", "--burst"]
runpy.run_module("celery_taskq", run_name="__main__")
"""


def test_a_runner_that_worked_a_run_imported_no_web_framework_migrations_or_celery(
    live: TaskQueueService, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a due task
    task_id = live.add_task("tests.handlers.Echo", {"text": "lean"}, create_run=True)
    listing = tmp_path / "modules.json"

    # When a standalone runner works it and leaves (burst), listing its modules at exit
    done = subprocess.run(
        [CLI[0], "-c", DUMP_AT_EXIT.format(path=str(listing))],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Then the run succeeded, and the runner never imported the dashboard, the migrations,
    # Celery or another command
    assert done.returncode == 0, done.stderr
    assert live.get_task(task_id).last_status == "success"
    modules = set(json.loads(listing.read_text()))
    assert "celery_taskq.core.runner.execution" in modules
    assert present(modules, WEB_AND_MIGRATIONS + CELERY + OTHER_COMMANDS) == []
