"""Every run reaches a final status, however its handler ends, and its runner goes on.

A handler raising any ``BaseException``, an exception that cannot be printed or whose message
holds a lone surrogate, an outcome PostgreSQL would refuse as it is (NUL in a message or a
result, an error code longer than its column), a result over the size limit: each run ends
``error`` with what could be kept, the runner works on to the next run, and nothing is left
``running``. Real runner processes, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import make_url

from celery_taskq.core.exceptions import StorageError, StorageRefusedError
from celery_taskq.core.models import RunnerStatus, RunStatus, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.execution import UNREADABLE_DATA_CODE
from celery_taskq.core.runner.loop import StopReason
from celery_taskq.core.runner.outcome import REFUSED_CODE, RESULT_TOO_LARGE_CODE
from celery_taskq.core.runner.time_limit import TIME_LIMIT_CODE
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.chaos.support import open_runs
from tests.helpers import cli, runners, runs_of, start_runner, wait_for
from tests.outcome_handlers import ENDINGS

HANDLERS = "tests.outcome_handlers."

EXPECTED: dict[str, Callable[[Any], None]] = {}


def expect(ending: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register what a run ending as ``ending`` must have recorded."""

    def register(check: Callable[[Any], None]) -> Callable[[Any], None]:
        EXPECTED[ending] = check
        return check

    return register


@expect("keyboard_interrupt")
def _(run: Any) -> None:
    assert (run.status, run.error_code) == (RunStatus.ERROR, "KeyboardInterrupt")
    assert "KeyboardInterrupt" in run.error_output


@expect("generator_exit")
def _(run: Any) -> None:
    assert (run.status, run.error_code) == (RunStatus.ERROR, "GeneratorExit")


@expect("system_exit")
def _(run: Any) -> None:
    assert (run.status, run.error_code, run.error_message) == (RunStatus.ERROR, "SystemExit", "3")


@expect("base_exception")
def _(run: Any) -> None:
    assert (run.status, run.error_code, run.error_message) == (RunStatus.ERROR, "Fatal", "fatal")


@expect("unprintable")
def _(run: Any) -> None:
    assert (run.status, run.error_code) == (RunStatus.ERROR, "UnprintableError")
    assert run.error_message == "<UnprintableError: str() failed with RuntimeError>"


@expect("surrogate_message")
def _(run: Any) -> None:
    assert (run.status, run.error_code) == (RunStatus.ERROR, "OSError")
    assert run.error_message == "cannot open bad\\udcff.txt"


@expect("nul_message")
def _(run: Any) -> None:
    assert (run.status, run.error_code, run.error_message) == (
        RunStatus.ERROR,
        "E_NUL",
        "nul\ufffdhere",
    )


@expect("long_code")
def _(run: Any) -> None:
    assert run.status is RunStatus.ERROR
    assert len(run.error_code) == 255
    assert run.error_code.startswith("EEEE")
    assert run.error_code.endswith("more characters not kept]")


@expect("deep_error_results")
def _(run: Any) -> None:
    assert (run.status, run.error_code, run.results) == (RunStatus.ERROR, "E_DEEP", None)
    assert "results not stored" in run.error_output


@expect("nul_results")
def _(run: Any) -> None:
    assert run.status is RunStatus.SUCCESS
    assert run.results == {"text": "a\ufffdb", "key\ufffd": ["\\udcfe"]}


@expect("huge_result")
def _(run: Any) -> None:
    assert (run.status, run.error_code, run.results) == (
        RunStatus.ERROR,
        RESULT_TOO_LARGE_CODE,
        None,
    )
    assert "TASKQ_RESULT_MAX_BYTES" in run.error_message


def test_every_ending_is_recorded_and_the_runner_goes_on(
    live: TaskQueueService, database: Database, subprocess_env: dict[str, str]
) -> None:
    assert set(EXPECTED) == {*ENDINGS, "nul_results", "huge_result"}
    # Given one task per awkward ending, then a plain task behind them
    tasks = {
        ending: live.add_task(HANDLERS + "Misbehave", {"ending": ending}, max_retries=1)
        for ending in EXPECTED
    }
    hooks = [
        live.add_task(HANDLERS + name, {"kept": 1}, max_retries=1)
        for name in ("ChangeDataRaisesBaseException", "ChangeDataTooDeep")
    ]
    last = live.add_task("tests.handlers.Succeed", {"n": 1})
    live.process_queue()
    # When one real runner works the queue until it is empty
    finished = cli(subprocess_env, "runner", "--burst")
    # Then it left normally, every run ended as it must, and the plain task ran after them
    assert finished.returncode == 0, finished.stderr
    for ending, task_id in tasks.items():
        (run,) = runs_of(database, task_id)
        assert f"ending as {ending}" in (run.standard_output or ""), ending
        EXPECTED[ending](run)
    for hook in hooks:  # a hook's fault or new data no intake takes keeps the task's data
        (hook_run,) = runs_of(database, hook)
        assert (hook_run.status, hook_run.error_code) == (RunStatus.ERROR, "E_FAILED")
        assert "change_data_on_error failed" in (hook_run.error_output or "")
        assert live.get_task(hook).task_data == {"kept": 1}
    assert runs_of(database, last)[0].status is RunStatus.SUCCESS
    assert open_runs(database) == 0
    assert [row.status for row in runners(database)] == [RunnerStatus.SUCCESS]


def test_a_time_limit_never_stops_a_handler_inside_a_database_write(
    live: TaskQueueService,
    database: Database,
    subprocess_env: dict[str, str],
    database_url: str,
    spawn: list[subprocess.Popen[str]],
) -> None:
    # Given time-limited handlers that write checkpoints in a tight loop, then a plain task
    limited = [
        live.add_task(HANDLERS + "CheckpointsUnderLimit", {"n": n}, max_retries=1) for n in range(6)
    ]
    after = live.add_task("tests.handlers.Succeed", {"n": 2})
    live.process_queue()
    # When a runner works them and stays (a process that ends releases every lock it held)
    runner = start_runner(spawn, subprocess_env)
    wait_for(
        lambda: runs_of(database, after)[0].status is RunStatus.SUCCESS,
        timeout=60,
        what="the plain task to run after the limited ones",
    )
    # Then each run ended at its limit with its last checkpoint stored
    for task_id in limited:
        (run,) = runs_of(database, task_id)
        assert (run.status, run.error_code) == (RunStatus.TIMEOUT, TIME_LIMIT_CODE)
        assert run.checkpoint is not None
        assert run.checkpoint["counter"] > 1
    # And the live runner holds no transaction open: the database takes a writer at once
    if database_url.startswith("sqlite"):
        path = make_url(database_url).database
        assert path is not None
        writer = sqlite3.connect(path, timeout=0.5, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("ROLLBACK")
        finally:
            writer.close()
    else:
        with database.transaction() as connection:
            connection.execute(text("SET LOCAL lock_timeout = '500ms'"))
            connection.execute(update(TaskRun).values(progress_status="x"))
    assert runner.poll() is None


def test_an_outcome_the_database_refuses_is_recorded_as_refused(
    service: TaskQueueService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery_taskq.core.statements import runs

    task_id = service.add_task("tests.handlers.AlwaysFail", max_retries=1)
    service.process_queue()
    runner = service.get_task_runner()
    assert runner is not None
    # Given the database refuses the first outcome written (a refusal, not an outage)
    finish_run = runs.finish_run
    refusals: list[tuple[Any, ...]] = []

    def refuse_once(*args: Any) -> bool:
        if not refusals:
            refusals.append(args)
            raise StorageRefusedError("value too long for type character varying(255)")
        return finish_run(*args)

    monkeypatch.setattr(runs, "finish_run", refuse_once)
    # When the runner records the run
    assert runner.run_once()
    # Then it is not retried as an outage: the run ends error, saying the database refused it
    (run,) = runs_of(database, task_id)
    assert (run.status, run.error_code) == (RunStatus.ERROR, REFUSED_CODE)
    assert "value too long" in (run.error_message or "")
    assert len(refusals) == 1


def test_a_runner_that_crashes_ends_timeout_with_its_run(
    service: TaskQueueService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery_taskq.core.statements import claim, runs

    task_id = service.add_task("tests.handlers.Succeed", {"n": 1})
    service.process_queue()
    runner = service.get_task_runner()
    assert runner is not None

    # Given recording the run fails with a bug (not a database error)
    def broken(*_args: Any) -> bool:
        raise RuntimeError("a bug in recording")

    monkeypatch.setattr(runs, "finish_run", broken)
    monkeypatch.setattr(claim, "finish_success_and_claim", lambda *_args: None)
    # When the loop crashes on it
    with pytest.raises(RuntimeError, match="a bug in recording"):
        runner.run(burst=True)
    # Then the runner row ends timeout, and so does the run it held: the overseer's rules
    # give the task its next run
    assert [row.status for row in runners(database)] == [RunnerStatus.TIMEOUT]
    (run,) = runs_of(database, task_id)
    assert run.status is RunStatus.TIMEOUT
    assert service.process_queue().tasks_given_runs == 1


def test_a_task_whose_stored_data_cannot_be_read_ends_error_without_its_handler(
    tmp_path: Path, sqlite_template: Path
) -> None:
    # Given a task whose TaskData a writer outside celery_taskq left as invalid JSON (SQLite
    # stores any text; PostgreSQL's jsonb refuses it)
    path = tmp_path / "taskq.db"
    shutil.copyfile(sqlite_template, path)
    database = Database(f"sqlite:///{path}")
    try:
        service = TaskQueueService(database, Settings(database_url=f"sqlite:///{path}"))
        task_id = service.add_task("tests.handlers.Succeed", {"n": 1}, max_retries=1)
        with database.transaction() as connection:
            connection.execute(
                text("""UPDATE "TaskQueue" SET "TaskData" = '{"n": ' WHERE "Id" = :id"""),
                {"id": task_id},
            )
        service.process_queue()
        runner = service.get_task_runner()
        assert runner is not None
        # When a runner takes its run
        assert runner.run_once()
        # Then the handler never got the marker text: the run ends error, saying why
        (run,) = runs_of(database, task_id)
        assert (run.status, run.error_code) == (RunStatus.ERROR, UNREADABLE_DATA_CODE)
        assert run.results is None
    finally:
        database.close()


def test_a_stop_request_ends_the_wait_for_an_unreachable_database(
    service: TaskQueueService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = service.add_task("tests.handlers.Succeed", {"n": 1})
    service.process_queue()
    runner = service.get_task_runner()
    assert runner is not None
    # Given the database cannot be reached to record the run (an outage, retried)
    attempts: list[float] = []

    def unreachable(*_args: Any) -> bool:
        attempts.append(time.monotonic())
        if len(attempts) == 2:
            runner.stop()  # SIGTERM's handler does the same
        raise StorageError("could not connect to server")

    monkeypatch.setattr(runner, "_write", unreachable)
    # When the runner is asked to stop while it waits
    reason = runner.run(burst=True)
    # Then it gives up at the first attempt that fails after the request, instead of waiting
    # for ever, and its run is left to the overseer's rules: the runner and the run end timeout
    assert reason is StopReason.STOP_REQUESTED
    assert len(attempts) == 2
    assert [row.status for row in runners(database)] == [RunnerStatus.TIMEOUT]
    assert runs_of(database, task_id)[0].status is RunStatus.TIMEOUT


def test_a_host_going_down_while_the_runner_is_idle_is_a_stop_not_a_crash(
    service: TaskQueueService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = service.get_task_runner()
    assert runner is not None

    # Given the host process raises SystemExit into the idle loop (a Celery pool process
    # told to exit does)
    def exit_now(_listener: object) -> None:
        raise SystemExit(0)

    monkeypatch.setattr(runner, "_wait_for_work", exit_now)
    with pytest.raises(SystemExit):
        runner.run()
    # Then the runner, which held no run, ends success
    assert [row.status for row in runners(database)] == [RunnerStatus.SUCCESS]
