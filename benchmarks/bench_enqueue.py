"""Enqueue: ``enqueue()`` beside plain ``.delay()``, ``enqueue_many()``, and where a batch's
time goes on the server, on a durable and a no-durability PostgreSQL.

    .venv/bin/python benchmarks/bench_enqueue.py [--tasks N] [--many N] [--rounds R]

For each PostgreSQL (started as benchmarks/bench_drain.py starts them, with a private
redis-server for ``.delay()`` and for ``enqueue()``'s work notices):

- ``enqueue()`` and plain Celery's ``.delay()`` (benchmarks/plain_app.py, no worker running)
  take turns in chunks of 100 calls, so both see the same machine; their rates and ratio;
- ``enqueue_many()`` in batches of 1,000 (as run_all.py measures it);
- the batch statement alone (``celery_taskq.core.intake``'s, columns built beforehand) on the
  driver: as it is, without the runs' insert (the tasks only), and again after dropping the
  trigram search index (migration 0012), each in turns of one batch. The differences are what
  the runs (their indexes and foreign key) and the search index cost per task.

Figures are medians of ``--rounds`` rounds. Nothing is written to RESULTS.md.
"""

# ruff: noqa: E402 - the project root must be on sys.path before its packages are imported

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import psycopg

from benchmarks import plain_app
from benchmarks.bench_drain import (
    HANDLER,
    HOST,
    PLAIN_REDIS_DB,
    TASKQ_REDIS_DB,
    Children,
    PostgresServer,
    RedisServer,
    postgres_server,
    start_redis,
)
from celery_taskq import api
from celery_taskq.core.statements import batch_insert_pg
from celery_taskq.core.storage.migrate import upgrade_database

BATCH = 1000
CHUNK = 100
SEARCH_INDEX = "ix_TaskQueue_search"
TASKS_AND_RUNS = batch_insert_pg.statement((False,) * len(batch_insert_pg.COLUMNS))
"""The batch statement as enqueue_many() sends it for BATCH alike tasks: one value a column."""
TASKS_ONLY = (
    TASKS_AND_RUNS.split("), new_runs AS")[0]
    + ')\nSELECT array_agg("Id" ORDER BY "Id") FROM new_tasks'
)
"""The batch statement without the runs' insert: what the tasks alone cost."""


def rate(count: int, seconds: float) -> float:
    """Per second."""
    return count / seconds if seconds > 0 else float("nan")


def taking_turns(calls: dict[str, Callable[[], None]], count: int, chunk: int) -> dict[str, float]:
    """Rates (/s) of each of ``calls`` run ``count`` times, in turns of ``chunk`` calls."""
    spent = dict.fromkeys(calls, 0.0)
    for turn in range(count // chunk):
        order = list(calls.items())
        for name, call in order if turn % 2 else order[::-1]:
            started = time.perf_counter()
            for _ in range(chunk):
                call()
            spent[name] += time.perf_counter() - started
    return {name: rate(count // chunk * chunk, seconds) for name, seconds in spent.items()}


def columns() -> dict[str, Any]:
    """The batch statement's parameters for BATCH due no-op tasks."""
    now = datetime.now(UTC)
    return {
        "count": BATCH,
        "handler": HANDLER,
        "data": "{}",
        "scheduled_on": now,
        "queued_on": now,
        "queued_by": None,
        "last_status": "scheduled",
        "max_retries": 5,
        "title": None,
        "queue": "default",
        "priority": 0,
    }


def statement_rates(server: PostgresServer, dbname: str, batches: int) -> dict[str, float]:
    """Tasks/s of the batch statement alone: with and without runs, on a fresh database with
    the trigram search index and on one without it, all in turns of one batch."""
    statements = {"tasks and runs": TASKS_AND_RUNS, "tasks only": TASKS_ONLY}
    calls: dict[str, Callable[[], None]] = {}
    with contextlib.ExitStack() as stack:
        for search in (True, False):
            name = f"{dbname}_{'search' if search else 'plain'}"
            server.execute(f"CREATE DATABASE {name}")
            stack.callback(server.execute, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            upgrade_database(server.url(name))
            connection = stack.enter_context(
                psycopg.connect(host=HOST, port=server.port, user=server.executor.user, dbname=name)
            )
            if not search:
                connection.execute(f'DROP INDEX IF EXISTS "{SEARCH_INDEX}"')
                connection.commit()
            label = "search index" if search else "no search index"
            for statement_name, sql in statements.items():
                calls[f"{statement_name}, {label}"] = batch_call(connection, sql)
        for call in calls.values():
            call()  # prepared, cached
        found = taking_turns(calls, batches, 1)
    return {name: value * BATCH for name, value in found.items()}


def batch_call(connection: psycopg.Connection[Any], sql: str) -> Callable[[], None]:
    """A call that runs ``sql`` for one batch and commits."""

    def once() -> None:
        connection.execute(sql, columns()).fetchone()
        connection.commit()

    return once


def measure(
    server: PostgresServer, redis_server: RedisServer, rounds: int, tasks: int, many: int
) -> dict[str, list[float]]:
    """Every figure of one PostgreSQL, ``rounds`` times."""
    results: dict[str, list[float]] = {}
    plain_app.app.conf.broker_url = redis_server.url(PLAIN_REDIS_DB)
    for index in range(rounds):
        dbname = f"enqueue_{index}"
        server.execute(f"CREATE DATABASE {dbname}")
        url = server.url(dbname)
        upgrade_database(url)
        try:

            def delay() -> None:
                plain_app.noop.delay()

            def enqueue(url: str = url) -> None:
                api.enqueue(HANDLER, database_url=url)

            calls = {".delay()": delay, "enqueue()": enqueue}
            taking_turns(calls, 2 * CHUNK, CHUNK)  # connections, imports
            found = taking_turns(calls, tasks, CHUNK)
            found["enqueue() / .delay()"] = found["enqueue()"] / found[".delay()"]
            batch = [{"handler": HANDLER}] * BATCH
            started = time.perf_counter()
            for _ in range(many // BATCH):
                api.enqueue_many(batch, database_url=url)
            found["enqueue_many()"] = rate(many // BATCH * BATCH, time.perf_counter() - started)
            api.close_all()
            found |= statement_rates(server, dbname, max(many // BATCH // 2, 2))
        finally:
            api.close_all()
            server.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        for name, value in found.items():
            results.setdefault(name, []).append(value)
    return results


def main(argv: list[str] | None = None) -> int:
    """Measure and print; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=2000, help="enqueue() and .delay() calls")
    parser.add_argument("--many", type=int, default=20_000, help="tasks through enqueue_many()")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="taskq-bench-enqueue-") as directory:
        children = Children(Path(directory))
        try:
            redis_server = start_redis(children, Path(directory))
            os.environ["TASKQ_BROKER_URL"] = redis_server.url(TASKQ_REDIS_DB)
            for durable in (True, False):
                label = "durable" if durable else "no-durability"
                with postgres_server(Path(directory), durable) as server:
                    results = measure(server, redis_server, args.rounds, args.tasks, args.many)
                print(f"## {label} PostgreSQL (medians of {args.rounds})")
                for name, values in results.items():
                    unit = "x" if "/" in name else " /s"
                    print(f"- {name}: {statistics.median(values):,.2f}{unit}")
        finally:
            children.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
