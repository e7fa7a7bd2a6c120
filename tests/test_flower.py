"""Flower shows the app's work: celery_taskq's internal tasks are quiet unless asked.

A real worker with embedded beat on a Redis broker (database: SQLite) and a real Flower
process; the tests read Flower's HTTP API on 127.0.0.1.

- With the default settings, Flower's task list (``/api/tasks``) holds the app's tasks and none
  of celery_taskq's, while beat ticks and a runner task runs a handler task: the internal tasks
  send no task events and no ``task-sent`` event. ``install()`` leaves the app's event settings
  (off, Celery's default): Flower turns the worker's task events on itself, with its
  ``enable_events`` control command.
- With ``internal_task_events`` on, Flower sees them. That test does not settle for Flower
  answering 200: it checks what Flower can only know from events. With
  ``worker_send_task_events`` off Flower never learns that a runner task was received or
  started; with ``task_send_sent_event`` off no OnProcess task has a ``sent`` time. (Both
  checked by hand by switching each setting off.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import port_for
import pytest
from sqlalchemy import func, select

from celery_taskq.api import enqueue
from celery_taskq.celery import PROCESS_TASK, RUNNER_TASK
from celery_taskq.core.models import BeatTick, RunStatus
from celery_taskq.core.storage.database import Database
from tests.celery_stack import CeleryStack
from tests.helpers import runs_of, wait_for

pytestmark = pytest.mark.slow

FLOWER_HOST = "127.0.0.1"

# Flower 2.x answers 401 on /api/* unless auth is configured or this is set.
UNAUTHENTICATED_API = ("FLOWER_UNAUTHENTICATED_API", "true")

# urllib honours http_proxy & co.; Flower is local, so never go through a proxy.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def redis_stack(
    tmp_path: Path, sqlite_template: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CeleryStack]:
    """SQLite database, real Redis broker; every process started is stopped at the end."""
    monkeypatch.setenv(*UNAUTHENTICATED_API)  # CeleryStack.env copies os.environ
    database_path = tmp_path / "taskq.db"
    shutil.copyfile(sqlite_template, database_path)
    stack = CeleryStack(f"sqlite:///{database_path}", redis_url, tmp_path)
    yield stack
    stack.stop_all()


class Flower:
    """Client of one Flower process's HTTP API."""

    def __init__(self, port: int) -> None:
        self.base = f"http://{FLOWER_HOST}:{port}"

    def get(self, path: str) -> Any:
        """The decoded JSON of ``GET path``; ``None`` while Flower is not answering yet."""
        try:
            with _opener.open(self.base + path, timeout=10) as response:
                return json.loads(response.read())
        except (ConnectionError, urllib.error.URLError, TimeoutError):
            return None

    def tasks(self) -> list[dict[str, Any]]:
        """Every task Flower has seen events of."""
        found = self.get("/api/tasks")
        return list(found.values()) if isinstance(found, dict) else []


def start_flower(stack: CeleryStack, app: str = "celery_taskq") -> Flower:
    port = port_for.select_random()
    stack.start(
        "-m",
        "celery",
        "-A",
        app,
        "flower",
        f"--port={port}",
        f"--address={FLOWER_HOST}",
        log_name="flower.log",
    )
    flower = Flower(port)
    # Events sent before Flower listens are never seen: wait until it answers.
    wait_for(lambda: flower.get("/api/tasks") is not None, timeout=60, what="Flower to answer")
    return flower


def is_ours(worker: Any) -> bool:
    return isinstance(worker, str) and worker.startswith("worker@")


STACK_OVERRIDES = (
    "TASKQ_TASK_RUNNER_LIMIT",
    "TASKQ_PROCESS_INTERVAL",
    "TASKQ_CREATE_RUNNERS_INTERVAL",
    "TASKQ_RUNNER_MAX_IDLE",
    "TASKQ_POLL_INTERVAL",
    "TASKQ_HEARTBEAT_INTERVAL",
)
"""The stack's quicker settings, dropped so that the worker runs with the defaults."""


def test_flower_lists_the_apps_tasks_and_no_internal_task(redis_stack: CeleryStack) -> None:
    # Given an app with install() (tests/native_app.py), a worker with embedded beat at the
    # default settings, and Flower listening
    stack = redis_stack
    stack.extra_env.update(NATIVE_BROKER_URL=stack.broker_url)
    flower = start_flower(stack, "tests.native_app")
    stack.unset_env.update(STACK_OVERRIDES)
    stack.start(
        *("-m", "celery", "-A", "tests.native_app", "worker", "-B", "-c", "2", "-l", "INFO"),
        *("--hostname", "worker@%h", "--schedule", str(stack.directory / "schedule")),
        log_name="worker.log",
    )
    # (the app sends no task events of its own: Flower turns them on, every 5 s)
    worker_log = stack.directory / "worker.log"
    wait_for(
        lambda: ENABLED_BY_FLOWER in worker_log.read_text(errors="replace"),
        timeout=30,
        what=f"Flower to turn the worker's task events on (see {worker_log})",
    )
    # When the app's task runs, and a handler task is run by a runner task
    app_task = stack_app_task(stack)
    task_id = enqueue("tests.handlers.Succeed", {"n": 1}, database_url=stack.database_url)
    db = Database(stack.database_url)
    try:
        wait_for(
            lambda: [run.status for run in runs_of(db, task_id)] == [RunStatus.SUCCESS],
            timeout=60,
            what=f"a runner task to run the handler task (see {stack.directory / 'worker.log'})",
        )
        ticks_seen = wait_for(
            lambda: process_ticks(db) >= 3 and process_ticks(db),
            timeout=30,
            what="three OnProcess ticks",
        )
    finally:
        db.close()
    # Then Flower lists the app's task, and none of celery_taskq's
    wait_for(
        lambda: [
            t for t in flower.tasks() if (t.get("uuid"), t.get("state")) == (app_task, "SUCCESS")
        ],
        timeout=30,
        what="Flower to show the app's task succeeded",
    )
    names = {task.get("name") for task in flower.tasks()}
    assert names == {"native.add"}, f"Flower lists {names} after {ticks_seen} OnProcess ticks"


ENABLED_BY_FLOWER = "Events of group {task} enabled by remote."
"""What a worker logs (INFO) when Flower's ``enable_events`` command turns its task events on."""


def stack_app_task(stack: CeleryStack) -> str:
    """Send ``native.add`` as the app would; its Celery task id."""
    caller = subprocess.run(
        [sys.executable, "-c", SEND_APP_TASK],
        env=stack.env,
        cwd=stack.directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert caller.returncode == 0, caller.stderr
    return caller.stdout.strip()


SEND_APP_TASK = """
from tests.native_app import add
print(add.delay(1, 2).id)
"""


def process_ticks(database: Database) -> int:
    with database.transaction(read_only=True) as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(BeatTick).where(BeatTick.event == "process")
            ).scalar_one()
        )


def test_with_internal_task_events_flower_sees_the_runner_and_event_tasks(
    redis_stack: CeleryStack,
) -> None:
    stack = redis_stack
    stack.extra_env.update(TASKQ_INTERNAL_TASK_EVENTS="true")
    flower = start_flower(stack)
    stack.start_worker()
    task_ids = [
        enqueue("tests.handlers.Succeed", {"n": n}, database_url=stack.database_url)
        for n in range(3)
    ]
    db = Database(stack.database_url)
    try:
        wait_for(
            lambda: all(
                [run.status for run in runs_of(db, task_id)] == [RunStatus.SUCCESS]
                for task_id in task_ids
            ),
            timeout=90,
            what="the worker to run the enqueued tasks",
        )
    finally:
        db.close()

    # The worker answers Flower's inspect broadcast ...
    workers = wait_for(
        lambda: [name for name in flower.get("/api/workers?refresh=1") or {} if is_ours(name)],
        timeout=60,
        what=f"Flower to list the worker (see {stack.directory / 'flower.log'})",
    )
    # ... and its heartbeats reach Flower's event state, where it is alive.
    status = wait_for(
        lambda: flower.get("/api/workers?status=1"),
        timeout=30,
        what="Flower's worker status",
    )
    assert status.get(workers[0]) is True, status

    def seen(name: str, states: set[str]) -> list[dict[str, Any]]:
        return [
            task
            for task in flower.tasks()
            if task.get("name") == name and task.get("state") in states and is_ours(task["worker"])
        ]

    # Task events: a runner task was received and started (or finished) by our worker ...
    (runner, *_) = wait_for(
        lambda: seen(RUNNER_TASK, {"STARTED", "SUCCESS"}),
        timeout=60,
        what=f"Flower to show a started {RUNNER_TASK} task",
    )
    # (With worker_send_task_events off, Flower still learns of a runner task's success, but
    # never that it was received or started.)
    assert runner["received"] is not None, runner
    assert runner["started"] is not None, runner
    # ... and beat's OnProcess ticks succeeded, with their result, and were sent with a
    # task-sent event (task_send_sent_event).
    processed = wait_for(
        lambda: [task for task in seen(PROCESS_TASK, {"SUCCESS"}) if task.get("sent")],
        timeout=60,
        what=f"Flower to show a succeeded {PROCESS_TASK} task with its task-sent event",
    )
    assert any("runs created" in str(task.get("result")) for task in processed), processed
