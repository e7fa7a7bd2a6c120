"""The measurements of benchmarks/run_all.py that are not a drain: ``enqueue_many()``'s rate,
the OnProcess tick over a large ``TaskQueue`` (due work, and nothing due), and a standalone
runner's resident memory."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
from sqlalchemy import text

from benchmarks import bench_drain
from benchmarks.bench_drain import (
    HANDLER,
    BenchmarkError,
    Children,
    PostgresServer,
    child_env,
    rate,
    wait_until,
)
from benchmarks.run_all_results import ENQUEUE_MANY_BATCH
from celery_taskq import api
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database

LOAD_TICK_ROWS = """
INSERT INTO "TaskQueue" ("Id", "TaskHandlerClass", "TaskData", "ScheduledOn", "QueuedOn",
    "LastStatus", "MaxRetries", "TaskRunsFailed")
SELECT g, 'benchmarks.handlers.Noop', '{}'::jsonb,
       CASE WHEN g > :size THEN now() + interval '1 day' ELSE now() - interval '1 hour' END,
       now() - interval '1 hour',
       CASE WHEN g > :size - :due THEN NULL ELSE 'success' END,
       5, 0
FROM generate_series(1, :size + :future) AS g
"""
"""``size`` tasks of which the last ``due`` never ran and are due, the rest succeeded, plus
``future`` tasks scheduled a day ahead (not due)."""
RESET_DUE = """UPDATE "TaskQueue" SET "LastStatus" = :status
WHERE "Id" > :size - :due AND "Id" <= :size"""


def enqueue_many_rate(database_url: str, tasks: int) -> float:
    """Tasks/s of ``enqueue_many()`` in batches of ENQUEUE_MANY_BATCH."""
    batch = [{"handler": HANDLER}] * ENQUEUE_MANY_BATCH
    api.enqueue_many(batch[:10], database_url=database_url)  # warm-up: engine, handler import
    done = 0
    started = time.perf_counter()
    while done < tasks:
        size = min(ENQUEUE_MANY_BATCH, tasks - done)
        api.enqueue_many(batch[:size], database_url=database_url)
        done += size
    return rate(done, time.perf_counter() - started)


def tick_milliseconds(
    postgres: PostgresServer, size: int, due: int, repeat: int, *, idle: bool = False
) -> tuple[list[float], list[float]]:
    """Milliseconds of the OnProcess tick over ``size`` TaskQueue rows with ``due`` due, and
    (with ``idle``) over the same rows with nothing due."""
    dbname = f"tick_{size}_{os.getpid()}"
    postgres.execute(f"CREATE DATABASE {dbname} TEMPLATE bench_template")
    url = postgres.url(dbname)
    database = Database(url)
    try:
        with database.transaction() as connection:
            connection.execute(text(LOAD_TICK_ROWS), {"size": size, "due": due, "future": due})
            connection.execute(
                text(
                    """SELECT setval(pg_get_serial_sequence('"TaskQueue"', 'Id'),
                    (SELECT max("Id") FROM "TaskQueue"))"""
                )
            )
        with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("VACUUM ANALYZE"))
        settings = Settings(database_url=url, pubsub_url="none", process_interval=0.001)
        service = TaskQueueService(database, settings)
        busy = ticks(database, service, settings, size, due, repeat, idle=False)
        return busy, ticks(
            database, service, settings, size, due, repeat, idle=True
        ) if idle else []
    finally:
        database.close()
        postgres.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def ticks(
    database: Database,
    service: TaskQueueService,
    settings: Settings,
    size: int,
    due: int,
    repeat: int,
    *,
    idle: bool,
) -> list[float]:
    """``repeat`` timed ticks after a warm-up, each after the due tasks are reset (``idle``:
    marked succeeded, so nothing is due)."""
    samples = []
    for index in range(repeat + 1):
        with database.transaction() as connection:
            connection.execute(text('DELETE FROM "TaskRuns"'))
            status = "success" if idle else None
            connection.execute(text(RESET_DUE), {"size": size, "due": due, "status": status})
        time.sleep(0.01)  # a new beat slot for the tick claim
        started = time.perf_counter()
        service.claim_beat_tick("process", settings.process_interval)
        given = service.process_queue().tasks_given_runs
        elapsed = (time.perf_counter() - started) * 1000
        if given != (0 if idle else due):
            raise BenchmarkError(f"tick at {size} (idle={idle}): {given} runs created")
        if index:  # the first tick warms the caches
            samples.append(elapsed)
    return samples


def standalone_runner_rss(
    children: Children, target: bench_drain.TaskqTarget, directory: Path, tasks: int
) -> float:
    """MiB of a standalone ``celery-taskq runner`` after it has run ``tasks`` no-op jobs."""
    try:
        api.enqueue_many([{"handler": HANDLER}] * tasks, database_url=target.database_url)
        log = directory / "standalone-runner.log"
        process = children.start(
            [sys.executable, "-m", "celery_taskq", "runner"],
            env=child_env(
                TASKQ_DATABASE_URL=target.database_url, TASKQ_BROKER_URL=target.broker_url
            ),
            log=log,
        )
        database = Database(target.database_url)
        try:
            wait_until(
                lambda: bench_drain.successes(database) >= tasks or None,
                timeout=120 + tasks / 5,
                what="the standalone runner to drain",
                alive=process,
                log=log,
            )
            return float(psutil.Process(process.pid).memory_info().rss / 2**20)
        finally:
            database.close()
            children.stop(process)
    finally:
        api.close_all()
        target.cleanup()
