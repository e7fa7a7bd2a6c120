"""Every attempt and every outcome of a native Celery task leaves exactly the expected rows.

One real worker of ``tests/native_app.py`` on Redis per module and database (SQLite, then
PostgreSQL), driven by a plain Celery app in this process (no ``install()``: rows are created at
each task's first start) and by installed callers in child processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, chord, group
from pytest_redis.executor import RedisExecutor
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from celery_taskq.core.models import TASK_EXHAUSTED_SQL, RunnerStatus, RunStatus, TaskQueue, TaskRun
from celery_taskq.core.statements.native_attempts import GUESSED_CODES
from celery_taskq.core.storage.database import Database
from tests.conftest import PROJECT_ROOT
from tests.fixtures.postgres import _fresh_database
from tests.helpers import runners, wait_for

pytestmark = pytest.mark.slow

REDIS_DATABASES = (5, 6)
"""Redis databases (broker, result backend) of this module's worker."""

AUDIT_FAILED = re.compile(r"audit\S*( of Celery task \S+| write .*)? failed")


@dataclass
class Native:
    """The worker, its database, and a producer app without ``install()``."""

    directory: Path
    env: dict[str, str]
    database: Database
    producer: Celery
    worker: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        return (self.directory / "worker.log").read_text(errors="replace")

    def send(self, name: str, *args: Any, **options: Any) -> str:
        return str(self.producer.send_task(name, args, **options).id)

    def settled(self, celery_id: str, runs: int) -> tuple[TaskQueue, list[TaskRun]] | None:
        """The task's row and runs once it has ``runs`` runs, none of them open."""
        # The runs are read before the task row: each statement sees what was committed when
        # it began (READ COMMITTED), and a run's end commits with the task's roll-up, so the
        # row read second is at least as new as the runs read first.
        with Session(self.database.engine, expire_on_commit=False) as session:
            found = list(
                session.scalars(
                    select(TaskRun)
                    .join(TaskQueue, TaskRun.task_queue_id == TaskQueue.id)
                    .where(TaskQueue.celery_task_id == celery_id)
                    .order_by(TaskRun.id)
                )
            )
            task = session.scalars(
                select(TaskQueue).where(TaskQueue.celery_task_id == celery_id)
            ).first()
            if task is None:
                return None
        if len(found) != runs or any(
            run.status in (RunStatus.SCHEDULED, RunStatus.RUNNING) for run in found
        ):
            return None
        return task, found

    def wait(
        self, celery_id: str, runs: int, timeout: float = 40
    ) -> tuple[TaskQueue, list[TaskRun]]:
        result: tuple[TaskQueue, list[TaskRun]] = wait_for(
            lambda: self.settled(celery_id, runs),
            timeout=timeout,
            what=f"{runs} closed runs of {celery_id}\n{self.log[-3000:]}",
        )
        return result

    def exhausted(self, task_queue_id: int) -> bool:
        with self.database.transaction(read_only=True) as connection:
            return (
                connection.execute(
                    select(TaskQueue.id).where(
                        TaskQueue.id == task_queue_id, text(TASK_EXHAUSTED_SQL)
                    )
                ).first()
                is not None
            )

    def run_script(self, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script],
            env=self.env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
def native(
    request: pytest.FixtureRequest,
    redis_proc: RedisExecutor,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
) -> Iterator[Native]:
    """A worker of the audited app, on Redis and the module's database."""
    directory = tmp_path_factory.mktemp(f"native-{request.param}")
    base = f"redis://{redis_proc.host}:{redis_proc.port}"
    for number in REDIS_DATABASES:
        client = redis.Redis.from_url(f"{base}/{number}")
        client.flushdb()
        client.close()
    broker, backend = (f"{base}/{number}" for number in REDIS_DATABASES)
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
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "TASKQ_DATABASE_URL": database_url,
            "TASKQ_HEARTBEAT_INTERVAL": "0.5",
            "NATIVE_BROKER_URL": broker,
            "NATIVE_RESULT_BACKEND": backend,
            "NATIVE_DIR": str(directory),
        }
        with (directory / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "tests.native_app", "worker"),
                    *("-P", "prefork", "-c", "3", "--loglevel", "INFO"),
                    *("--hostname", "native@%h", "--without-gossip", "--without-mingle"),
                ],
                env=env,
                cwd=directory,
                stdout=log,
                stderr=log,
            )
        cleanup.callback(_stop, worker)
        database = Database(database_url)
        cleanup.callback(database.close)
        producer = Celery("producer", broker=broker, backend=backend)
        cleanup.callback(producer.close)
        native = Native(directory, env, database, producer, worker)
        wait_for(
            lambda: " ready." in native.log or worker.poll() is not None,
            timeout=60,
            what="the worker to start",
        )
        assert worker.poll() is None, native.log
        yield native


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=30)


def summary(runs: list[TaskRun]) -> list[tuple[str, str | None, int | None]]:
    return [(run.status.value, run.error_code, run.attempt) for run in runs]


def test_each_attempt_kind_and_outcome_leaves_its_rows(native: Native) -> None:
    # Given one task of each kind, sent by a producer that does not audit
    ids = {
        name: native.send(f"native.{name}")
        for name in (
            "fail",
            "flaky",
            "exhausted",
            "autoretried",
            "unlimited",
            "rejected",
            "requeued",
            "ignored",
            "replaced",
            "soft_limited",
            "hard_limited",
            "quiet",
        )
    }
    ids["add"] = native.send("native.add", 2, 3, headers={"taskq_queued_by": "user-7"})
    ids["not_audited"] = native.send("native.not_audited")

    # Then each has exactly its runs, numbered by Celery's retries
    expected: dict[str, list[tuple[str, str | None, int]]] = {
        "add": [("success", None, 0)],
        "fail": [("error", "KeyError", 0)],
        "flaky": [
            ("error", "ConnectionError", 0),
            ("error", "ConnectionError", 1),
            ("success", None, 2),
        ],
        "exhausted": [("error", "ValueError", 0), ("error", "ValueError", 1)],
        "autoretried": [
            ("error", "ValueError", 0),
            ("error", "ValueError", 1),
            ("success", None, 2),
        ],
        "unlimited": [("error", "TimeoutError", 0), ("success", None, 1)],
        "rejected": [("error", "rejected", 0)],
        "requeued": [("error", "rejected_requeued", 0), ("success", None, 0)],
        "ignored": [("success", "ignored", 0)],
        "replaced": [("success", "replaced", 0), ("success", None, 0)],
        "soft_limited": [("timeout", "soft_time_limit", 0)],
        "hard_limited": [("timeout", "time_limit", 0)],
        "quiet": [("success", "result_ignored", 0)],
    }
    rows = {name: native.wait(ids[name], len(runs)) for name, runs in expected.items()}
    assert {name: summary(found) for name, (_, found) in rows.items()} == expected

    # And the task rows say how each ended: MaxRetries is every attempt Celery allows, and a
    # failure Celery does not retry is final (a dead letter)
    limits = {name: (task.max_retries, task.task_runs_failed) for name, (task, _) in rows.items()}
    assert limits["flaky"] == (3, 0)
    assert limits["autoretried"] == (6, 0)
    assert limits["exhausted"] == (2, 2)
    assert limits["fail"] == (1, 1)
    assert limits["rejected"] == (1, 1)
    assert limits["unlimited"] == (2, 0)
    dead = {name for name, (task, _) in rows.items() if native.exhausted(task.id)}
    assert dead == {"fail", "exhausted", "rejected", "soft_limited", "hard_limited"}

    add_task, (add_run,) = rows["add"]
    assert add_task.task_handler_class == "celery:native.add"
    assert add_task.task_data == {"args": [2, 3], "kwargs": {}}
    assert add_task.queued_by_id == "user-7"
    assert (add_run.results, add_run.standard_output, add_run.eager) == (
        5,
        "adding 2 and 3\n",
        False,
    )

    # And an error keeps its message and one traceback, without Celery's log lines
    (failure,) = rows["fail"][1]
    assert failure.error_message == "'missing thing'"
    assert (failure.error_output or "").count("Traceback") == 1
    assert "about to fail" in (failure.error_output or "")
    assert "raised unexpected" not in (failure.error_output or "")

    replaced_task, (_, replacement) = rows["replaced"]
    assert (replaced_task.task_handler_class, replacement.results) == ("celery:native.replaced", 42)
    assert rows["quiet"][1][0].results is None
    assert native.settled(ids["not_audited"], 0) is None
    with native.database.transaction(read_only=True) as connection:
        assert (
            connection.execute(
                select(TaskQueue.id).where(TaskQueue.celery_task_id == ids["not_audited"])
            ).first()
            is None
        )
    assert not AUDIT_FAILED.search(native.log), native.log[-3000:]


def test_revoked_expired_and_terminated_tasks_are_recorded(native: Native) -> None:
    # Given a task revoked before it is sent, one already expired, and one terminated as it runs
    revoked_id = "revoked-" + os.urandom(4).hex()
    native.producer.control.revoke(revoked_id)
    time.sleep(0.5)  # the broadcast reaches the worker before the message does
    native.send("native.add", 1, 1, task_id=revoked_id)
    expired_id = native.send("native.add", 1, 2, expires=datetime.now(UTC) - timedelta(seconds=5))
    terminated_id = native.send("native.sleeper", 30)
    wait_for(lambda: _running(native, terminated_id), timeout=30, what="the sleeper to start")
    native.producer.control.revoke(terminated_id, terminate=True)

    # Then each has one closed run saying why (the terminated attempt may first be closed as
    # lost by the sweep of a new pool process, a guess the main process's record replaces)
    (revoked,) = native.wait(revoked_id, 1)[1]
    (expired,) = native.wait(expired_id, 1)[1]
    (terminated,) = wait_for(
        lambda: _seen_end(native.wait(terminated_id, 1)[1]),
        timeout=30,
        what="the terminated attempt's end, as the worker's main process saw it",
    )
    assert summary([revoked, expired, terminated]) == [
        ("error", "revoked", 0),
        ("error", "expired", 0),
        ("error", "terminated", 0),
    ]
    assert (revoked.started_on, expired.started_on) == (None, None)
    assert terminated.started_on is not None
    assert not AUDIT_FAILED.search(native.log), native.log[-3000:]


def _seen_end(runs: list[TaskRun]) -> list[TaskRun] | None:
    """The runs once none is closed by a guess only (``worker_lost``, ``superseded``)."""
    return None if any(run.error_code in GUESSED_CODES for run in runs) else runs


def _running(native: Native, celery_id: str) -> bool:
    with native.database.transaction(read_only=True) as connection:
        return (
            connection.execute(
                select(TaskRun.id).where(
                    TaskRun.celery_task_id == celery_id, TaskRun.status == RunStatus.RUNNING
                )
            ).first()
            is not None
        )


def test_a_killed_pool_process_closes_its_attempt_as_lost(native: Native) -> None:
    # Given a task without acks_late and one with acks_late and reject_on_worker_lost, each
    # running in a pool process that is then killed
    for name in ("doomed", "doomed_late"):
        celery_id = native.send(f"native.{name}")
        pid_file = native.directory / f"{name}.pid"
        wait_for(lambda: pid_file.exists() and _running(native, celery_id), timeout=30, what=name)  # noqa: B023
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        if name == "doomed":
            # Then without acks_late the attempt is lost for good (a dead letter)
            task, runs = native.wait(celery_id, 1)
            assert summary(runs) == [("timeout", "worker_lost", 0)]
            wait_for(lambda: native.exhausted(task.id), timeout=20, what="a dead letter")  # noqa: B023
        else:
            # Then with acks_late the redelivered attempt is recorded after the lost one
            task, runs = native.wait(celery_id, 2)
            assert summary(runs) == [("timeout", "worker_lost", 0), ("success", None, 0)]
            assert task.last_status is RunStatus.SUCCESS

    # And the killed processes' runner rows are closed, as the worker replaced them
    def killed_rows_closed() -> bool:
        pids = {int((native.directory / f"{n}.pid").read_text()) for n in ("doomed", "doomed_late")}
        rows = [row for row in runners(native.database) if row.process_id in pids]
        return bool(rows) and all(row.status is RunnerStatus.TIMEOUT for row in rows)

    wait_for(killed_rows_closed, timeout=30, what="the killed processes' runner rows to close")
    assert not AUDIT_FAILED.search(native.log), native.log[-3000:]


def test_chain_group_and_chord_relations_are_recorded(native: Native) -> None:
    # Given a chain, a group and a chord sent by the producer
    add = native.producer.signature("native.add")
    chained = (add.clone((1, 1)) | add.clone((2,)) | add.clone((3,))).apply_async()
    group_result = group(add.clone((i, i)) for i in range(3)).apply_async()
    total = native.producer.signature("native.total", kwargs={"extra": 100})
    chord_result = chord([add.clone((i, 1)) for i in range(2)], total)
    callback = chord_result.apply_async()
    assert chained.get(timeout=60) == 7
    assert callback.get(timeout=60) == 103

    # Then the chain's steps point to their parent and root
    steps = [chained.parent.parent, chained.parent, chained]
    tasks = [native.wait(str(step.id), 1)[0] for step in steps]
    root = str(steps[0].id)
    assert [t.celery_parent_id for t in tasks] == [None, root, str(steps[1].id)]
    assert {t.celery_root_id for t in tasks[1:]} == {root}

    # And the group's members share its id; the chord's header points to its callback
    members = [native.wait(str(r.id), 1)[0] for r in group_result.results]
    assert {m.celery_group_id for m in members} == {str(group_result.id)}
    header = [native.wait(str(r.id), 1)[0] for r in callback.parent.results]
    assert {h.celery_chord_id for h in header} == {str(callback.id)}
    assert {h.celery_group_id for h in header} == {str(callback.parent.id)}
    assert not AUDIT_FAILED.search(native.log), native.log[-3000:]


SECOND_APP_AND_EAGER = """
import json
from celery import Celery, chord, group
from tests.native_app import app, add, fail

other = Celery("other", broker="memory://")
other.conf.task_always_eager = True

@other.task(name="native.add")
def other_add(x, y):
    return x + y

sent = Celery("sent", broker="memory://")
out = {
    "other_eager": other_add.delay(1, 1).id,
    "other_sent": sent.send_task("native.add", (2, 2)).id,
    "eager": add.apply((4, 5)).id,
    "eager_failure": fail.apply().id,
}
app.taskq.auditor.writer.flush(30)
print(json.dumps(out))
"""


def test_eager_runs_are_audited_and_a_second_app_is_not(native: Native) -> None:
    # Given a process with the audited app, running tasks eagerly, beside two other apps that
    # run and send a task of the same name
    done = native.run_script(SECOND_APP_AND_EAGER)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])

    # Then the eager runs are recorded as eager, a failure with its code, message, traceback
    (eager,) = native.wait(out["eager"], 1)[1]
    assert (eager.status, eager.results, eager.eager, eager.task_runner_id) == (
        RunStatus.SUCCESS,
        9,
        True,
        None,
    )
    (failure,) = native.wait(out["eager_failure"], 1)[1]
    assert (failure.status, failure.error_code, failure.error_message, failure.eager) == (
        RunStatus.ERROR,
        "KeyError",
        "'missing thing'",
        True,
    )
    assert (failure.error_output or "").count("Traceback") == 1

    # And nothing of the other apps is
    with native.database.transaction(read_only=True) as connection:
        found = connection.execute(
            select(TaskQueue.celery_task_id).where(
                TaskQueue.celery_task_id.in_([out["other_eager"], out["other_sent"]])
            )
        ).all()
    assert found == []


KILLED_PRODUCER = """
import os, signal
from tests.native_app import add
print(add.delay(5, 6).id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_producer_killed_after_delay_leaves_its_task_recorded(native: Native) -> None:
    # Given an audited producer killed right after .delay()
    done = native.run_script(KILLED_PRODUCER)
    assert done.returncode == -signal.SIGKILL
    celery_id = done.stdout.strip().splitlines()[-1]

    # Then the task is recorded: queued by the producer, or at its first start
    task, (run,) = native.wait(celery_id, 1)
    assert (task.task_handler_class, run.status, run.results) == (
        "celery:native.add",
        RunStatus.SUCCESS,
        11,
    )


def test_beat_entries_are_linked_to_their_names(native: Native) -> None:
    # Given a real beat of the app with an entry of its own, "add every second"
    # (tests/beat_link_app.py: importing it here would need the worker's environment)
    queued_by = "beat:add every second"
    with (native.directory / "beat.log").open("wb") as log:
        beat = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "tests.beat_link_app", "beat"),
                *("--schedule", str(native.directory / "beat-schedule"), "--loglevel", "INFO"),
            ],
            env=native.env,
            cwd=native.directory,
            stdout=log,
            stderr=log,
        )

    def fired() -> list[str] | None:
        with native.database.transaction(read_only=True) as connection:
            ids = connection.execute(
                select(TaskQueue.celery_task_id)
                .where(TaskQueue.queued_by_id == queued_by)
                .order_by(TaskQueue.id)
            ).scalars()
            found = [str(celery_id) for celery_id in ids]
        return found if len(found) >= 2 else None

    # When it has fired the entry twice
    try:
        celery_ids = wait_for(fired, timeout=60, what=f"two firings\n{native.log[-2000:]}")
    finally:
        _stop(beat)

    # Then each firing's row names the entry, and the task ran with the entry's arguments
    for celery_id in celery_ids:
        task, (run,) = native.wait(celery_id, 1)
        assert (task.queued_by_id, task.task_handler_class, task.task_data) == (
            queued_by,
            "celery:native.add",
            {"args": [2, 3], "kwargs": {}},
        )
        assert (run.status, run.results) == (RunStatus.SUCCESS, 5)
        assert "adding 2 and 3" in (run.standard_output or "")
    assert not AUDIT_FAILED.search((native.directory / "beat.log").read_text(errors="replace"))
