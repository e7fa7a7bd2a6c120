"""The command line's parity with the dashboard (issue 18, point 6): times as durations, one
error prefix, ``watch`` through retries, status filters, ``show --json``, ``list`` columns and
``top``. In-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from celery_taskq.cli import cli, main
from celery_taskq.cli.watch import Ending, ending_of
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.storage.database import Database
from tests.helpers import count, drive, insert_task_row, runs_of, task_row, wait_for

RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_cli(database_url: str, capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Run the command in-process against the test database; return (code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--database-url", database_url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _listed(out: str) -> list[int]:
    return [task["id"] for task in json.loads(out)["tasks"]]


# --- times: an instant or a duration, for every option that takes one


def test_list_takes_durations_back_from_now(run_cli: RunCli, database: Database) -> None:
    # Given a task queued two days ago and one queued an hour ago
    now = datetime.now(UTC)
    old = insert_task_row(database, "tests.handlers.Succeed", now - timedelta(days=2))
    new = insert_task_row(database, "tests.handlers.Succeed", now - timedelta(hours=1))
    # When the list is asked for the last 24 hours, and for what is older
    code, recent, err = run_cli("list", "--since", "24h", "--json")
    assert (code, err) == (0, "")
    code, older, _ = run_cli("list", "--until", "1d", "--json")
    # Then each window holds its task; a mixed window (ISO start, duration end) works too
    assert (_listed(recent), _listed(older)) == ([new], [old])
    start = (now - timedelta(days=3)).isoformat()
    assert _listed(run_cli("list", "--since", start, "--until", "1h30m", "--json")[1]) == [old]


def test_enqueue_at_takes_a_duration_from_now(run_cli: RunCli, database: Database) -> None:
    before = datetime.now(UTC)
    code, out, err = run_cli("enqueue", "tests.handlers.Succeed", "--at", "2h")
    assert (code, err) == (0, "")
    due = task_row(database, int(out)).scheduled_on.replace(tzinfo=UTC)
    assert before + timedelta(hours=2) <= due <= datetime.now(UTC) + timedelta(hours=2)
    assert runs_of(database, int(out)) == []  # not due yet: no run


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["list", "--since", "yesterday"],
            "error: Invalid value for '--since': 'yesterday' is neither an ISO 8601 time nor a "
            "duration like 24h, 30m or 7d",
        ),
        (["list", "--until", "2026-01-01T08:00"], "'2026-01-01T08:00' has no UTC offset"),
        (["list", "--since", "99999999999w"], "error: Invalid value for '--since': "),
        (["report", "--since", "3x"], "is neither an ISO 8601 time nor a duration like"),
        (
            ["enqueue", "tests.handlers.Succeed", "--at", "soon"],
            "'soon' is neither an ISO 8601 time nor a duration from now like 24h, 30m or 7d",
        ),
        (["enqueue", "tests.handlers.Succeed", "--at", "-5m"], "error: Invalid value for '--at'"),
    ],
)
def test_a_bad_time_is_refused_with_what_is_wrong(
    run_cli: RunCli, database: Database, args: list[str], expected: str
) -> None:
    code, out, err = run_cli(*args)
    assert (code, out) == (2, "")
    assert expected in err
    assert count(database, TaskQueue) == 0


# --- one error prefix


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [
        (["list", "--colour"], 2),  # click: no such option
        (["show", "x"], 2),  # click: a bad argument
        (["nosuchcommand"], 2),
        (["report", "--json", "--csv"], 2),  # a usage error raised by the command
        (["show", "999"], 1),  # a library error: no such task
        (["schedules", "show", "nothing"], 1),
        (["watch", "999"], 1),
        (["report", "--since", "1h", "--until", "2h"], 1),
    ],
)
def test_every_error_line_starts_the_same(
    run_cli: RunCli, database_url: str, args: list[str], exit_code: int
) -> None:
    # Through main() (the console script), and for click's own errors through click's
    # standalone mode too (its test runner); a library error propagates there, as click lets it
    code, out, err = run_cli(*args)
    shown = [(code, err)]
    if exit_code == 2:
        result = CliRunner().invoke(cli, ["--database-url", database_url, *args])
        shown.append((result.exit_code, result.stderr))
    for code_shown, stderr in shown:
        assert code_shown == exit_code
        error_lines = [line for line in stderr.splitlines() if "rror" in line.split(":")[0]]
        assert len(error_lines) == 1, stderr
        assert error_lines[0].startswith("error: ")
        assert "Error:" not in stderr
        assert ("Usage: " in stderr) == (exit_code == 2)
    assert out == ""


# --- watch follows retries until the task is finished


def _watch_in_thread(database_url: str, task_id: int, results: list[int]) -> threading.Thread:
    def watch() -> None:
        results.append(main(["--database-url", database_url, "watch", str(task_id)]))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_watch_follows_a_pending_retry_to_success(
    service: TaskQueueService,
    database: Database,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    # Given a task whose first run failed, with retries left
    data = {"counter_file": str(tmp_path / "count"), "succeed_on": 2}
    task_id = service.add_task("tests.handlers.FailUntilAttempt", data, max_retries=3)
    drive(service)
    assert [run.status for run in runs_of(database, task_id)] == [RunStatus.ERROR]
    # When it is watched, the watcher waits for the retry rather than exiting
    results: list[int] = []
    thread = _watch_in_thread(database_url, task_id, results)
    said: list[str] = []

    def waiting_for_the_retry() -> bool:
        said.append(capsys.readouterr().out)
        return "waiting for its retry" in "".join(said)

    wait_for(waiting_for_the_retry, what="the watcher waiting for the retry")
    assert results == []
    # Then the retry runs, and the watcher ends with it: exit 0
    drive(service)
    thread.join(timeout=30)
    out = "".join(said) + capsys.readouterr().out
    assert results == [Ending.SUCCESS]
    assert (
        "run 1 ended error: [E_NOT_YET] attempt 1 failed; waiting for its retry (failed runs 1/3)"
        in out.replace(f"task {task_id}: ", "")
    )
    assert "100%  success" in out
    assert [run.status for run in runs_of(database, task_id)] == [
        RunStatus.ERROR,
        RunStatus.SUCCESS,
    ]


def test_watch_exit_codes_say_how_the_task_ended(
    service: TaskQueueService, run_cli: RunCli, database: Database
) -> None:
    # Failed for good: 1, with the last run's error and the failed runs
    failed = service.add_task("tests.handlers.AlwaysFail", max_retries=2)
    drive(service, cycles=2)
    code, _, err = run_cli("watch", str(failed))
    (_, last) = runs_of(database, failed)
    assert code == Ending.ERROR  # 1
    assert err == (
        f"error: run {last.id} ended error: [E_SMTP] the mail server refused; "
        f"task {failed} failed for good (failed runs 2/2)\n"
    )
    # Cancelled before its first run: 4
    later = datetime.now(UTC) + timedelta(days=1)
    cancelled = service.add_task("tests.handlers.Succeed", scheduled_on=later)
    service.cancel_task(cancelled)
    code, _, err = run_cli("watch", str(cancelled))
    assert (code, err) == (Ending.CANCELLED, f"error: task {cancelled} was cancelled\n")
    # Not finished when --timeout passes: 5
    waiting = service.add_task("tests.handlers.Succeed", scheduled_on=later)
    code, out, err = run_cli("watch", str(waiting), "--timeout", "0.2")
    assert code == Ending.UNFINISHED  # 5
    assert out == f"task {waiting}: waiting for its first run\n"
    assert err == f"error: task {waiting} is not finished (not run yet): --timeout passed\n"
    # A last run that timed out, with no retry left: 3 (the rule, over the stored snapshot)
    snapshot = service.get_task(failed)
    assert ending_of(replace(snapshot, last_status=RunStatus.TIMEOUT)) is Ending.TIMEOUT
    assert ending_of(replace(snapshot, task_runs_failed=1)) is None  # a retry is still due


# --- status filters: the contract statuses, and cancelled and never-run from the columns


def test_list_status_filters_include_cancelled_and_never_run(
    service: TaskQueueService, run_cli: RunCli
) -> None:
    # Given a task that succeeded, one that failed for good, one never run and one cancelled
    # before its first run
    later = datetime.now(UTC) + timedelta(days=1)
    succeeded = service.add_task("tests.handlers.Succeed")
    failed = service.add_task("tests.handlers.AlwaysFail", max_retries=1)
    drive(service)
    never_run = service.add_task("tests.handlers.Succeed", scheduled_on=later)
    cancelled = service.add_task("tests.handlers.Succeed", scheduled_on=later)
    service.cancel_task(cancelled)
    # When the list is filtered by each status, then each holds its tasks, newest first
    expected = {
        "success": [succeeded],
        "error": [failed],
        "cancelled": [cancelled],
        "never-run": [cancelled, never_run],
        "running": [],
    }
    for status, ids in expected.items():
        code, out, err = run_cli("list", "--status", status, "--json")
        assert (code, err, _listed(out)) == (0, "", ids), status
    # And an unknown status is refused, naming every filter
    code, out, err = run_cli("list", "--status", "lost")
    assert (code, out) == (2, "")
    assert "'lost' is not one of" in err
    assert "'cancelled', 'never-run'" in err


# --- list: title and duration columns


def test_list_shows_title_and_the_latest_runs_duration(
    service: TaskQueueService, database: Database, run_cli: RunCli
) -> None:
    # Given a finished run that took 12.5 s, a running one started 5 s ago, and no run
    finished = service.add_task("tests.handlers.Succeed", title="nightly\treport")
    drive(service)
    running = service.add_task("tests.handlers.Succeed", create_run=True)
    waiting = service.add_task(
        "tests.handlers.Succeed", scheduled_on=datetime.now(UTC) + timedelta(days=1)
    )
    start = datetime(2026, 1, 31, 8, 0, tzinfo=UTC)
    now = datetime.now(UTC)
    with database.transaction() as connection:
        connection.execute(
            update(TaskRun)
            .where(TaskRun.task_queue_id == finished)
            .values(started_on=start, finished_on=start + timedelta(seconds=12.5))
        )
        connection.execute(
            update(TaskRun)
            .where(TaskRun.task_queue_id == running)
            .values(status=RunStatus.RUNNING, started_on=now - timedelta(seconds=5))
        )
    # When the tasks are listed as a table and as JSON
    code, out, err = run_cli("list")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    # Then the title (on one line) and the latest run's seconds are columns
    assert header.split() == [
        "ID",
        "STATUS",
        "FAILED",
        "HANDLER",
        "TITLE",
        "QUEUED",
        "DURATION",
        "BY",
    ]
    by_id = {row.split()[0]: row for row in rows}
    assert "  nightly report  " in by_id[str(finished)]
    assert "  12.500  " in by_id[str(finished)]
    so_far = by_id[str(running)].split()[-2]
    assert so_far.endswith("+")
    assert 5 <= float(so_far[:-1]) < 60
    assert by_id[str(waiting)].split()[4] == "-"  # no title
    assert by_id[str(waiting)].split()[-2] == "-"  # no run started
    code, out, _ = run_cli("list", "--json")
    tasks = {task["id"]: task for task in json.loads(out)["tasks"]}
    assert (tasks[finished]["title"], tasks[finished]["duration"]) == ("nightly\treport", 12.5)
    assert tasks[finished]["duration_running"] is False
    assert tasks[running]["duration_running"] is True
    assert (tasks[waiting]["title"], tasks[waiting]["duration"]) == (None, None)
