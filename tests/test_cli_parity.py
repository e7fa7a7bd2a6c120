"""The command line's parity with the dashboard (issue 18, point 6): times as durations, one
error prefix, ``watch`` through retries, status filters, ``show --json``, ``list`` columns and
``top``. In-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from celery_taskq.cli import cli, main
from celery_taskq.cli.top import CLEAR_SCREEN
from celery_taskq.cli.watch import Ending, ending_of
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.storage.database import Database
from tests.conftest import CLI
from tests.helpers import count, drive, insert_task_row, runs_of, task_row, wait_for
from tests.test_cli import RunCli, run_cli

__all__ = ["run_cli"]  # test_cli's fixture: the command in-process on the test database


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


def test_options_in_seconds_take_durations_too(service: TaskQueueService, run_cli: RunCli) -> None:
    # Given a task due tomorrow: watching it ends at --timeout, given as a duration
    later = datetime.now(UTC) + timedelta(days=1)
    waiting = service.add_task("tests.handlers.Succeed", scheduled_on=later)
    code, _, err = run_cli("watch", str(waiting), "--timeout", "1s")
    assert code == Ending.UNFINISHED
    assert "--timeout passed" in err
    # The health thresholds, prune's pause and top's interval read durations as seconds
    code, out, _ = run_cli("health", "--json", "--max-due-age", "1d", "--skip", "beat")
    checks = {check["name"]: check["state"] for check in json.loads(out)["checks"]}
    assert checks["due"] == "ok"
    assert run_cli("prune", "--older-than", "30d", "--dry-run", "--pause", "1m")[0] == 0
    assert run_cli("top", "--once", "--interval", "1m")[0] == 0
    added = run_cli("schedules", "add", "often", "tests.handlers.Succeed", "--every", "1h30m")
    assert added[0] == 0
    code, out, _ = run_cli("schedules", "show", "often", "--json")
    assert json.loads(out)["interval"] == 5400
    # And a number or duration that is neither is refused with what is wrong
    code, out, err = run_cli("prune", "--older-than", "30d", "--pause", "5x")
    assert (code, out) == (2, "")
    assert (
        "error: Invalid value for '--pause': '5x' is neither a number of seconds nor a duration "
        "like 90s, 5m or 1h30m"
    ) in err
    code, _, err = run_cli("health", "--max-tick-age", "0s")
    assert code == 2
    assert "error: Invalid value for '--max-tick-age': 0.0 is not in the range x>0" in err


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


# --- top: a live summary


def test_top_once_prints_due_work_running_runs_failures_and_runners(
    live: TaskQueueService, database: Database, run_cli: RunCli
) -> None:
    # Given (on the wall clock) a task that failed for good, a run working for 30 s, a run due
    # on the "reports" queue, and a registered runner
    failed = live.add_task("tests.handlers.AlwaysFail", max_retries=1)
    drive(live)
    working = live.add_task("tests.handlers.Succeed", create_run=True)
    due = live.add_task("tests.handlers.Succeed", queue="reports", create_run=True)
    (working_run,) = runs_of(database, working)
    with database.transaction() as connection:
        connection.execute(
            update(TaskRun)
            .where(TaskRun.id == working_run.id)
            .values(
                status=RunStatus.RUNNING,
                percents_completed=40,
                started_on=datetime.now(UTC) - timedelta(seconds=30),
            )
        )
    runner = live.get_task_runner()
    assert runner is not None
    # When one frame is asked for
    code, out, err = run_cli("top", "--once")
    # Then it holds each part, and is one plain frame (no screen control)
    assert (code, err) == (0, "")
    assert "\x1b" not in out
    assert "(one frame)" in out.splitlines()[0]
    assert "due runs: 1 (oldest waited " in out
    assert "running: 1" in out
    sections = out.split("\n\n")
    queues = next(part for part in sections if part.startswith("due work per queue"))
    assert queues.splitlines()[2].split()[:2] == ["reports", "1"]
    running = next(part for part in sections if part.startswith("running runs (1)"))
    cells = running.splitlines()[2].split()
    assert cells[:5] == [
        str(working_run.id),
        str(working),
        "tests.handlers.Succeed",
        "default",
        "40%",
    ]
    assert 30 <= float(cells[-1]) < 120
    failures = next(part for part in sections if part.startswith("failures since"))
    (failed_run,) = runs_of(database, failed)
    assert failures.splitlines()[2].split()[:4] == [
        str(failed_run.id),
        str(failed),
        "tests.handlers.AlwaysFail",
        "error",
    ]
    assert "E_SMTP  the mail server refused" in failures
    runners = next(part for part in sections if part.startswith("runners"))
    live_rows = [line.split() for line in runners.splitlines()[2:]]
    assert [row[0] for row in live_rows] == [str(runner.task_runner_id)]
    assert live_rows[0][4] == "running"
    assert due not in (failed, working)


def test_top_draws_frames_until_ctrl_c_and_exits_0(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a top drawing a frame every 0.1 s to a pipe, and Ctrl-C pressed after two frames
    main_thread = threading.get_ident()
    printed: list[str] = []

    def press_ctrl_c() -> None:
        def two_frames() -> bool:
            printed.append(capsys.readouterr().out)
            return "".join(printed).count("celery-taskq top  ") >= 2

        wait_for(two_frames, what="two frames")
        signal.pthread_kill(main_thread, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupter = threading.Thread(target=press_ctrl_c, daemon=True)
    try:
        interrupter.start()
        code = main(["--database-url", database_url, "top", "--interval", "0.1"])
    finally:
        signal.signal(signal.SIGINT, previous)
    interrupter.join(timeout=10)
    # Then it exits 0, having printed plain frames one after another, each with its parts
    out = "".join(printed) + capsys.readouterr().out
    assert code == 0
    assert out.count("celery-taskq top  ") >= 2
    assert out.count("(every 0.1 s, Ctrl-C quits)") == out.count("celery-taskq top  ")
    assert "\n\nrunners\n  (none)\n" in out
    assert "\x1b" not in out


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the drawing is the point
def test_top_redraws_a_terminal_in_place_and_ctrl_c_exits_0(
    subprocess_env: dict[str, str],
) -> None:
    # Given top in a real process whose output is a terminal (a pseudo-terminal)
    controller, terminal = pty.openpty()
    child = subprocess.Popen(
        [*CLI, "top", "--interval", "0.2"],
        env=subprocess_env,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(terminal)
    shown = b""
    try:
        # When it has drawn two frames, and Ctrl-C is pressed
        deadline = time.monotonic() + 60
        while shown.count(CLEAR_SCREEN.encode()) < 2 and time.monotonic() < deadline:
            if select.select([controller], [], [], 1.0)[0]:
                shown += os.read(controller, 65536)
        child.send_signal(signal.SIGINT)
        code = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        os.close(controller)
        assert child.stderr is not None
        error = child.stderr.read()
        child.stderr.close()
    # Then each frame cleared the screen and drew itself from the top left; the exit is 0
    assert (code, error) == (0, "")
    frames = shown.decode().split(CLEAR_SCREEN)[1:]
    assert len(frames) >= 2
    assert all(frame.startswith("celery-taskq top  ") for frame in frames)


# --- show: the Celery task id, and the dashboard and Flower links


SHOW_JSON_KEYS = {
    "id", "handler", "title", "data", "scheduled_on", "queued_on", "queued_by", "last_status",
    "max_retries", "task_runs_failed", "unique_key", "cancel_requested_on", "celery_task_id",
    "celery_parent_id", "celery_root_id", "celery_group_id", "celery_chord_id",
    "resent_from_id", "queue", "priority", "relations", "links", "runs",
}  # fmt: skip
SHOW_JSON_RUN_KEYS = {
    "id", "task_id", "status", "started_on", "finished_on", "percents_completed",
    "progress_step", "progress_steps", "progress_status", "results", "checkpoint",
    "standard_output", "error_output", "error_code", "error_message", "task_runner_id",
    "celery_task_id", "attempt", "eager", "flower_task_url",
}  # fmt: skip
"""``show --json``'s documented shape (docs/cli.md): a key is only ever added."""


def test_show_gives_the_celery_id_and_links_when_configured(
    service: TaskQueueService,
    database: Database,
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a native task and a handler task whose run went through a Celery runner task
    native = insert_task_row(database, "celery:shop.charge", datetime.now(UTC))
    handler_task = service.add_task("tests.handlers.Succeed")
    drive(service)
    (run,) = runs_of(database, handler_task)
    with database.transaction() as connection:
        connection.execute(
            update(TaskQueue).where(TaskQueue.id == native).values(celery_task_id="c-1/x")
        )
        connection.execute(
            update(TaskRun).where(TaskRun.id == run.id).values(celery_task_id="runner-7")
        )
    # Without links configured: the Celery ids, no links
    code, out, err = run_cli("show", str(native))
    assert (code, err) == (0, "")
    assert "  celery task id: c-1/x\n" in out
    assert "dashboard:" not in out
    assert "flower:" not in out
    code, out, _ = run_cli("show", str(handler_task))
    assert "  celery task id: -\n" in out  # a handler task: each run shows its own
    assert "    celery task id: runner-7\n" in out
    document = json.loads(run_cli("show", str(handler_task), "--json")[1])
    assert set(document) == SHOW_JSON_KEYS
    assert set(document["runs"][0]) == SHOW_JSON_RUN_KEYS
    assert document["links"] == {"dashboard": None, "flower": None}
    assert document["runs"][0]["flower_task_url"] is None
    # With the dashboard's and Flower's addresses configured: the links, in text and JSON
    monkeypatch.setenv("TASKQ_DASHBOARD_URL", "https://taskq.example/ops/")
    monkeypatch.setenv("TASKQ_FLOWER_URL", "http://flower:5555")
    code, out, _ = run_cli("show", str(native))
    assert f"  dashboard: https://taskq.example/ops/tasks/{native}\n" in out
    assert "  flower: http://flower:5555/task/c-1%2Fx\n" in out
    document = json.loads(run_cli("show", str(native), "--json")[1])
    assert (document["id"], document["celery_task_id"]) == (native, "c-1/x")
    assert document["links"] == {
        "dashboard": f"https://taskq.example/ops/tasks/{native}",
        "flower": "http://flower:5555/task/c-1%2Fx",
    }
    document = json.loads(run_cli("show", str(handler_task), "--json")[1])
    assert document["links"]["flower"] is None  # its own id is its runs'
    assert document["runs"][0]["celery_task_id"] == "runner-7"
    assert document["runs"][0]["flower_task_url"] == "http://flower:5555/task/runner-7"
    code, out, _ = run_cli("show", str(handler_task))
    assert "    flower: http://flower:5555/task/runner-7\n" in out
