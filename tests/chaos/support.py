"""Shared helpers of the chaos tests.

- :class:`ProcessGroups` and :class:`GroupedCeleryStack` start every child in a process group
  of its own and kill whole groups at the end, so no runner, worker or pool child outlives a
  test, even a failed one.
- :class:`Ledger` reads what :mod:`tests.chaos.process_handlers` wrote and finds two runs of
  one task executing at once.
- :class:`Overseer` is OnProcess on a timer in a thread of the test, surviving database
  outages.
- :func:`private_redis` and :func:`private_postgresql` start servers of the test's own, which
  it may stop and start (never the session's shared ones).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import port_for
import psutil
import pytest
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_redis.executor import RedisExecutor
from sqlalchemy import func, select

from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import upgrade_database
from tests.celery_stack import CeleryStack
from tests.conftest import PROJECT_ROOT
from tests.fixtures.postgres import (
    ServerUnavailableError,
    plan_server,
    private_server,
    skip_or_fail,
    sqlalchemy_url,
)

CLI = (sys.executable, "-m", "celery_taskq")
"""The command line, as a child process runs it."""


def child_env(database_url: str, **extra: str) -> dict[str, str]:
    """Environment of a child process: the database, quick polling and heartbeats, and the
    project root on ``PYTHONPATH`` (so ``tests.chaos.process_handlers`` imports)."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
        ),
        "TASKQ_DATABASE_URL": database_url,
        "TASKQ_POLL_INTERVAL": "0.05",
        "TASKQ_HEARTBEAT_INTERVAL": "0.3",
        "TASKQ_RETRY_BACKOFF_BASE": "0",
        **extra,
    }


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def stop_groups(processes: Sequence[subprocess.Popen[bytes]], grace: float = 20.0) -> None:
    """SIGTERM each process's group, wait up to ``grace`` seconds, then SIGKILL the groups.

    The final SIGKILL also reaches group members whose leader is already gone (a Celery pool
    child whose worker was killed, say); every leader is reaped.
    """
    for process in processes:
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    for process in processes:
        _signal_group(process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)


def sigkill(pid: int) -> int:
    """SIGKILL ``pid``; return the ``CLOCK_MONOTONIC`` time (ns) just before the signal."""
    killed_at = time.monotonic_ns()
    os.kill(pid, signal.SIGKILL)
    return killed_at


class ProcessGroups:
    """Children of one test, each the leader of a new process group, logging to files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: Sequence[str], *, env: Mapping[str, str], log_name: str
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` in a new session, its output appended to ``log_name``."""
        with (self.directory / log_name).open("ab") as log:
            process = subprocess.Popen(
                list(args),
                env=dict(env),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        """A child's output so far."""
        return (self.directory / name).read_text(errors="replace")

    def stop_all(self, grace: float = 20.0) -> None:
        """Stop every child and its group (see :func:`stop_groups`)."""
        stop_groups(self.processes, grace)


class GroupedCeleryStack(CeleryStack):
    """:class:`tests.celery_stack.CeleryStack` whose processes each lead a process group."""

    def start(self, *args: str, log_name: str) -> subprocess.Popen[bytes]:
        """Start ``python *args`` in a new session, logging to ``log_name``."""
        with (self.directory / log_name).open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, *args],
                env=self.env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """Stop every process and its group (pool children included)."""
        stop_groups(self.processes, grace=30.0)


def is_child_of(pid: int, parent: int) -> bool:
    """Whether ``pid`` is a live process whose parent is ``parent``."""
    try:
        return psutil.Process(pid).ppid() == parent
    except psutil.Error:
        return False


# -- the ledger --------------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """One run of a task as its handler lived it: from its start to its end (or its kill)."""

    task_id: int
    run_id: int
    pid: int
    started_ns: int
    ended_ns: int | None


class Ledger:
    """The file the chaos handlers append ``start``/``end`` lines to."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def executions(self) -> list[Execution]:
        """Every run the handlers started, with its end time if they recorded one."""
        starts: dict[int, tuple[int, int, int]] = {}
        ends: dict[int, int] = {}
        if not self.path.exists():
            return []
        for line in self.path.read_text().splitlines():
            event, task, run, pid, at = line.split()
            if event == "start":
                assert int(run) not in starts, f"run {run} started twice"
                starts[int(run)] = (int(task), int(pid), int(at))
            else:
                ends[int(run)] = int(at)
        return [
            Execution(task, run, pid, started, ends.get(run))
            for run, (task, pid, started) in sorted(starts.items())
        ]

    def violations(self, killed_at: Mapping[int, int] | None = None) -> list[str]:
        """What contradicts "a task never has two runs executing at once".

        A run without an ``end`` line must belong to a process the test killed (``killed_at``:
        PID → time of the SIGKILL); it is taken to have lasted until the kill. Runs of one
        task must not overlap in time.
        """
        killed_at = killed_at or {}
        problems: list[str] = []
        per_task: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        for execution in self.executions():
            end = execution.ended_ns
            if end is None:
                end = killed_at.get(execution.pid)
                if end is None or end < execution.started_ns:
                    problems.append(
                        f"run {execution.run_id} of task {execution.task_id} never ended "
                        f"and its process {execution.pid} was not killed by the test"
                    )
                    continue
            per_task[execution.task_id].append((execution.started_ns, end, execution.run_id))
        for task_id, spans in per_task.items():
            spans.sort()
            latest_end, latest_run = spans[0][1], spans[0][2]
            for started, ended, run_id in spans[1:]:
                if started < latest_end:
                    problems.append(
                        f"task {task_id}: run {run_id} started while run {latest_run} "
                        f"was still executing ({(latest_end - started) / 1e6:.1f} ms overlap)"
                    )
                if ended > latest_end:
                    latest_end, latest_run = ended, run_id
        return problems

    def starts_per_task(self) -> dict[int, int]:
        """How many runs each task's handler started."""
        counts: dict[int, int] = defaultdict(int)
        for execution in self.executions():
            counts[execution.task_id] += 1
        return dict(counts)


# -- the overseer ------------------------------------------------------------------------


class Overseer:
    """OnProcess every ``interval`` seconds in a thread; database errors are counted, not
    raised, so that it carries on through an outage as beat would."""

    def __init__(self, service: TaskQueueService, interval: float = 0.3) -> None:
        self.service = service
        self.interval = interval
        self.ticks = 0
        self.failures = 0
        self.timed_out: list[int] = []
        self.last_error: BaseException | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True, name="chaos-overseer")

    def __enter__(self) -> Overseer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=60)

    def _work(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                report = self.service.process_queue()
            except Exception as exc:  # an outage: beat's next tick tries again
                self.failures += 1
                self.last_error = exc
                continue
            self.ticks += 1
            self.timed_out.extend(report.timed_out_runners)


# -- private servers ---------------------------------------------------------------------


def _short_directory(prefix: str) -> Path:
    # Redis puts a Unix socket in its directory, and socket paths must stay under ~100 bytes:
    # the temporary directory itself, not pytest's deeper tmp_path.
    return Path(tempfile.mkdtemp(prefix=prefix))


@contextlib.contextmanager
def private_redis() -> Iterator[RedisExecutor]:
    """A ``redis-server`` of the test's own on a free port, without persistence; its
    ``stop()``/``start()`` restart it empty on the same port. Stopped on exit."""
    executable = shutil.which("redis-server")
    if executable is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    directory = _short_directory("taskq-redis-")
    server = RedisExecutor(
        executable=executable,
        databases=4,
        redis_timeout=30,
        loglevel="notice",
        host="127.0.0.1",
        port=port_for.select_random(),
        datadir=directory,
        startup_timeout=60,
    )
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def private_postgresql(config: pytest.Config) -> Iterator[tuple[PostgreSQLExecutor, str]]:
    """A PostgreSQL cluster of the test's own, migrated, and the SQLAlchemy URL of its
    database; the test may ``stop()`` and ``start()`` it (data kept). Skips (fails under CI)
    when no server can be started; stopped and deleted on exit."""
    try:
        plan = plan_server(config)
    except ServerUnavailableError as exc:
        skip_or_fail(str(exc))
    with private_server(plan, prefix="taskq-chaos-pg-") as server:
        url = sqlalchemy_url(
            host=server.host,
            port=server.port,
            user=server.user,
            dbname="postgres",
            password=server.password,
        )
        upgrade_database(url)
        yield server, url


# -- table queries -----------------------------------------------------------------------


def run_statuses(database: Database) -> dict[int, list[RunStatus]]:
    """Each task's run statuses, oldest run first."""
    per_task: dict[int, list[RunStatus]] = defaultdict(list)
    with database.transaction(read_only=True) as connection:
        for task_id, status in connection.execute(
            select(TaskRun.task_queue_id, TaskRun.status).order_by(TaskRun.id)
        ):
            per_task[task_id].append(status)
    return dict(per_task)


def count_tasks_with(database: Database, status: RunStatus) -> int:
    """Tasks whose ``LastStatus`` is ``status``."""
    with database.transaction(read_only=True) as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(TaskQueue).where(TaskQueue.last_status == status)
            ).scalar_one()
        )


def open_runs(database: Database) -> int:
    """Runs ``scheduled`` or ``running``."""
    with database.transaction(read_only=True) as connection:
        return int(
            connection.execute(
                select(func.count())
                .select_from(TaskRun)
                .where(TaskRun.status.in_([RunStatus.SCHEDULED, RunStatus.RUNNING]))
            ).scalar_one()
        )


def wait_until(
    predicate: Callable[[], object], *, timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
