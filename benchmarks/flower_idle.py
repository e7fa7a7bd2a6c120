"""Flower after minutes of an idle worker with celery_taskq installed: what its task list shows.

    .venv/bin/python benchmarks/flower_idle.py [--minutes 5]

Starts redis-server, a worker with embedded beat of benchmarks/capacity_app.py with
``install(app, audit_celery_tasks=True)`` and every celery_taskq setting at its default (only the
database is set: a SQLite file), and Flower. It sends three of the app's tasks and queues two
handler tasks (so runner tasks run too), then leaves the worker idle for ``--minutes`` while
beat ticks, and prints what Flower's HTTP API (``/api/tasks``) lists, by task name, beside how
many beat ticks ran and how many runner tasks registered a runner. Exits 1 if Flower lists an
internal ``taskq.*`` task or misses the app's. Not a test: the fast check is
tests/test_flower.py.
"""

# ruff: noqa: E402 - the project root must be on sys.path before its packages are imported

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import port_for
from sqlalchemy import text

from benchmarks import capacity_app
from benchmarks.bench_drain import (
    HOST,
    PLAIN_REDIS_DB,
    BenchmarkError,
    Children,
    child_env,
    start_redis,
    wait_until,
)
from celery_taskq import api
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import upgrade_database

CELERY = (sys.executable, "-m", "celery", "-A", "benchmarks.capacity_app")
APP_TASKS = 3
HANDLER_TASKS = 2
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def flower_tasks(port: int) -> dict[str, Any] | None:
    """Flower's ``/api/tasks``, or ``None`` while it does not answer."""
    try:
        with _opener.open(f"http://{HOST}:{port}/api/tasks", timeout=10) as response:
            found = json.loads(response.read())
            return found if isinstance(found, dict) else None
    except OSError:
        return None


def counts(database: Database) -> dict[str, int]:
    """Beat ticks carried out, runners registered, handler runs succeeded."""
    queries = {
        "OnProcess ticks": """SELECT count(*) FROM "TaskqBeatTicks" WHERE "Event" = 'process'""",
        "OnCreateTaskRunners ticks": (
            """SELECT count(*) FROM "TaskqBeatTicks" WHERE "Event" = 'create_runners'"""
        ),
        "runner tasks that registered a runner": (
            """SELECT count(*) FROM "TaskRunners" WHERE "Role" = 'runner'"""
        ),
        "handler runs succeeded": """SELECT count(*) FROM "TaskRuns" r JOIN "TaskQueue" q
            ON q."Id" = r."TaskQueueId" WHERE r."Status" = 'success'
            AND q."TaskHandlerClass" NOT LIKE 'celery:%'""",
    }
    with database.transaction(read_only=True) as connection:
        return {
            name: int(connection.execute(text(sql)).scalar_one()) for name, sql in queries.items()
        }


def main(argv: list[str] | None = None) -> int:
    """Run the worker, Flower and the wait; print what Flower lists; 0 if it is only the app's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=5.0)
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="taskq-flower-idle-"))
    children = Children(directory)
    database_url = f"sqlite:///{directory / 'taskq.db'}"
    try:
        upgrade_database(database_url)
        redis_server = start_redis(children, directory)
        broker = redis_server.url(PLAIN_REDIS_DB)
        env = child_env(
            BENCH_REDIS_URL=broker,
            BENCH_INSTALL="1",
            TASKQ_DATABASE_URL=database_url,
            FLOWER_UNAUTHENTICATED_API="true",
        )
        port = port_for.select_random()
        flower = children.start(
            [*CELERY, "flower", f"--port={port}", f"--address={HOST}"],
            env=env,
            log=directory / "flower.log",
        )
        wait_until(
            lambda: flower_tasks(port) is not None,
            timeout=60,
            what="Flower to answer",
            alive=flower,
            log=directory / "flower.log",
        )
        worker_log = directory / "worker.log"
        worker = children.start(
            [*CELERY, "worker", "-B", "-c", "2", "-l", "INFO", "-s", str(directory / "schedule")],
            env=env,
            log=worker_log,
        )
        wait_until(
            lambda: "ready." in worker_log.read_text(errors="replace"),
            timeout=60,
            what="the worker to start",
            alive=worker,
            log=worker_log,
        )
        capacity_app.app.conf.broker_url = broker
        for index in range(APP_TASKS):
            capacity_app.work.delay(index, 0.0, time.time())
        for _ in range(HANDLER_TASKS):
            api.enqueue("benchmarks.handlers.Noop", database_url=database_url)
        started = time.monotonic()
        print(f"worker and Flower up; idle for {args.minutes:g} minutes ...", flush=True)
        time.sleep(args.minutes * 60)
        idle = (time.monotonic() - started) / 60
        found = flower_tasks(port) or {}
        database = Database(database_url)
        try:
            tables = counts(database)
        finally:
            database.close()
        names = Counter(str(task.get("name")) for task in found.values())
        states = Counter(f"{task.get('name')} {task.get('state')}" for task in found.values())
        print(f"after {idle:.1f} minutes, Flower's /api/tasks lists {len(found)} tasks:")
        for name_state, count in sorted(states.items()):
            print(f"  {count:4d}  {name_state}")
        for name, count in tables.items():
            print(f"tables: {name}: {count}")
        internal = sorted(name for name in names if name.startswith("taskq."))
        ok = not internal and names.get("bench.work") == APP_TASKS
        print("OK: only the app's tasks" if ok else f"NOT OK: internal {internal}, {dict(names)}")
        return 0 if ok else 1
    except BenchmarkError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        api.close_all()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
