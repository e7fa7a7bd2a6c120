"""Celery behaves the same with celery_taskq installed: each scenario runs twice, against a
plain app's worker and against an installed app's (``install(app, audit_celery_tasks=True)``),
and what Celery lets a client observe must be equal.

Two real workers (prefork, two processes each) on a real Redis, one per app, started once for
the module; each has a client process of its own (tests/behaviour_scenarios.py) that drives
the scenario and reports what it saw. The installed side runs on SQLite and on PostgreSQL.
A last test starts an installed worker with a threads pool: attempts running side by side in
one process each keep their own output.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import pytest
import redis
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor
from sqlalchemy import func, select

from celery_taskq.core.models import TaskQueue, TaskRun
from celery_taskq.core.storage.database import Database
from tests.conftest import PROJECT_ROOT
from tests.fixtures.postgres import _fresh_database, skip_or_fail
from tests.helpers import wait_for

FAILING_WARM_UP = 50
FAILING_MEASURED = 200
MEMORY_TOLERANCE = 12 * 1024 * 1024
"""Bytes the installed worker's pool processes may grow beyond plain Celery's over
FAILING_MEASURED failing tasks. Plain Celery's two pool processes grow about 36 MB over 200
failures (Redis result backend, INFO logging); the installed ones were measured within 4 MB of
that either way. The leak this guards against (the audit keeping each failure's traceback)
grew memory about twice as fast as plain Celery."""

CHATTER_LINES = 20

ANSWER_TIMEOUT = 120.0
"""Seconds a client may take to answer one scenario."""

PLAIN_DATABASES = (1, 2)
INSTALLED_DATABASES = (3, 4)
THREADS_DATABASES = (5, 6)
"""Redis databases (broker, result backend) of each side."""

behaviour_redis_server = factories.redis_proc(timeout=3600)
"""A Redis server of the module's own: the clients sit idle while a worker starts, longer than
the session server's 15 s idle-client timeout (which kombu's control connection does not
survive)."""


@pytest.fixture(scope="module")
def behaviour_redis() -> None:
    """Skip (or fail where servers are required) without redis-server."""
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")


@dataclass
class Side:
    """One app's worker and the client that drives it."""

    name: str
    directory: Path
    env: dict[str, str]
    database_url: str | None = None
    pool: str = "prefork"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    replies: IO[str] | None = None
    client: subprocess.Popen[bytes] | None = None

    @property
    def worker_log(self) -> Path:
        return self.directory / "worker.log"

    @property
    def worker(self) -> subprocess.Popen[bytes]:
        return self.processes[0]

    def start(self) -> None:
        """Start the worker, wait until it is ready, then start the client."""
        with self.worker_log.open("wb") as log:
            self.processes.append(
                subprocess.Popen(
                    [
                        *(sys.executable, "-m", "celery", "-A", "tests.behaviour_app", "worker"),
                        *("-P", self.pool, "-c", "2", "--loglevel", "INFO"),
                        *("--hostname", f"{self.name}@%h", "--without-gossip", "--without-mingle"),
                    ],
                    env=self.env,
                    cwd=self.directory,
                    stdout=log,
                    stderr=log,
                )
            )
        wait_for(
            lambda: (
                " ready." in self.worker_log.read_text(errors="replace")
                or self.worker.poll() is not None
            ),
            timeout=60,
            what=f"the {self.name} worker to start",
        )
        assert self.worker.poll() is None, self.worker_log.read_text(errors="replace")
        read_end, write_end = os.pipe()
        with (self.directory / "client.log").open("wb") as log:
            self.client = subprocess.Popen(
                [sys.executable, "-m", "tests.behaviour_scenarios"],
                env={**self.env, "BEHAVIOUR_REPLY_FD": str(write_end)},
                cwd=self.directory,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                pass_fds=(write_end,),
            )
        os.close(write_end)
        self.processes.append(self.client)
        self.replies = os.fdopen(read_end, "r")

    def ask(self, scenario: str, **arguments: Any) -> None:
        """Send the client a scenario to run."""
        assert self.client is not None
        assert self.client.stdin is not None
        self.client.stdin.write((json.dumps({"scenario": scenario, **arguments}) + "\n").encode())
        self.client.stdin.flush()

    def answer(self) -> Any:
        """What the client saw in the scenario it was last asked."""
        assert self.replies is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.replies, selectors.EVENT_READ)
            if not selector.select(ANSWER_TIMEOUT):
                raise AssertionError(f"the {self.name} client did not answer in time")
        reply = json.loads(self.replies.readline() or '{"failed": "the client exited"}')
        if "failed" in reply:
            raise AssertionError(f"{self.name} client: {reply['failed']}")
        return reply["ok"]

    def pool_processes(self) -> list[psutil.Process]:
        """The worker's pool processes."""
        return psutil.Process(self.worker.pid).children()

    def stop(self) -> None:
        """Stop the client and the worker."""
        if self.client is not None and self.client.stdin is not None:
            self.client.stdin.close()
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        if self.replies is not None:
            self.replies.close()


def _side(
    name: str, directory: Path, server: RedisExecutor, databases: tuple[int, int], **env: str
) -> Side:
    base = f"redis://{server.host}:{server.port}"
    for number in databases:
        client = redis.Redis(host=server.host, port=server.port, db=number)
        try:
            client.flushdb()
        finally:
            client.close()
    directory.mkdir()
    return Side(
        name,
        directory,
        {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "BEHAVIOUR_BROKER_URL": f"{base}/{databases[0]}",
            "BEHAVIOUR_BACKEND_URL": f"{base}/{databases[1]}",
            "BEHAVIOUR_DB_BACKEND_URL": f"sqlite:///{directory / 'results.db'}",
            "BEHAVIOUR_DIR": str(directory),
            "BEHAVIOUR_WORKER_LOG": str(directory / "worker.log"),
            **env,
        },
    )


@pytest.fixture(scope="module")
def plain(
    behaviour_redis: None, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Side]:
    """A worker and client of the plain app."""
    server = request.getfixturevalue("behaviour_redis_server")
    side = _side("plain", tmp_path_factory.mktemp("plain") / "side", server, PLAIN_DATABASES)
    try:
        side.start()
        yield side
    finally:
        side.stop()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
def installed(
    request: pytest.FixtureRequest,
    behaviour_redis: None,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
) -> Iterator[Side]:
    """A worker and client of the installed app, its audit on SQLite, then PostgreSQL."""
    directory = tmp_path_factory.mktemp(f"installed-{request.param}")
    with contextlib.ExitStack() as cleanup:
        if request.param == "sqlite":
            database_url = f"sqlite:///{directory / 'taskq.db'}"
            (directory / "taskq.db").write_bytes(sqlite_template.read_bytes())
        else:
            database_url = cleanup.enter_context(
                contextlib.contextmanager(_fresh_database)(
                    request.getfixturevalue("taskq_postgresql_server"),
                    request.getfixturevalue("taskq_postgresql_schema_template"),
                )
            )
        side = _side(
            "installed",
            directory / "side",
            request.getfixturevalue("behaviour_redis_server"),
            INSTALLED_DATABASES,
            BEHAVIOUR_INSTALL="1",
            TASKQ_DATABASE_URL=database_url,
        )
        side.database_url = database_url
        cleanup.callback(side.stop)
        side.start()
        yield side


def both(plain: Side, installed: Side, scenario: str, **arguments: Any) -> tuple[Any, Any]:
    """Run ``scenario`` on both sides at once; what each client saw."""
    plain.ask(scenario, **arguments)
    installed.ask(scenario, **arguments)
    answers: list[Any] = []
    errors: list[AssertionError] = []
    for side in (plain, installed):
        try:  # both answers are read, so the next scenario's are the next ones
            answers.append(side.answer())
        except AssertionError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    return answers[0], answers[1]


def audited(side: Side, task_ids: list[str]) -> tuple[int, int]:
    """How many ``TaskQueue`` rows and ``TaskRuns`` rows the audit has of these Celery ids."""
    assert side.database_url is not None
    database = Database(side.database_url)
    try:
        with database.transaction() as connection:
            tasks = connection.execute(
                select(func.count()).where(TaskQueue.celery_task_id.in_(task_ids))
            ).scalar_one()
            runs = connection.execute(
                select(func.count()).where(TaskRun.celery_task_id.in_(task_ids))
            ).scalar_one()
        return int(tasks), int(runs)
    finally:
        database.close()


def run_output(side: Side, task_id: str) -> list[tuple[str | None, str | None]]:
    """``(StandardOutput, ErrorOutput)`` of each run of the Celery task ``task_id``."""
    assert side.database_url is not None
    database = Database(side.database_url)
    try:
        with database.transaction() as connection:
            rows = connection.execute(
                select(TaskRun.standard_output, TaskRun.error_output).where(
                    TaskRun.celery_task_id == task_id
                )
            ).all()
        return [(row[0], row[1]) for row in rows]
    finally:
        database.close()


def finished_runs(side: Side, task_id: str) -> list[tuple[str | None, str | None]]:
    """The output of the runs of ``task_id`` that have it (a finished attempt)."""
    return [run for run in run_output(side, task_id) if run[0] is not None]


def test_inspect_active_queues_is_unchanged(plain: Side, installed: Side) -> None:
    # When both workers are asked which queues they consume
    plain_queues, installed_queues = both(plain, installed, "active_queues")
    # Then the installed one consumes exactly what the plain one does: the default queue
    assert plain_queues == [["celery"]]
    assert installed_queues == plain_queues


def test_failing_tasks_leave_memory_as_plain_celery_does(plain: Side, installed: Side) -> None:
    # Given both workers warmed up by failing tasks (imports, caches, first tracebacks)
    both(plain, installed, "fail_many", count=FAILING_WARM_UP)
    pools = {side.name: side.pool_processes() for side in (plain, installed)}
    before = {name: _rss(processes) for name, processes in pools.items()}
    # When many more tasks fail on each
    seen = both(plain, installed, "fail_many", count=FAILING_MEASURED)
    # Then Celery stored every failure the same way
    assert seen[0] == seen[1] == {"states": {"FAILURE": FAILING_MEASURED}}
    # And the installed worker's pool processes grew no more than plain Celery's, within
    # MEMORY_TOLERANCE (same processes throughout: none was replaced)
    assert {side.name: side.pool_processes() for side in (plain, installed)} == pools
    growth = {name: _rss(processes) - before[name] for name, processes in pools.items()}
    assert growth["installed"] <= growth["plain"] + MEMORY_TOLERANCE, growth


def _rss(processes: list[psutil.Process]) -> int:
    return sum(process.memory_info().rss for process in processes)


def test_canvas(plain: Side, installed: Side) -> None:
    plain_seen, installed_seen = both(plain, installed, "canvas")
    assert [node["value"] for node in plain_seen["chain"]] == [10, 6, 3]
    assert plain_seen["broken_chain"]["error"] == ["KeyError", "'missing thing'"]
    assert plain_seen["group"] == [0, 2, 4, 6, 8]
    assert plain_seen["chord"] == 12
    assert plain_seen["chunks"] == [[0, 2, 4], [6, 8, 10]]
    assert plain_seen["map"] == plain_seen["starmap"] == [3, 7]
    assert installed_seen == plain_seen


def test_results_in_redis_and_database_backends(plain: Side, installed: Side) -> None:
    plain_seen, installed_seen = both(plain, installed, "results")
    assert plain_seen["success"] == {"state": "SUCCESS", "value": 4}
    assert plain_seen["failure"]["traceback_type"] == "KeyError"
    assert plain_seen["database_backend"] == {"state": "SUCCESS", "value": 5}
    assert plain_seen["database_backend_class"] == "DatabaseBackend"
    assert installed_seen == plain_seen


def test_retries_and_autoretry(plain: Side, installed: Side) -> None:
    plain_seen, installed_seen = both(plain, installed, "retries")
    assert plain_seen["retry_then_succeed"] == {"state": "SUCCESS", "value": 2}
    assert plain_seen["retry_exhausted"]["error"] == ["ValueError", "no luck"]
    assert plain_seen["autoretry_then_succeed"] == {"state": "SUCCESS", "value": 2}
    assert plain_seen["autoretry_exhausted"]["error"][0] == "ConnectionError"
    assert installed_seen == plain_seen


def test_revoke_and_terminate(plain: Side, installed: Side) -> None:
    plain_seen, installed_seen = both(plain, installed, "revoke")
    assert plain_seen["before_start"]["state"] == "REVOKED"
    assert plain_seen["started"] is True
    assert plain_seen["state_while_running"] == "PENDING"  # no task_track_started
    assert plain_seen["terminated"]["state"] == "REVOKED"
    assert installed_seen == plain_seen


def test_eta_countdown_and_expires(plain: Side, installed: Side) -> None:
    plain_seen, installed_seen = both(plain, installed, "eta_and_expires")
    assert plain_seen["countdown_respected"] is plain_seen["eta_respected"] is True
    assert plain_seen["expired_on_arrival"]["state"] == "REVOKED"
    assert plain_seen["expired_while_waiting"]["state"] == "REVOKED"
    assert installed_seen == plain_seen


def test_time_limits(plain: Side, installed: Side) -> None:
    plain_seen, installed_seen = both(plain, installed, "time_limits")
    assert plain_seen["soft_caught"] == {"state": "SUCCESS", "value": "caught"}
    assert plain_seen["soft"]["error"][0] == "SoftTimeLimitExceeded"
    assert plain_seen["hard"]["error"][0] == "TimeLimitExceeded"
    assert installed_seen == plain_seen


def test_acks_late_and_reject_on_worker_lost(plain: Side, installed: Side) -> None:
    plain_seen, installed_seen = both(plain, installed, "worker_lost")
    assert plain_seen["reject_on_worker_lost"] == {"state": "SUCCESS", "value": "redelivered"}
    assert plain_seen["acks_late_only"]["error"][0] == "WorkerLostError"
    assert installed_seen == plain_seen


def test_ignore_and_reject(plain: Side, installed: Side) -> None:
    plain_seen, installed_seen = both(plain, installed, "ignore_and_reject")
    assert plain_seen["ignore"] == {"ran": True, "state": "PENDING", "value": None}
    assert plain_seen["reject"]["ran"] is True
    assert installed_seen == plain_seen


def test_eager_mode(plain: Side, installed: Side) -> None:
    plain_seen, installed_seen = both(plain, installed, "eager")
    assert plain_seen["add"] == {"state": "SUCCESS", "value": 3}
    assert plain_seen["failure"]["traceback_type"] == "KeyError"
    assert plain_seen["chain"] == 6
    assert installed_seen == plain_seen
    # And what the eager task printed reached the caller's own stdout and stderr
    for side in (plain, installed):
        output = (side.directory / "client.log").read_text(errors="replace")
        assert "behaviour-eager on stdout" in output
        assert "behaviour-eager on stderr" in output


def test_stamping(plain: Side, installed: Side) -> None:
    plain_seen, installed_seen = both(plain, installed, "stamping")
    assert plain_seen["stamped"]["value"] == {"behaviour_mark": "stamped"}
    assert installed_seen == plain_seen


def test_replace(plain: Side, installed: Side) -> None:
    plain_seen, installed_seen = both(plain, installed, "replace")
    assert plain_seen["replaced"] == {"state": "SUCCESS", "value": 5}
    assert installed_seen == plain_seen


def test_output_reaches_the_worker_while_the_task_runs(plain: Side, installed: Side) -> None:
    # When a task prints to stdout and stderr and logs, then waits until the client has seen
    # all three in the worker's output
    plain_seen, installed_seen = both(plain, installed, "output")
    # Then each reached the worker's output while the task still ran, and Celery's line about
    # the task followed, the same with and without the audit
    assert plain_seen["seen_live"] == {
        "<marker> on stdout": True,
        "<marker> on stderr": True,
        "<marker> in the task log": True,
    }
    assert plain_seen["result"] == {"state": "SUCCESS", "value": True}
    assert plain_seen["lines"] == [
        "WARNING <marker> on stdout",
        "WARNING <marker> on stderr",
        "WARNING behaviour.echo[<id>]: <marker> in the task log",
        "INFO Task behaviour.echo[<id>] succeeded in <t>s: True",
    ]
    assert plain_seen["tracebacks_logged"] == 0
    assert drop_ids(installed_seen) == drop_ids(plain_seen)


def test_a_failures_lines_reach_the_worker_output(plain: Side, installed: Side) -> None:
    # When a task prints, logs and then fails
    plain_seen, installed_seen = both(plain, installed, "output", fail=True)
    # Then its lines, Celery's error line and the traceback Celery logs reach the worker's
    # output, the same with and without the audit
    assert plain_seen["result"]["error"] == ["KeyError", "'<marker>'"]
    assert plain_seen["lines"] == [
        "WARNING <marker> on stdout",
        "WARNING <marker> on stderr",
        "WARNING behaviour.echo[<id>]: <marker> in the task log",
        "ERROR Task behaviour.echo[<id>] raised unexpected: KeyError('<marker>')",
        "KeyError: '<marker>'",
    ]
    assert plain_seen["tracebacks_logged"] == 1
    assert drop_ids(installed_seen) == drop_ids(plain_seen)
    # And the run holds the task's own stderr and one traceback, none of the worker's lines
    (standard_output, error_output), *more = wait_for(
        functools.partial(finished_runs, installed, installed_seen["task_id"]),
        what="the finished run of the failing echo task",
    )
    assert more == []
    marker = installed_seen["marker"]
    assert standard_output == f"{marker} on stdout\n"
    assert (error_output or "").startswith(f"{marker} on stderr\n")
    assert (error_output or "").count("Traceback (most recent call last)") == 1
    assert "raised unexpected" not in (error_output or "")
    assert "in the task log" not in (error_output or "")


def drop_ids(seen: dict[str, Any]) -> dict[str, Any]:
    """What the output scenario saw, without this run's task id and marker."""
    return {key: value for key, value in seen.items() if key not in {"task_id", "marker"}}


def test_the_run_keeps_the_tasks_output_and_not_the_workers_lines(
    plain: Side, installed: Side
) -> None:
    # Given a task that printed to stdout and stderr, logged, and succeeded
    _, seen = both(plain, installed, "output")
    # Then its run holds what the task printed, once, and none of the worker's log lines
    (standard_output, error_output), *more = wait_for(
        functools.partial(finished_runs, installed, seen["task_id"]),
        what="the finished run of the echo task",
    )
    assert more == []
    assert standard_output == f"{seen['marker']} on stdout\n"
    assert error_output == f"{seen['marker']} on stderr\n"


def test_publishing_from_many_threads_records_every_task(plain: Side, installed: Side) -> None:
    # When 20 threads publish at once
    plain_seen, installed_seen = both(plain, installed, "threads", threads=20, per_thread=5)
    # Then every result comes back, as without the audit
    expected = sorted(offset * 1000 + index for offset in range(20) for index in range(5))
    assert plain_seen["values"] == installed_seen["values"] == expected
    # And the audit has one task and one run of each
    task_ids = installed_seen["task_ids"]
    wait_for(
        lambda: audited(installed, task_ids) == (100, 100),
        what="a task row and a run row for each of the 100 tasks",
    )


def test_on_a_threads_pool_each_run_holds_its_own_output(
    behaviour_redis: None, request: pytest.FixtureRequest, tmp_path: Path, database_url: str
) -> None:
    # Given an installed worker whose pool is two threads of one process
    side = _side(
        "threads",
        tmp_path / "side",
        request.getfixturevalue("behaviour_redis_server"),
        THREADS_DATABASES,
        BEHAVIOUR_INSTALL="1",
        TASKQ_DATABASE_URL=database_url,
    )
    side.database_url, side.pool = database_url, "threads"
    try:
        side.start()
        # When two tasks print at the same time, each from its own thread
        side.ask("chatter_pair", count=CHATTER_LINES)
        seen = side.answer()
    finally:
        side.stop()
    # Then both ran at once and every line reached the worker's output
    assert seen["overlapped"] is True
    log = side.worker_log.read_text(errors="replace")
    for name in ("left", "right"):
        assert all(f"{name} line {index}" in log for index in range(CHATTER_LINES))
    # And each run holds its own task's lines and none of the other's
    for name, task_id in seen["task_ids"].items():
        ((standard_output, _),) = wait_for(
            functools.partial(finished_runs, side, task_id), what=f"the finished run of {name}"
        )
        assert standard_output == "".join(
            f"{name} line {index}\n" for index in range(CHATTER_LINES)
        )
