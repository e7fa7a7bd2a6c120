"""Fencing, with real runner processes: a run is never executed by two processes at once.

A runner holds a lease on its run (``TASKQ_HEARTBEAT_TIMEOUT`` after its last stored
heartbeat). Whatever stalls it — SIGSTOP, a handler holding the GIL in one long C call — the
kernel ends its process when the lease runs out, and the overseer hands the run on only once
the holder is proved dead (this machine) or its lease expired by the margin (elsewhere). The
per-run time limit's hard stop comes from the kernel too. Each test runs on SQLite and
PostgreSQL and proves, through the ledger the handlers write, that no two executions of one
task overlapped and that no run was left ``running``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import update

from celery_taskq.core.models import RunnerStatus, RunStatus, TaskRunner
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.lease import process_namespace
from celery_taskq.core.runner.time_limit import HARD_STOP_SLACK
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements.runners import RUNNER_STOPPED_MESSAGE, time_out_runners
from celery_taskq.core.storage.database import Database
from tests.chaos.support import (
    CLI,
    Ledger,
    Overseer,
    ProcessGroups,
    child_env,
    open_runs,
    run_statuses,
    wait_until,
)
from tests.helpers import runners, runs_of

pytestmark = [pytest.mark.slow]

HANDLERS = "tests.chaos.process_handlers."
LEASE = 2.5
"""The runners' lease (``TASKQ_HEARTBEAT_TIMEOUT``) in these tests, in seconds."""
MARGIN = 1.0
"""``TASKQ_LEASE_MARGIN`` in these tests."""
GRACE = 1.0
"""``TASKQ_RUN_TIME_LIMIT_GRACE`` in these tests."""


@dataclass
class Death:
    """When a child process was seen to end (``CLOCK_MONOTONIC`` ns) and how."""

    at_ns: int
    returncode: int


class Watched:
    """A child process whose end is timed by a thread blocked in ``waitpid``."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.death: Death | None = None
        self._thread = threading.Thread(target=self._wait, daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        returncode = self.process.wait()
        self.death = Death(time.monotonic_ns(), returncode)

    def wait_for_death(self, timeout: float) -> Death:
        """The process's end; fails if it is still alive after ``timeout`` seconds."""
        self._thread.join(timeout)
        assert self.death is not None, f"process {self.process.pid} is still alive"
        return self.death


@pytest.fixture
def groups(tmp_path: Path) -> Iterator[ProcessGroups]:
    """The test's child processes, each a process group, all stopped at its end."""
    children = ProcessGroups(tmp_path)
    yield children
    for process in children.processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGCONT)
    children.stop_all(grace=5)


def fenced_env(database_url: str, **extra: str) -> dict[str, str]:
    """A runner's environment with a short lease, margin and grace."""
    return child_env(
        database_url,
        TASKQ_HEARTBEAT_TIMEOUT=str(LEASE),
        TASKQ_LEASE_MARGIN=str(MARGIN),
        TASKQ_RUN_TIME_LIMIT_GRACE=str(GRACE),
        **extra,
    )


def overseer_for(database: Database, database_url: str) -> TaskQueueService:
    """OnProcess as beat runs it on this machine, with the runners' lease and margin."""
    settings = Settings(
        database_url=database_url,
        heartbeat_timeout=LEASE,
        heartbeat_interval=0.3,
        lease_margin=MARGIN,
        retry_backoff_base=0,
    )
    return TaskQueueService(database, settings)


def running_run_of(database: Database, task_id: int) -> int | None:
    """The runner holding the task's newest run while it is ``running``."""
    runs = runs_of(database, task_id)
    if runs and runs[-1].status is RunStatus.RUNNING:
        return runs[-1].task_runner_id
    return None


def assert_fenced(ledger: Ledger, database: Database, holder: Watched) -> None:
    """The holder died by SIGKILL, no run of a task overlapped another, none is left open."""
    death = holder.wait_for_death(timeout=5)
    assert death.returncode == -signal.SIGKILL
    assert ledger.violations({holder.process.pid: death.at_ns}) == []
    assert open_runs(database) == 0


def stop_the_holder_of_a_run(
    database_url: str, tmp_path: Path, groups: ProcessGroups, **env: str
) -> None:
    """A runner started with ``env`` is stopped (SIGSTOP) while it holds a run, past its
    lease; another runner and the overseer work on; then the stopped runner is resumed."""
    ledger = Ledger(tmp_path / "ledger")
    database = Database(database_url)
    service = overseer_for(database, database_url)
    try:
        task_id = service.add_task(
            HANDLERS + "SlowFirst", {"ledger": str(ledger.path), "seconds": 8}, create_run=True
        )
        holder = Watched(
            groups.start([*CLI, "runner"], env=fenced_env(database_url, **env), log_name="a.log")
        )
        wait_until(lambda: ledger.starts_per_task(), timeout=60, what="the run to start")
        # When the holder is stopped past its lease, while another runner and the overseer
        # work on
        os.kill(holder.process.pid, signal.SIGSTOP)
        groups.start([*CLI, "runner"], env=fenced_env(database_url), log_name="b.log")
        with Overseer(service):
            wait_until(
                lambda: run_statuses(database)[task_id] == [RunStatus.TIMEOUT, RunStatus.SUCCESS],
                timeout=60,
                what="the retry to succeed",
            )
        # And is resumed once its run has moved on (if it is still there to resume)
        if holder.death is None:
            os.kill(holder.process.pid, signal.SIGCONT)
            time.sleep(1)
        # Then it never went on with the run: the kernel ended it when its lease ran out
        first, retry = runs_of(database, task_id)
        assert first.error_message == RUNNER_STOPPED_MESSAGE
        assert retry.task_runner_id != first.task_runner_id
        assert_fenced(ledger, database, holder)
    finally:
        database.close()


def test_a_stopped_runner_is_fenced_and_its_run_moves_on(
    database_url: str, tmp_path: Path, groups: ProcessGroups
) -> None:
    """On this machine the overseer finds the holder's process gone before it hands on."""
    stop_the_holder_of_a_run(database_url, tmp_path, groups)


def test_a_stopped_runner_of_another_host_is_fenced_by_its_lease(
    postgresql_schema_url: str, tmp_path: Path, groups: ProcessGroups
) -> None:
    """Of another host, the holder's PID cannot be looked up: the overseer waits for its
    lease and the margin, by when the holder's kernel has ended it."""
    stop_the_holder_of_a_run(postgresql_schema_url, tmp_path, groups, TASKQ_HOSTNAME="elsewhere")


def test_a_handler_holding_the_gil_past_the_lease_is_fenced(
    database_url: str, tmp_path: Path, groups: ProcessGroups
) -> None:
    ledger = Ledger(tmp_path / "ledger")
    database = Database(database_url)
    service = overseer_for(database, database_url)
    try:
        # Given a handler that holds the GIL three times as long as the lease: the runner's
        # heartbeat thread cannot renew it meanwhile
        task_id = service.add_task(
            HANDLERS + "HoldGilFirst",
            {"ledger": str(ledger.path), "seconds": 3 * LEASE},
            create_run=True,
        )
        holder = Watched(
            groups.start([*CLI, "runner"], env=fenced_env(database_url), log_name="a.log")
        )
        wait_until(lambda: ledger.starts_per_task(), timeout=60, what="the run to start")
        groups.start([*CLI, "runner"], env=fenced_env(database_url), log_name="b.log")
        with Overseer(service):
            # Then the holder dies with its lease, its handler never finished, and the retry
            # succeeds on the other runner
            wait_until(
                lambda: (
                    run_statuses(database).get(task_id) == [RunStatus.TIMEOUT, RunStatus.SUCCESS]
                ),
                timeout=60,
                what="the retry to succeed",
            )
        executions = ledger.executions()
        assert executions[0].pid == holder.process.pid
        assert executions[0].ended_ns is None
        assert_fenced(ledger, database, holder)
    finally:
        database.close()


@pytest.mark.parametrize("stall", ["handler holds the GIL", "runner stopped"])
def test_the_time_limit_stops_a_stalled_run_from_outside(
    stall: str, database_url: str, tmp_path: Path, groups: ProcessGroups
) -> None:
    ledger = Ledger(tmp_path / "ledger")
    database = Database(database_url)
    # The lease is long here: what ends the run is its 1 s time limit alone.
    service = TaskQueueService(database, Settings(database_url=database_url))
    try:
        handler = "LimitedHoldGil" if stall == "handler holds the GIL" else "LimitedSleep"
        task_id = service.add_task(
            HANDLERS + handler, {"ledger": str(ledger.path), "seconds": 30}, create_run=True
        )
        holder = Watched(
            groups.start(
                [*CLI, "runner"],
                env=child_env(database_url, TASKQ_RUN_TIME_LIMIT_GRACE=str(GRACE)),
                log_name="a.log",
            )
        )
        wait_until(lambda: ledger.starts_per_task(), timeout=60, what="the run to start")
        if stall == "runner stopped":
            os.kill(holder.process.pid, signal.SIGSTOP)  # never resumed: the kernel ends it
        (started,) = ledger.executions()
        # Then the process is ended at the limit plus its grace, not when the handler is done
        death = holder.wait_for_death(timeout=1 + GRACE + HARD_STOP_SLACK + 15)
        assert death.returncode == -signal.SIGKILL
        assert death.at_ns < started.started_ns + 25 * 10**9  # the handler would take 30 s
        # And the overseer, finding the process gone, ends the run ``timeout``
        assert service.refresh_task_runners_status() != []
        assert run_statuses(database)[task_id] == [RunStatus.TIMEOUT]
        assert ledger.violations({holder.process.pid: death.at_ns}) == []
    finally:
        database.close()


def test_a_runner_that_lost_its_lease_never_goes_on_with_its_run(
    database_url: str, tmp_path: Path, groups: ProcessGroups
) -> None:
    ledger = Ledger(tmp_path / "ledger")
    database = Database(database_url)
    service = TaskQueueService(database, Settings(database_url=database_url))
    try:
        task_id = service.add_task(
            HANDLERS + "Ledgered", {"ledger": str(ledger.path), "seconds": 30}, create_run=True
        )
        holder = Watched(
            groups.start([*CLI, "runner"], env=child_env(database_url), log_name="a.log")
        )
        runner_id = wait_until_value(lambda: running_run_of(database, task_id))
        # Given its runs were taken from it all the same (by hand, as a wrong clock could)
        with database.transaction() as connection:
            time_out_runners(connection, [runner_id], service.clock())
        # Then its next heartbeat finds it out and the process ends at once: the late
        # outcome of the run is never recorded
        death = holder.wait_for_death(timeout=30)
        assert death.returncode == -signal.SIGKILL
        (run,) = runs_of(database, task_id)
        assert (run.status, run.error_message) == (RunStatus.TIMEOUT, RUNNER_STOPPED_MESSAGE)
        assert [row.status for row in runners(database)] == [RunnerStatus.TIMEOUT]
        assert ledger.executions()[0].ended_ns is None
    finally:
        database.close()


def test_a_runner_in_another_pid_namespace_is_not_reaped_while_its_lease_is_fresh(
    database_url: str, tmp_path: Path, groups: ProcessGroups
) -> None:
    """The runner runs under ``unshare --pid`` where the machine allows it (its PID there,
    e.g. 2, names an unrelated process here); otherwise its row is given another namespace
    id and a PID of an unrelated live process by hand, and the same judgement is tested."""
    ledger, release = Ledger(tmp_path / "ledger"), tmp_path / "release"
    database = Database(database_url)
    service = overseer_for(database, database_url)
    try:
        task_id = service.add_task(
            HANDLERS + "WaitForRelease",
            {"ledger": str(ledger.path), "release": str(release)},
            create_run=True,
        )
        runner_command = [*CLI, "runner"]
        unshare = shutil.which("unshare")
        isolated = (
            unshare is not None
            and subprocess.run(
                [unshare, "--pid", "--fork", "--mount-proc", "true"], capture_output=True
            ).returncode
            == 0
        )
        if isolated:
            assert unshare is not None
            runner_command = [unshare, "--pid", "--fork", "--mount-proc", *runner_command]
        groups.start(runner_command, env=fenced_env(database_url), log_name="ns.log")
        runner_id = wait_until_value(lambda: running_run_of(database, task_id))
        (row,) = [row for row in runners(database) if row.id == runner_id]
        if isolated:
            assert row.process_namespace not in (None, process_namespace())
            assert row.process_id != 1  # never the namespace's init, which SIGKILL cannot end
        else:
            with database.transaction() as connection:
                connection.execute(
                    update(TaskRunner)
                    .where(TaskRunner.id == runner_id)
                    .values(process_namespace="pid:[1]", process_id=1)
                )
        # When the overseer of this host ticks for longer than the lease and margin
        with Overseer(service) as overseer:
            time.sleep(LEASE + MARGIN + 1)
        # Then it never judged the runner by a PID that means nothing here
        assert overseer.ticks > 0
        assert overseer.timed_out == []
        release.write_text("go")
        wait_until(
            lambda: run_statuses(database)[task_id] == [RunStatus.SUCCESS],
            timeout=60,
            what="the run to succeed",
        )
        assert ledger.violations() == []
    finally:
        database.close()


def wait_until_value(predicate: object, timeout: float = 60) -> int:
    """Poll ``predicate`` until it returns an int; return it."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if isinstance(value, int):
            return value
        time.sleep(0.05)
    raise AssertionError(f"nothing after {timeout}s")
