"""The overseer's judgement of runners, with real processes: a reused PID does not keep a dead
runner alive, and a runner of another host lives exactly as long as its heartbeat."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import update

from celery_taskq.core.models import RunnerStatus, RunStatus, TaskRunner
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.liveness import PROCESS_START_TOLERANCE_SECONDS
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.chaos.support import (
    CLI,
    Ledger,
    ProcessGroups,
    child_env,
    run_statuses,
    sigkill,
    wait_until,
)
from tests.helpers import runners, runs_of

pytestmark = [pytest.mark.slow, pytest.mark.postgresql]

WAIT_FOR_RELEASE = "tests.chaos.process_handlers.WaitForRelease"


def runner_of_run(database: Database, task_id: int) -> int | None:
    """The runner holding the task's latest run while it is ``running``."""
    runs = runs_of(database, task_id)
    if runs and runs[-1].status is RunStatus.RUNNING:
        return runs[-1].task_runner_id
    return None


def test_dead_runner_whose_pid_was_reused_is_timed_out(
    postgresql_schema_url: str, tmp_path: Path
) -> None:
    """A runner row whose PID now belongs to a live process started later is timed out; a
    live runner (same PID, same start time) is not."""
    ledger, release = Ledger(tmp_path / "ledger"), tmp_path / "release"
    database = Database(postgresql_schema_url)
    service = TaskQueueService(database, Settings(database_url=postgresql_schema_url))
    groups = ProcessGroups(tmp_path)
    env = child_env(postgresql_schema_url)
    try:
        task_id = service.add_task(
            WAIT_FOR_RELEASE,
            {"ledger": str(ledger.path), "release": str(release)},
            create_run=True,
        )
        doomed = groups.start([*CLI, "runner"], env=env, log_name="doomed.log")
        wait_until(lambda: runner_of_run(database, task_id), timeout=60, what="the run to start")
        doomed_id = runner_of_run(database, task_id)
        killed_at = {doomed.pid: sigkill(doomed.pid)}
        doomed.wait(timeout=30)
        # Given its PID now belongs to another live process, which started later
        stand_in = groups.start(
            [sys.executable, "-c", "import time; time.sleep(120)"], env=env, log_name="other.log"
        )
        with database.transaction() as connection:
            connection.execute(
                update(TaskRunner).where(TaskRunner.id == doomed_id).values(process_id=stand_in.pid)
            )
        (row,) = [row for row in runners(database) if row.id == doomed_id]
        assert row.process_create_time is not None
        stand_in_started = psutil.Process(stand_in.pid).create_time()
        assert stand_in_started - row.process_create_time > PROCESS_START_TOLERANCE_SECONDS
        # And a live runner beside it
        alive = groups.start([*CLI, "runner"], env=env, log_name="alive.log")
        wait_until(
            lambda: any(row.process_id == alive.pid for row in runners(database)),
            timeout=60,
            what="the live runner to register",
        )
        # When the overseer runs (a real `celery-taskq process`), its heartbeat still fresh
        overseer = subprocess.run(
            [*CLI, "process"], env=env, capture_output=True, text=True, timeout=120
        )
        assert overseer.returncode == 0, overseer.stderr
        assert "timed out runners: 1" in overseer.stdout
        # Then the dead runner and its run are timed out, the live runner is left alone
        statuses = {row.id: row.status for row in runners(database)}
        alive_id = next(row.id for row in runners(database) if row.process_id == alive.pid)
        assert statuses == {doomed_id: RunnerStatus.TIMEOUT, alive_id: RunnerStatus.RUNNING}
        assert stand_in.poll() is None
        # And the task's retry runs on the live runner
        wait_until(
            lambda: runner_of_run(database, task_id) == alive_id,
            timeout=60,
            what="the retry to start on the live runner",
        )
        release.write_text("go")
        wait_until(
            lambda: run_statuses(database)[task_id] == [RunStatus.TIMEOUT, RunStatus.SUCCESS],
            timeout=60,
            what="the retry to succeed",
        )
        assert ledger.violations(killed_at) == []
    finally:
        groups.stop_all()
        database.close()


def test_runner_of_another_host_lives_as_long_as_its_heartbeat(
    postgresql_schema_url: str, tmp_path: Path
) -> None:
    """Runners registered on another host are judged by heartbeat alone: a killed one (its PID
    gone here) stays ``running`` while its lease is current; a live one is never timed out
    while it beats, and is once it is frozen (SIGSTOP) past its lease and the margin — by when
    its own kernel has ended it, so it never goes on with its run."""
    heartbeat_timeout = 4.0
    margin = 1.0
    ledger = Ledger(tmp_path / "ledger")
    releases = [tmp_path / "release-1", tmp_path / "release-2"]
    database = Database(postgresql_schema_url)
    overseer = TaskQueueService(
        database,
        Settings(
            database_url=postgresql_schema_url,
            hostname=socket.gethostname(),
            heartbeat_interval=0.3,
            heartbeat_timeout=heartbeat_timeout,
            lease_margin=margin,
        ),
    )
    groups = ProcessGroups(tmp_path)
    env = child_env(
        postgresql_schema_url,
        TASKQ_HOSTNAME="far-host",
        TASKQ_HEARTBEAT_TIMEOUT=str(heartbeat_timeout),
    )
    try:
        task_ids = [
            overseer.add_task(
                WAIT_FOR_RELEASE,
                {"ledger": str(ledger.path), "release": str(release)},
                create_run=True,
            )
            for release in releases
        ]
        killed = groups.start([*CLI, "runner"], env=env, log_name="killed.log")
        wait_until(lambda: runner_of_run(database, task_ids[0]), timeout=60, what="a run")
        frozen = groups.start([*CLI, "runner"], env=env, log_name="frozen.log")
        wait_until(lambda: runner_of_run(database, task_ids[1]), timeout=60, what="a run")
        killed_id, frozen_id = (runner_of_run(database, task_id) for task_id in task_ids)
        assert killed_id is not None
        assert frozen_id is not None
        assert {row.hostname for row in runners(database)} == {"far-host"}

        def tick_until_timed_out(runner_id: int, since: float) -> float:
            """Tick the overseer; return when (seconds after ``since``) it timed the runner
            out. ``frozen`` must never be timed out before ``killed`` is."""
            while True:
                timed_out = overseer.refresh_task_runners_status()
                elapsed = time.monotonic() - since
                if frozen_id in timed_out and runner_id != frozen_id:
                    raise AssertionError("the live runner of the other host was timed out")
                if runner_id in timed_out:
                    return elapsed
                assert elapsed < 60, f"runner {runner_id} was never timed out"
                time.sleep(0.2)

        # When a runner of the other host dies (here its PID is gone at once)
        killed_at = {killed.pid: sigkill(killed.pid)}
        killed.wait(timeout=30)
        # Then it is timed out only once its lease and the margin have passed
        elapsed = tick_until_timed_out(killed_id, time.monotonic())
        assert elapsed >= heartbeat_timeout + margin - 1.0, elapsed
        # And the live one, beating all along, was not (it has lived past the timeout)
        assert {row.id: row.status for row in runners(database)}[frozen_id] is (
            RunnerStatus.RUNNING
        )
        # When the live one freezes, its heartbeat goes stale and it is timed out too
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            elapsed = tick_until_timed_out(frozen_id, time.monotonic())
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        assert elapsed >= heartbeat_timeout + margin - 1.0, elapsed
        assert [run.status for run in runs_of(database, task_ids[1])] == [RunStatus.TIMEOUT]
        # And it never went on with its run: its kernel ended it, stopped, with its lease
        releases[1].write_text("go")
        assert frozen.wait(timeout=30) == -signal.SIGKILL
        killed_at[frozen.pid] = time.monotonic_ns()
        assert [run.status for run in runs_of(database, task_ids[1])] == [RunStatus.TIMEOUT]
        assert [e.ended_ns for e in ledger.executions() if e.pid == frozen.pid] == [None]
        assert ledger.violations(killed_at) == []
    finally:
        groups.stop_all()
        database.close()
