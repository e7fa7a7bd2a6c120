"""The worked adoption example, ``examples/celery_app``, run as its users run it.

A copy of the project runs from its own directory, configured the way it documents: the broker
in ``CELERY_BROKER_URL`` (a real Redis), its database in ``DATABASE_URL`` (a real PostgreSQL),
read by ``celery-taskq -A myapp`` from the app's ``taskq_database_url`` key. One real
``celery -A myapp worker -B`` (a worker with beat embedded) does the rest: the app's tasks,
called with ``.delay()`` from another process, and its beat entry run and are audited, and a
handler task queued with ``celery-taskq -A myapp enqueue`` is worked by a runner.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celery_taskq import api
from celery_taskq.core.models import RunStatus
from celery_taskq.core.settings import ENV_PREFIX
from celery_taskq.core.snapshots import TaskSnapshot
from tests.conftest import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "examples" / "celery_app"
BIN = Path(sys.executable).parent
WAIT_SECONDS = 60.0

FAST_TICKS = {
    "MYAPP_STATS_EVERY": "1",
    "TASKQ_PROCESS_INTERVAL": "0.5",
    "TASKQ_CREATE_RUNNERS_INTERVAL": "1",
    "TASKQ_POLL_INTERVAL": "0.1",
}
"""The app's beat entry, and celery_taskq's ticks, paced for a test."""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the example project, as its users check it out."""
    return Path(
        shutil.copytree(
            EXAMPLE, tmp_path / "celery_app", ignore=shutil.ignore_patterns("__pycache__")
        )
    )


@pytest.fixture
def project_env(postgresql_empty_url: str, redis_url: str) -> dict[str, str]:
    """The environment the example documents; no ``TASKQ_*`` variable names the database."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(ENV_PREFIX) and name not in {"PYTHONPATH", "CELERY_BROKER_URL"}
    }
    return {
        **inherited,
        "CELERY_BROKER_URL": redis_url,
        "DATABASE_URL": postgresql_empty_url,
        **FAST_TICKS,
    }


@pytest.fixture
def started(project: Path, project_env: dict[str, str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts in the project; stopped (SIGTERM, then SIGKILL) at its end."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def run_in(project: Path, env: dict[str, str], *argv: str) -> str:
    """Run a command in the project directory; its standard output (it must succeed)."""
    result = subprocess.run(
        argv, cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def wait_for_task(
    database_url: str, handler: str, done: Callable[[TaskSnapshot], bool], log: Path
) -> TaskSnapshot:
    """The newest task of ``handler`` once ``done`` holds for it (the worker's log on failure)."""
    deadline = time.monotonic() + WAIT_SECONDS
    task = None
    while time.monotonic() < deadline:
        page = api.list_tasks(handler=handler, limit=1, database_url=database_url)
        if page.tasks:
            task = api.get_task(page.tasks[0].id, database_url=database_url)
            if done(task):
                return task
        time.sleep(0.2)
    pytest.fail(f"{handler}: {task!r} after {WAIT_SECONDS} s; worker log:\n{log.read_text()}")


def succeeded(task: TaskSnapshot) -> bool:
    """Whether the task's last run succeeded."""
    return task.last_status is RunStatus.SUCCESS


@pytest.mark.slow
def test_the_adopted_app_runs_its_tasks_audited_and_a_handler(
    project: Path,
    project_env: dict[str, str],
    postgresql_empty_url: str,
    started: list[subprocess.Popen[bytes]],
) -> None:
    # Given the tables created from the app's own config (celery-taskq -A myapp db upgrade)
    output = run_in(project, project_env, str(BIN / "celery-taskq"), "-A", "myapp", "db", "upgrade")
    assert output.startswith("database at revision")
    # And one worker with embedded beat, started as the app always was
    log = project / "worker.log"
    with log.open("wb") as log_file:
        started.append(
            subprocess.Popen(
                [
                    str(BIN / "celery"),
                    "-A",
                    "myapp",
                    "worker",
                    "-B",
                    "--concurrency",
                    "2",
                    "--loglevel",
                    "INFO",
                    "--schedule",
                    str(project / "celerybeat-schedule"),
                ],
                cwd=project,
                env=project_env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        )

    # When the app calls its tasks, as it always did, and queues a handler task
    run_in(
        project,
        project_env,
        sys.executable,
        "-c",
        "from myapp.tasks import add, send_welcome_email\n"
        "add.delay(2, 3)\n"
        "send_welcome_email.delay(7)\n",
    )
    queued = run_in(
        project,
        project_env,
        str(BIN / "celery-taskq"),
        "-A",
        "myapp",
        "enqueue",
        "myapp.handlers.RebuildSearchIndex",
        '{"documents": 30}',
    )

    # Then each call of the app's tasks is a TaskQueue row, each attempt a run, with the result
    add = wait_for_task(postgresql_empty_url, "celery:myapp.tasks.add", succeeded, log)
    assert add.task_data == {"args": [2, 3], "kwargs": {}}
    assert [run.results for run in add.runs] == [5]
    # And Celery's retry of the welcome mail is a second run of the same task
    mail = wait_for_task(
        postgresql_empty_url, "celery:myapp.tasks.send_welcome_email", succeeded, log
    )
    assert [run.status for run in mail.runs] == [RunStatus.ERROR, RunStatus.SUCCESS]
    assert "mail server busy" in (mail.runs[0].error_message or "")
    assert "welcome mail sent to user 7" in (mail.runs[1].standard_output or "")
    # And beat ran the app's own schedule, audited too
    stats = wait_for_task(postgresql_empty_url, "celery:myapp.tasks.refresh_stats", succeeded, log)
    assert stats.runs[-1].results == {"users": 42}
    # And a runner in the app's worker worked the handler task
    index = wait_for_task(postgresql_empty_url, "myapp.handlers.RebuildSearchIndex", succeeded, log)
    assert index.id == int(queued)
    assert index.runs[-1].results == {"indexed": 30}
    assert "indexed 30 documents" in (index.runs[-1].standard_output or "")
