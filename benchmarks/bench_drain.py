"""Enqueue rate, drain rate and idle latency: plain Celery vs celery_taskq, on this machine.

    .venv/bin/python benchmarks/bench_drain.py [--tasks N] [--repeat R]

Measured side by side in one run (each repetition runs every system once, in turn):

``plain``
    plain Celery on Redis: a no-op ``@app.task`` (benchmarks/plain_app.py) drained by
    ``celery worker -P prefork -c 2``, no result backend.
``postgresql``
    celery_taskq on PostgreSQL + Redis: ``enqueue()`` of a no-op handler
    (benchmarks/handlers.py), drained by ``celery-taskq worker -c 2 --beat``.
``sqlite``
    celery_taskq on the embedded default: SQLite + kombu's SQL broker, same worker.

For each: the enqueue rate (one call at a time, no worker running), the drain rate (N queued
jobs; jobs/s from the first job's start to the last job's finish), the wall time from starting
the worker to the last finish, and then, on the same (now idle) worker, the latency from
enqueue to start of sequential jobs with a short random gap. Results go to
benchmarks/RESULTS.md.

The script starts its own redis-server and PostgreSQL (as tests/fixtures/postgres.py does: a
private cluster through pytest-postgresql's executor, run as the ``postgres`` account when
this runs as root) on free ports on 127.0.0.1, and stops them, the workers and every process
they forked when it ends. Every wait has a deadline.
"""

# ruff: noqa: E402 - the project root must be on sys.path before its packages are imported

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import port_for
import psutil
import psycopg
import redis
from pytest_postgresql.executors import PostgreSQLExecutor
from sqlalchemy import func, select, text

from benchmarks import plain_app
from celery_taskq import api
from celery_taskq.core.models import RunnerRole, TaskQueue, TaskRun, TaskRunner
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import upgrade_database
from tests.fixtures.postgres import (
    PG_CTL_AS_POSTGRES,
    REAL_PG_CTL_ENV,
    SERVER_ACCOUNT_ENV,
    SERVER_HOST,
    SERVER_OPTIONS,
    ServerUnavailableError,
    _searchable_by,
    _server_account,
    sqlalchemy_url,
)

T = TypeVar("T")

HOST = SERVER_HOST  # 127.0.0.1: no traffic leaves the machine
HANDLER = "benchmarks.handlers.Noop"
SYSTEMS = ("plain", "postgresql", "sqlite")
SYSTEM_TITLES = {
    "plain": "plain Celery + Redis (no-op `@app.task`, prefork)",
    "postgresql": "celery_taskq on PostgreSQL + Redis",
    "sqlite": "celery_taskq embedded default (SQLite + kombu SQL broker)",
}
PLAIN_REDIS_DB = 0
TASKQ_REDIS_DB = 1
POLL = 0.05
"""Seconds between polls of a counter while waiting."""
LATENCY_POLL = 0.005
"""Seconds between polls of Redis while waiting for one plain latency job to start."""
TASKQ_LATENCY_POLL = 0.02
"""Seconds between polls of the database while waiting for one celery_taskq latency job
(the latency itself is read from the rows' timestamps, so this only sets the pace)."""
LATENCY_GAP = (0.05, 0.25)
"""Uniform random pause (seconds) between two latency jobs, so they do not lock in phase
with a runner's poll interval."""
STOP_TIMEOUT = 60.0
"""Seconds a worker gets to shut down warm before it and its children are killed."""
DURABLE_OPTIONS = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
"""PostgreSQL's own defaults, stated: the executor starts the server with ``-F`` (fsync off)."""


class BenchmarkError(Exception):
    """A run did not complete; the message says what and where its log is."""


# -- processes --------------------------------------------------------------------------------


@dataclass
class Children:
    """Processes this script started; each is stopped (and its descendants killed) at exit."""

    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, args: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as output:
            process = subprocess.Popen(  # noqa: S603 - our own argv
                args,
                env=env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the script reaches us, not them
            )
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (warm shutdown), then SIGKILL; then kill any descendant still alive."""
        descendants: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(process.pid).children(recursive=True)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        for child in descendants:  # is_running() also checks it is the same process
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
        with contextlib.suppress(psutil.Error):
            psutil.wait_procs(descendants, timeout=10)
        with contextlib.suppress(ValueError):
            self.processes.remove(process)

    def stop_all(self) -> None:
        for process in list(self.processes):
            self.stop(process, timeout=15)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = POLL,
    alive: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> T:
    """Poll ``predicate`` until it returns something other than ``None``/``False``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value is not None and value is not False:
            return value
        if alive is not None and alive.poll() is not None:
            raise BenchmarkError(
                f"{what}: the process exited with {alive.returncode}; its log ({log}):\n"
                f"{log_tail(log) if log else ''}"
            )
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f"; end of {log}:\n{log_tail(log)}" if log else "")
            )
        time.sleep(interval)


def child_env(**extra: str) -> dict[str, str]:
    python_path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": python_path, **extra}


# -- servers ----------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    def url(self, db: int) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def flush(self) -> None:
        client = redis.Redis(host=HOST, port=self.port)
        try:
            client.flushall()
        finally:
            client.close()

    def version(self) -> str:
        client = redis.Redis(host=HOST, port=self.port)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()


def start_redis(children: Children, directory: Path) -> RedisServer:
    executable = shutil.which("redis-server")
    if executable is None:
        raise BenchmarkError("redis-server is not on PATH (apt-get install redis-server)")
    port = port_for.select_random()
    log = directory / "redis.log"
    process = children.start(
        [
            executable,
            "--bind",
            HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        env=dict(os.environ),
        log=log,
    )
    server = RedisServer(port, process)

    def answers() -> bool:
        client = redis.Redis(host=HOST, port=port, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    wait_until(answers, timeout=30, what="redis-server to answer", alive=process, log=log)
    return server


def find_pg_ctl() -> str:
    """``pg_ctl`` on PATH, else the newest /usr/lib/postgresql/*/bin (Debian, Ubuntu)."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return os.path.realpath(on_path)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda path: [int(part) for part in re.findall(r"\d+", path.parent.parent.name)],
    )
    if not debian:
        raise BenchmarkError("PostgreSQL server binaries not found (install 'postgresql')")
    return str(debian[-1])


@dataclass
class PostgresServer:
    executor: PostgreSQLExecutor

    @property
    def port(self) -> int:
        return int(self.executor.port)

    def url(self, dbname: str) -> str:
        return sqlalchemy_url(
            host=HOST, port=self.port, user=self.executor.user, dbname=dbname, password=None
        )

    def execute(self, statement: str) -> Any:
        with psycopg.connect(
            host=HOST, port=self.port, user=self.executor.user, dbname="postgres", autocommit=True
        ) as connection:
            cursor = connection.execute(statement.encode())
            return cursor.fetchone() if cursor.description else None


def accepts_connections(server: PostgresServer) -> bool:
    """Whether ``server`` answers a query."""
    try:
        server.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


@contextlib.contextmanager
def postgres_server(directory: Path, durable: bool) -> Iterator[PostgresServer]:
    """A private cluster on 127.0.0.1, as tests/fixtures/postgres.py starts one."""
    pg_ctl = find_pg_ctl()
    executable = pg_ctl
    parent = tempfile.gettempdir()
    account = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as `postgres`
        try:
            account = _server_account()
        except ServerUnavailableError as exc:
            raise BenchmarkError(str(exc)) from exc
        if not _searchable_by(Path(parent), account):
            parent = "/tmp"  # noqa: S108 - world-searchable; mkdtemp makes a private dir
        executable = str(PG_CTL_AS_POSTGRES)
        os.environ[REAL_PG_CTL_ENV] = pg_ctl
        os.environ[SERVER_ACCOUNT_ENV] = account.pw_name
    workdir = Path(tempfile.mkdtemp(prefix="taskq-bench-postgresql-", dir=parent))
    try:
        if account is not None:
            os.chown(workdir, account.pw_uid, account.pw_gid)
        executor = PostgreSQLExecutor(
            executable=executable,
            host=HOST,
            port=port_for.select_random(),
            datadir=str(workdir / "data"),
            unixsocketdir=str(workdir),
            logfile=str(workdir / "postgresql.log"),
            startparams="-w",
            dbname="postgres",
            postgres_options=DURABLE_OPTIONS if durable else SERVER_OPTIONS,
        )
        try:
            executor.start()
            executor.wait_for_postgres()
        except Exception as exc:
            with contextlib.suppress(Exception):
                executor.stop()
            raise BenchmarkError(
                f"PostgreSQL did not start; end of its log:\n{log_tail(workdir / 'postgresql.log')}"
            ) from exc
        try:
            server = PostgresServer(executor)
            # pg_ctl -w can return while the server still refuses connections ("the database
            # system is starting up") on a busy machine.
            wait_until(
                functools.partial(accepts_connections, server),
                timeout=60,
                what="PostgreSQL to accept connections",
                log=workdir / "postgresql.log",
            )
            yield server
        finally:
            executor.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- measurements -----------------------------------------------------------------------------


@dataclass
class Sample:
    """One repetition of one system."""

    enqueue_rate: float
    drain_rate: float
    wall_seconds: float
    latencies: list[float]
    runner_rss_mb: float | None = None
    """Resident memory of the process that ran the jobs (the largest, if several), after."""
    runner_pss_mb: float | None = None
    """Proportional memory of the same process (the largest, if several): its own pages plus
    its share of those it shares with its worker's other processes (RSS counts those in full
    in every process)."""


@dataclass
class Config:
    tasks: int
    repeat: int
    concurrency: int
    latency_samples: int
    durable: bool
    directory: Path

    @property
    def drain_timeout(self) -> float:
        return 120.0 + self.tasks / 5.0  # at least 5 jobs/s, or the run is a failure

    @property
    def runner_limit(self) -> int:
        # celery_taskq keeps one pool process free for its event tasks: concurrency - 1 runners
        return max(self.concurrency - 1, 1)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def run_plain(
    config: Config,
    children: Children,
    server: RedisServer,
    rep: int,
    *,
    app_module: types.ModuleType = plain_app,
    label: str = "plain",
    extra_env: dict[str, str] | None = None,
) -> Sample:
    """Plain Celery on Redis; with ``app_module=native_app``, the same tasks audited."""
    client = redis.Redis.from_url(server.url(PLAIN_REDIS_DB))
    server.flush()
    app_module.app.conf.broker_url = server.url(PLAIN_REDIS_DB)
    try:
        started = time.perf_counter()
        for _ in range(config.tasks):
            app_module.noop.delay()
        enqueue_rate = rate(config.tasks, time.perf_counter() - started)

        log = config.directory / f"{label}-{rep}.log"
        launched = time.time()
        worker = children.start(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                app_module.__name__,
                "worker",
                "-P",
                "prefork",
                "-c",
                str(config.concurrency),
                "--loglevel",
                "WARNING",
                "--hostname",
                f"{label}{rep}@%h",
            ],
            env=child_env(BENCH_REDIS_URL=server.url(PLAIN_REDIS_DB), **(extra_env or {})),
            log=log,
        )
        try:
            wait_until(
                lambda: int(client.get(plain_app.DONE_KEY) or 0) >= config.tasks or None,
                timeout=config.drain_timeout,
                what=f"plain Celery to run {config.tasks} tasks",
                alive=worker,
                log=log,
            )
            first = client.zscore(plain_app.TIMES_KEY, "first")
            last = client.zscore(plain_app.TIMES_KEY, "last")
            if first is None or last is None:
                raise BenchmarkError("plain Celery: the tasks recorded no times")
            drain_rate = rate(config.tasks, last - first)
            wall = last - launched
            rss, pss = children_memory(psutil_children(worker))
            latencies = plain_latencies(config, client, worker, log, app_module)
        finally:
            children.stop(worker)
    finally:
        client.close()
    return Sample(enqueue_rate, drain_rate, wall, latencies, rss, pss)


def psutil_children(process: subprocess.Popen[bytes]) -> list[int]:
    """Pids of a worker's pool processes (the processes that run the jobs)."""
    with contextlib.suppress(psutil.Error):
        return [child.pid for child in psutil.Process(process.pid).children()]
    return []


def children_memory(pids: list[int]) -> tuple[float | None, float | None]:
    """MiB of the largest RSS and the largest PSS among ``pids`` still alive."""
    rss, pss = [], []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            memory = psutil.Process(pid).memory_full_info()
            rss.append(memory.rss)
            pss.append(memory.pss)
    return (max(rss) / 2**20 if rss else None, max(pss) / 2**20 if pss else None)


def plain_latencies(
    config: Config,
    client: redis.Redis,
    worker: subprocess.Popen[bytes],
    log: Path,
    app_module: types.ModuleType = plain_app,
) -> list[float]:
    gaps = random.Random(42)  # noqa: S311 - jitter, not security
    latencies = []
    for index in range(config.latency_samples):
        queued = time.time()
        app_module.record_start.delay(index)
        start = wait_until(
            functools.partial(recorded_start, client, index),
            timeout=30,
            what=f"plain latency job {index} to start",
            interval=LATENCY_POLL,
            alive=worker,
            log=log,
        )
        latencies.append(start - queued)
        time.sleep(gaps.uniform(*LATENCY_GAP))
    return latencies


def recorded_start(client: redis.Redis, index: int) -> float | None:
    """When plain latency job ``index`` started (its own ``time.time()``), if it has."""
    raw = client.hget(plain_app.STARTS_KEY, str(index))
    return None if raw is None else float(raw)


@dataclass
class TaskqTarget:
    """Where one celery_taskq repetition runs: its database and broker, and how to drop them."""

    database_url: str
    broker_url: str
    cleanup: Callable[[], None]


def run_taskq(
    config: Config,
    children: Children,
    target: TaskqTarget,
    label: str,
    *,
    extra_env: dict[str, str] | None = None,
) -> Sample:
    """celery_taskq: ``enqueue()`` of the no-op handler, drained by ``celery-taskq worker``
    (with ``extra_env`` in the worker's environment, e.g. a runner mode)."""
    database = Database(target.database_url)
    # The enqueuing process is configured like the worker, as an application would be: with
    # a Redis broker, enqueue() wakes idle runners over pub/sub.
    os.environ["TASKQ_BROKER_URL"] = target.broker_url
    try:
        started = time.perf_counter()
        for _ in range(config.tasks):
            api.enqueue(HANDLER, database_url=target.database_url)
        enqueue_rate = rate(config.tasks, time.perf_counter() - started)

        log = config.directory / f"{label}.log"
        launched = datetime.now(UTC)
        worker = children.start(
            [
                sys.executable,
                "-m",
                "celery_taskq",
                "worker",
                "--beat",
                "-c",
                str(config.concurrency),
                "--loglevel",
                "WARNING",
                "--hostname",
                f"{label}@%h",
                "--schedule",
                str(config.directory / f"{label}-beat-schedule"),
            ],
            env=child_env(
                TASKQ_DATABASE_URL=target.database_url,
                TASKQ_BROKER_URL=target.broker_url,
                TASKQ_TASK_RUNNER_LIMIT=str(config.runner_limit),
                **(extra_env or {}),
            ),
            log=log,
        )
        try:
            wait_until(
                lambda: successes(database) >= config.tasks or None,
                timeout=config.drain_timeout,
                what=f"celery_taskq ({label}) to run {config.tasks} tasks",
                interval=0.2,
                alive=worker,
                log=log,
            )
            with database.transaction(read_only=True) as connection:
                first, last = connection.execute(
                    select(func.min(TaskRun.started_on), func.max(TaskRun.finished_on))
                ).one()
            if first is None or last is None:
                raise BenchmarkError(f"celery_taskq ({label}): no run has start and finish times")
            drain_rate = rate(config.tasks, (last - first).total_seconds())
            wall = (last - launched).total_seconds()
            # The pool processes that ran the jobs: a runner that found the queue empty may
            # have left already (after runner_max_idle), its process lives on in the pool.
            with database.transaction(read_only=True) as connection:
                runner_pids = list(
                    connection.execute(
                        select(TaskRunner.process_id).where(TaskRunner.role == RunnerRole.RUNNER)
                    ).scalars()
                )
            rss, pss = children_memory(runner_pids)
            latencies = taskq_latencies(config, database, target, worker, log)
        finally:
            children.stop(worker)
    finally:
        database.close()
        api.close_all()
        target.cleanup()
    return Sample(enqueue_rate, drain_rate, wall, latencies, rss, pss)


def successes(database: Database) -> int:
    with database.transaction(read_only=True) as connection:
        failed = connection.execute(
            text("""SELECT count(*) FROM "TaskRuns" WHERE "Status" IN ('error', 'timeout')""")
        ).scalar_one()
        if failed:
            raise BenchmarkError(f"{failed} runs failed: see the TaskRuns table")
        return int(
            connection.execute(
                text("""SELECT count(*) FROM "TaskRuns" WHERE "Status" = 'success'""")
            ).scalar_one()
        )


def taskq_latencies(
    config: Config,
    database: Database,
    target: TaskqTarget,
    worker: subprocess.Popen[bytes],
    log: Path,
) -> list[float]:
    gaps = random.Random(42)  # noqa: S311 - jitter, not security
    task_ids = []
    for index in range(config.latency_samples):
        task_id = api.enqueue(HANDLER, database_url=target.database_url)
        task_ids.append(task_id)
        wait_until(
            functools.partial(has_started, database, task_id),
            timeout=30,
            what=f"celery_taskq latency job {index} to start",
            interval=TASKQ_LATENCY_POLL,
            alive=worker,
            log=log,
        )
        time.sleep(gaps.uniform(*LATENCY_GAP))
    with database.transaction(read_only=True) as connection:
        rows = connection.execute(
            select(TaskQueue.queued_on, TaskRun.started_on)
            .join(TaskRun, TaskRun.task_queue_id == TaskQueue.id)
            .where(TaskQueue.id.in_(task_ids))
        ).all()
    return [
        (started_on - queued_on).total_seconds()
        for queued_on, started_on in rows
        if started_on is not None
    ]


def has_started(database: Database, task_id: int) -> bool:
    with database.transaction(read_only=True) as connection:
        return (
            connection.execute(
                select(TaskRun.started_on).where(
                    TaskRun.task_queue_id == task_id, TaskRun.started_on.is_not(None)
                )
            ).first()
            is not None
        )


# -- the run ----------------------------------------------------------------------------------


def versions(redis_server: RedisServer | None, postgres: PostgresServer | None) -> dict[str, str]:
    found = {"Python": platform.python_version()}
    for name, dist in [
        ("Celery", "celery"),
        ("kombu", "kombu"),
        ("SQLAlchemy", "sqlalchemy"),
        ("redis-py", "redis"),
        ("psycopg", "psycopg"),
        ("celery_taskq", "celery_taskq"),
    ]:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(dist)
    if redis_server is not None:
        found["redis-server"] = redis_server.version()
    if postgres is not None:
        found["PostgreSQL"] = str(postgres.execute("SHOW server_version")[0])
    found["SQLite"] = sqlite3.sqlite_version
    return found


def machine() -> dict[str, str]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPU": model or platform.processor() or "unknown",
        "cores (logical / usable)": f"{os.cpu_count()} / {usable}",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "OS": platform.platform(),
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = fraction * (len(ordered) - 1)  # linear interpolation between closest ranks
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def report(
    config: Config,
    results: dict[str, list[Sample]],
    facts: dict[str, str],
    started_at: datetime,
    elapsed: float,
) -> str:
    lines = [
        "# Drain benchmark: plain Celery vs celery_taskq",
        "",
        f"Generated by `benchmarks/bench_drain.py --tasks {config.tasks} --repeat {config.repeat}"
        f"{'' if config.concurrency == 2 else f' --concurrency {config.concurrency}'}"
        f"{' --durable' if config.durable else ''}` on {started_at:%Y-%m-%d %H:%M} UTC "
        f"({elapsed / 60:.1f} min). See benchmarks/README.md for what is measured and how.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in facts.items()),
        "",
        "## Setup",
        "",
        f"- {config.tasks} jobs per repetition, {config.repeat} repetition(s); figures are the "
        "median of the repetitions (each repetition runs every system once, in turn).",
        f"- Workers: prefork, `-c {config.concurrency}`. celery_taskq keeps one pool process free "
        f"for its event tasks, so it runs jobs in {config.runner_limit} runner(s) "
        f"(`TASKQ_TASK_RUNNER_LIMIT={config.runner_limit}`); every other celery_taskq setting "
        "is its default (poll interval 0.2 s, OnProcess every 2 s, OnCreateTaskRunners every "
        "5 s). Plain Celery: defaults (prefetch multiplier 4), no result backend.",
        "- PostgreSQL: "
        + (
            "default durability settings (fsync on)."
            if config.durable
            else f"`{SERVER_OPTIONS}` (as in the test suite)."
        )
        + " Redis: no persistence. SQLite: celery_taskq's WAL, synchronous=NORMAL.",
        "- Enqueue: one call at a time from one process (`.delay()` / `enqueue()`), no worker "
        "running. Drain: the queued jobs, from the first job's start to the last job's finish. "
        "Wall: from launching the worker to the last finish (includes start-up).",
        f"- Latency: {config.latency_samples} sequential jobs per repetition on the idle "
        f"worker, {LATENCY_GAP[0]}-{LATENCY_GAP[1]} s random gap, each waited for before the "
        "next; p50/p99 over all repetitions' jobs pooled. Plain Celery: the task's "
        "`time.time()` minus the time just before `.delay()`. celery_taskq: "
        "`TaskRuns.StartedOn - TaskQueue.QueuedOn`.",
        "",
        "## Results",
        "",
        "| system | enqueue (jobs/s) | drain (jobs/s) | wall (s) | latency p50 (ms) "
        "| latency p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for system, samples in results.items():
        if not samples:
            continue
        latencies = [value for sample in samples for value in sample.latencies]
        lines.append(
            f"| {SYSTEM_TITLES[system]} "
            f"| {statistics.median(s.enqueue_rate for s in samples):,.0f} "
            f"| {statistics.median(s.drain_rate for s in samples):,.0f} "
            f"| {statistics.median(s.wall_seconds for s in samples):,.1f} "
            f"| {percentile(latencies, 0.50) * 1000:,.1f} "
            f"| {percentile(latencies, 0.99) * 1000:,.1f} |"
        )
    lines += ["", "### Every repetition", ""]
    lines += [
        "| system | rep | enqueue (jobs/s) | drain (jobs/s) | wall (s) | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for system, samples in results.items():
        for rep, sample in enumerate(samples, 1):
            lines.append(
                f"| {system} | {rep} | {sample.enqueue_rate:,.0f} | {sample.drain_rate:,.0f} "
                f"| {sample.wall_seconds:,.1f} | {percentile(sample.latencies, 0.5) * 1000:,.1f} "
                f"| {percentile(sample.latencies, 0.99) * 1000:,.1f} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=5000, help="jobs per drain (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker -c (default 2)")
    parser.add_argument(
        "--latency-samples", type=int, default=50, help="latency jobs per repetition (default 50)"
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)",
    )
    parser.add_argument(
        "--durable", action="store_true", help="PostgreSQL with fsync (default: test settings)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).with_name("RESULTS-drain.md"),
        help="where to write the results (default benchmarks/RESULTS-drain.md; "
        "benchmarks/run_all.py writes RESULTS.md)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown or not args.systems:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {','.join(SYSTEMS)}")
    if args.tasks < 1 or args.repeat < 1 or args.concurrency < 1 or args.latency_samples < 1:
        parser.error("--tasks, --repeat, --concurrency and --latency-samples must be positive")
    return args


def _raise_system_exit(signum: int, _frame: types.FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):  # clean up on these too, as on Ctrl-C
        signal.signal(signum, _raise_system_exit)
    directory = Path(tempfile.mkdtemp(prefix="taskq-bench-"))
    config = Config(
        tasks=args.tasks,
        repeat=args.repeat,
        concurrency=args.concurrency,
        latency_samples=args.latency_samples,
        durable=args.durable,
        directory=directory,
    )
    children = Children(directory)
    started_at = datetime.now(UTC)
    clock = time.monotonic()
    results: dict[str, list[Sample]] = {system: [] for system in args.systems}
    print(f"work directory (logs): {directory}", flush=True)
    try:
        with contextlib.ExitStack() as stack:
            redis_server = start_redis(children, directory)
            os.environ["BENCH_REDIS_URL"] = redis_server.url(PLAIN_REDIS_DB)
            postgres = None
            if "postgresql" in args.systems:
                postgres = stack.enter_context(postgres_server(directory, args.durable))
                postgres.execute("CREATE DATABASE bench_template")
                upgrade_database(postgres.url("bench_template"))
            sqlite_template = directory / "sqlite-template.db"
            if "sqlite" in args.systems:
                upgrade_database(f"sqlite:///{sqlite_template}")
            facts = {**machine(), **versions(redis_server, postgres)}

            for rep in range(1, config.repeat + 1):
                for system in args.systems:
                    label = f"{system}-{rep}"
                    print(f"[{time.monotonic() - clock:6.0f}s] {label} ...", flush=True)
                    if system == "plain":
                        sample = run_plain(config, children, redis_server, rep)
                    elif system == "postgresql":
                        assert postgres is not None  # noqa: S101
                        sample = run_taskq(
                            config, children, postgres_target(postgres, redis_server, rep), label
                        )
                    else:
                        sample = run_taskq(
                            config, children, sqlite_target(directory, sqlite_template, rep), label
                        )
                    results[system].append(sample)
                    print(
                        f"         enqueue {sample.enqueue_rate:,.0f}/s, "
                        f"drain {sample.drain_rate:,.0f}/s, wall {sample.wall_seconds:.1f}s, "
                        f"latency p50 {percentile(sample.latencies, 0.5) * 1000:.1f} ms, "
                        f"p99 {percentile(sample.latencies, 0.99) * 1000:.1f} ms",
                        flush=True,
                    )
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        print(f"logs kept in {directory}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        api.close_all()
    text_ = report(config, results, facts, started_at, time.monotonic() - clock)
    args.output.write_text(text_)
    print(text_)
    print(f"written to {args.output}")
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def postgres_target(postgres: PostgresServer, redis_server: RedisServer, rep: int) -> TaskqTarget:
    dbname = f"bench_{rep}_{os.getpid()}"
    postgres.execute(f"CREATE DATABASE {dbname} TEMPLATE bench_template")
    redis_server.flush()

    def cleanup() -> None:
        postgres.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")

    return TaskqTarget(postgres.url(dbname), redis_server.url(TASKQ_REDIS_DB), cleanup)


def sqlite_target(directory: Path, template: Path, rep: int) -> TaskqTarget:
    rep_directory = directory / f"sqlite-{rep}"
    rep_directory.mkdir()
    database = rep_directory / "taskq.db"
    shutil.copyfile(template, database)

    def cleanup() -> None:
        shutil.rmtree(rep_directory, ignore_errors=True)

    return TaskqTarget(
        f"sqlite:///{database}", f"sqla+sqlite:///{rep_directory / 'broker.db'}", cleanup
    )


if __name__ == "__main__":
    sys.exit(main())
