"""The command line: clear one-line refusals, nothing written, and the event subcommands."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from celery_taskq.cli import main
from celery_taskq.core.models import RunStatus, TaskQueue
from celery_taskq.core.storage.database import Database
from tests.helpers import count, insert_task_row, runners, runs_of, task_row
from tests.test_schema import HEAD_REVISION

RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_cli(database_url: str, capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Run the command in-process against the test database; return (code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--database-url", database_url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_enqueue_prints_the_new_id(run_cli: RunCli, database: Database) -> None:
    code, out, err = run_cli(
        "enqueue",
        "tests.handlers.Succeed",
        '{"to": "a@b.c"}',
        "--at",
        "2030-01-01T08:00:00+02:00",
        "--max-retries",
        "3",
        "--queued-by",
        "user-7",
    )
    assert (code, err) == (0, "")
    task_id = int(out)
    row = task_row(database, task_id)
    assert row.task_data == {"to": "a@b.c"}
    assert row.scheduled_on.isoformat() == "2030-01-01T06:00:00+00:00"
    assert (row.max_retries, row.queued_by_id) == (3, "user-7")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tests.nowhere.X"], "no module named 'tests.nowhere'"),
        (["tests.handlers.Missing"], "has no class 'Missing'"),
        (["tests.handlers.NotAHandler"], "not a subclass of celery_taskq.TaskHandler"),
        (["tests.handlers.Succeed", "{not json"], "is not valid JSON"),
        (
            ["tests.handlers.Succeed", "--max-retries", "0"],
            "max_retries must be an integer of 1 or more",
        ),
        (["tests.handlers.Succeed", "--at", "2030-01-01T08:00:00"], "has no UTC offset"),
        (["tests.handlers.Succeed", "--at", "tomorrow"], "is neither an ISO 8601 time nor"),
        (["tests.handlers.RefuseNegative", '{"n": -1}'], "must not be negative"),
    ],
)
def test_bad_enqueue_is_one_clear_line_and_writes_nothing(
    run_cli: RunCli, database: Database, args: list[str], expected: str
) -> None:
    code, out, err = run_cli("enqueue", *args)
    assert code != 0
    assert out == ""
    assert expected in err
    assert "Traceback" not in err
    assert count(database, TaskQueue) == 0


def test_show_prints_the_task_and_its_runs(run_cli: RunCli, database: Database) -> None:
    _, out, _ = run_cli("enqueue", "tests.handlers.Talk")
    task_id = int(out)
    assert run_cli("process")[0] == 0
    assert run_cli("runner", "--burst")[0] == 0
    code, out, _ = run_cli("show", str(task_id))
    assert code == 0
    assert f"task {task_id}: tests.handlers.Talk" in out
    assert "run 1: success" in out
    assert "python says hi" in out
    assert "child-err" in out


def test_show_unknown_id(run_cli: RunCli) -> None:
    code, _, err = run_cli("show", "999")
    assert code == 1
    assert err.strip() == "error: no task with id 999"


def test_events_process_create_runners_and_debug(run_cli: RunCli, database: Database) -> None:
    task_id = int(run_cli("enqueue", "tests.handlers.Succeed")[1])
    assert runs_of(database, task_id)[0].status is RunStatus.SCHEDULED  # its run came with it
    by_hand = insert_task_row(database, "tests.handlers.Succeed", datetime.now(UTC))
    code, out, _ = run_cli("process")
    assert (code, out.strip()) == (0, "timed out runners: 0; tasks given a run: 1")
    code, out, _ = run_cli("debug")
    assert (code, out.strip()) == (0, "ran one iteration")
    assert runs_of(database, task_id)[0].status is RunStatus.SUCCESS
    assert runs_of(database, by_hand)[0].status is RunStatus.SCHEDULED
    assert len(runners(database)) == 1


def test_schema_missing_gives_a_clear_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["--database-url", f"sqlite:///{tmp_path / 'none.db'}", "enqueue", "tests.handlers.Succeed"]
    )
    _, err = capsys.readouterr()
    assert code == 1
    assert "celery-taskq db upgrade" in err


def test_db_upgrade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--database-url", f"sqlite:///{tmp_path / 'new.db'}", "db", "upgrade"]) == 0
    assert f"database at revision {HEAD_REVISION}" in capsys.readouterr().out


def test_demo_runs_the_main_job_on_the_embedded_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no configuration at all, in an empty directory
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKQ_DATABASE_URL", raising=False)
    # the in-process runner would leave at once: the test process outgrows the 100 MiB default
    monkeypatch.setenv("TASKQ_RUNNER_MEMORY_LIMIT_MB", "4096")
    # When the demo runs
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    # Then the SQLite file in the working directory holds the record it prints
    assert (tmp_path / "celery_taskq.db").exists()
    assert "run 1: success  100%" in out
    assert "Hello, world!" in out
    assert "a child process writes here too" in out
    assert out.count("error: [E_MAIL_DOWN] the mail server did not answer") == 2
    assert "failed runs: 2/2" in out


def test_cli_module_leaves_other_commands_modules_unimported() -> None:
    # Runners and Celery pool processes import the CLI: what only other commands use (Alembic,
    # the reports, Celery, the web server) would sit in every runner's memory.
    heavy = [
        "alembic",
        "celery_taskq.core.storage.migrate",
        "celery_taskq.reports.sql",  # every report section reads through it
        "celery_taskq.reports.report",
        "celery_taskq.reports.text",
        "celery",
        "fastapi",
        # loaded on first use: a runner on SQLite without Redis needs neither
        "redis",
        "psycopg",
    ]
    program = f"import sys, celery_taskq.cli; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
