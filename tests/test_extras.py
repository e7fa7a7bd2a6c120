"""Installs without the extras: what needs one says so in one line; the rest works without it.

Each case runs in a fresh interpreter where the extra's packages cannot be imported, as in a
base install (``pip install celery_taskq``): the ``web`` extra (FastAPI, Starlette, Jinja2,
uvicorn, prometheus-client), ``postgres`` (psycopg) and ``flower``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

WEB_EXTRA = ["fastapi", "starlette", "pydantic", "jinja2", "uvicorn", "prometheus_client"]
POSTGRES_EXTRA = ["psycopg", "psycopg_binary"]
FLOWER_EXTRA = ["flower"]
ALL_EXTRAS = WEB_EXTRA + POSTGRES_EXTRA + FLOWER_EXTRA

CLI_WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from celery_taskq.cli import main
sys.exit(main(sys.argv[2:]))
"""
"""Runs ``celery-taskq ARGS`` with the named packages made unimportable."""


def cli_without(
    blocked: list[str], *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``celery-taskq args`` in a fresh interpreter where ``blocked`` cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", CLI_WITHOUT, ",".join(blocked), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_dashboard_without_the_web_extra_says_how_to_install_it(tmp_path: Path) -> None:
    # When the dashboard is started where the web extra is missing
    result = cli_without(WEB_EXTRA, "dashboard", cwd=tmp_path)
    # Then it refuses in one line that names the extra, without a traceback
    assert result.returncode == 1
    assert result.stderr.startswith(
        "error: the dashboard needs the web extra: pip install 'celery_taskq[web]' ("
    )
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        ("postgresql+psycopg://taskq@127.0.0.1:1/taskq", "pip install 'celery_taskq[postgres]' ("),
        (
            "postgresql+psycopg2://taskq@127.0.0.1:1/taskq",
            "pip install 'celery_taskq[postgres]' and a postgresql+psycopg:// URL (",
        ),
    ],
    ids=["psycopg", "another-driver"],
)
@pytest.mark.parametrize("command", [["db", "upgrade"], ["show", "1"]], ids=" ".join)
def test_a_postgresql_url_without_the_postgres_extra_says_how_to_install_it(
    tmp_path: Path, url: str, advice: str, command: list[str]
) -> None:
    # When a command opens a PostgreSQL database where the driver is missing
    env = {"PATH": "/usr/bin:/bin", "TASKQ_DATABASE_URL": url}
    result = cli_without([*POSTGRES_EXTRA, "psycopg2"], *command, cwd=tmp_path, env=env)
    # Then it refuses in one line that names the extra, before connecting anywhere
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(
        f"error: a PostgreSQL database needs the postgres extra: {advice}"
    ), result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_the_main_command_runs_on_the_embedded_default_without_any_extra(tmp_path: Path) -> None:
    # Given no extra installed, and the README's main command: tables, a task, a worker
    env = {name: value for name, value in os.environ.items() if not name.startswith("TASKQ_")}
    for args in (["db", "upgrade"], ["enqueue", "celery_taskq.examples.Greet", '{"name": "base"}']):
        result = cli_without(ALL_EXTRAS, *args, cwd=tmp_path, env=env)
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-c", CLI_WITHOUT, ",".join(ALL_EXTRAS), "worker", "--beat"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        # When the worker with embedded beat has had its time
        deadline = time.monotonic() + 60
        shown = ""
        while time.monotonic() < deadline and "last status: success" not in shown:
            time.sleep(0.5)
            shown = cli_without(ALL_EXTRAS, "show", "1", cwd=tmp_path, env=env).stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    # Then the task ran in it, on the SQLite file and the SQL broker
    assert "last status: success" in shown, (tmp_path / "worker.log").read_text()
    assert "Hello, base!" in shown


def test_the_worker_side_imports_without_any_extra() -> None:
    # Given no extra installed, When the modules a worker and beat load are imported
    program = "\n".join(
        [
            "import sys",
            *(f"sys.modules[{name!r}] = None" for name in ALL_EXTRAS),
            "import celery_taskq, celery_taskq.celery, celery_taskq.cli",
            "import celery_taskq.celery.broker, kombu.transport.redis",
            "from celery_taskq.celery import app",
            "assert app.taskq is not None",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    # Then they load, the Redis transport included
    assert result.returncode == 0, result.stderr
