"""PgQueuer, a Python peer on PostgreSQL, drains the same no-op jobs as the other systems.

benchmarks/run_all.py calls :func:`run_pgqueuer` once per repetition on each PostgreSQL
(durable and no-durability), beside plain Celery and celery_taskq, with the same number of
jobs. For each run, on a fresh database of that server:

1. PgQueuer's schema is installed by its own command (``python -m pgqueuer install``, its
   default durability: logged tables, as celery_taskq's);
2. **enqueue**: N jobs queued one call at a time from this process
   (``Queries.enqueue("bench_noop", None)`` over asyncpg), no worker running;
3. **drain**: PgQueuer's own worker (``pgqueuer.run(create_pgqueuer, batch_size=10)``, what
   ``pgq run`` runs, started as ``python -m benchmarks.pgqueuer_app``) drains them; jobs/s from the
   first job's pick to the last job's completion, both read from PgQueuer's own log table
   (``pgqueuer_log``, one row per status change);
4. **latency**: sequential jobs on the idle worker, each waited for, with the same random gap
   as the others; enqueue -> pick from the log's ``queued`` and ``picked`` rows;
5. the worker's resident memory after the drain.

Concurrency: one worker process (one event loop, one connection) dequeuing batches of 10, its
default and what its docs recommend over one job per dequeue. celery_taskq drains through one
runner in one pool process of its ``-c 2`` worker; plain Celery uses two pool processes. On a
2-core machine that also runs PostgreSQL, one process per system is the comparable setting;
run_all.py's ``--pgqueuer-batch-size`` changes the batch.

PgQueuer is optional: ``pip install -e '.[bench]'`` installs it. Without it, :func:`missing`
says so and run_all.py skips this system with that message.
"""

# ruff: noqa: E402 - the project root must be on sys.path before its packages are imported

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import importlib.util
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import psycopg

from benchmarks.bench_drain import (
    HOST,
    LATENCY_GAP,
    BenchmarkError,
    Children,
    Config,
    PostgresServer,
    Sample,
    child_env,
    children_memory,
    rate,
    wait_until,
)
from benchmarks.pgqueuer_app import DSN_ENV, ENTRYPOINT

BATCH_SIZE = 10
"""Jobs per dequeue: ``pgq run``'s default."""
INSTALL_HINT = "pip install -e '.[bench]'  (or: pip install 'pgqueuer[asyncpg]>=1.6')"
LOGGED_AT = "SELECT created FROM pgqueuer_log WHERE job_id = %s AND status = %s"
"""When PgQueuer logged a job's status change (the time of that transaction)."""
LATENCY_POLL = 0.005
"""Seconds between polls of the log while waiting for one latency job to be picked."""


def missing() -> str | None:
    """Why PgQueuer cannot run here (it or its asyncpg driver is not installed), or ``None``."""
    absent = [name for name in ("pgqueuer", "asyncpg") if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    return f"{' and '.join(absent)} not installed; to measure PgQueuer: {INSTALL_HINT}"


def settings(batch_size: int = BATCH_SIZE) -> dict[str, str]:
    """PgQueuer's version and the settings it runs with, for RESULTS.md."""
    found = {}
    for dist in ("pgqueuer", "asyncpg"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    return {
        "version": f"pgqueuer {found.get('pgqueuer', '?')}, asyncpg {found.get('asyncpg', '?')}",
        "schema": "`python -m pgqueuer install` (default durability: logged tables)",
        "worker": f"`pgqueuer.run(create_pgqueuer, batch_size={batch_size})` (what `pgq run` "
        "runs, on uvloop), 1 process, `PgQueuer(AsyncpgDriver(connection))`",
        "dequeue": f"batches of {batch_size}; mode continuous; max_concurrent_tasks unlimited; "
        "dequeue timeout 30 s, heartbeat timeout 30 s (defaults)",
        "job": f"`{ENTRYPOINT}`: an `async def` that does nothing; entrypoint defaults "
        "(no concurrency limit, on_failure delete)",
        "enqueue": "`Queries.enqueue(entrypoint, None)`, one call at a time, asyncpg",
    }


def dsn(postgres: PostgresServer, dbname: str) -> str:
    """A libpq connection string for ``dbname`` on ``postgres``."""
    return f"postgresql://{postgres.executor.user}@{HOST}:{postgres.port}/{dbname}"


def scalar(connection: psycopg.Connection[Any], statement: str, *params: object) -> Any:
    """The first column of the first row of ``statement`` with ``params``."""
    row = connection.execute(statement.encode(), params or None).fetchone()
    return None if row is None else row[0]


async def enqueue_one_by_one(url: str, count: int) -> float:
    """Jobs/s of ``count`` single ``Queries.enqueue()`` calls over one asyncpg connection."""
    import asyncpg
    from pgqueuer import AsyncpgDriver
    from pgqueuer.queries import Queries

    connection = await asyncpg.connect(url)
    try:
        queries = Queries(AsyncpgDriver(connection))
        await queries.enqueue(ENTRYPOINT, None)  # warm-up: prepared statements
        await connection.execute("TRUNCATE pgqueuer, pgqueuer_log")
        started = time.perf_counter()
        for _ in range(count):
            await queries.enqueue(ENTRYPOINT, None)
        return rate(count, time.perf_counter() - started)
    finally:
        await connection.close()


async def enqueue_one(url: str) -> int:
    """Queue one job; its id."""
    import asyncpg
    from pgqueuer import AsyncpgDriver
    from pgqueuer.queries import Queries

    connection = await asyncpg.connect(url)
    try:
        ids = await Queries(AsyncpgDriver(connection)).enqueue(ENTRYPOINT, None)
        return int(ids[0])
    finally:
        await connection.close()


def install_schema(children: Children, url: str, log: Path) -> None:
    """PgQueuer's schema, installed by its own command."""
    process = children.start(
        [sys.executable, "-m", "pgqueuer", "--pg-dsn", url, "install"], env=child_env(), log=log
    )
    try:
        process.wait(timeout=120)
    finally:
        children.stop(process)
    if process.returncode != 0:
        raise BenchmarkError(f"`pgqueuer install` exited with {process.returncode}; see {log}")


def run_pgqueuer(
    config: Config,
    children: Children,
    postgres: PostgresServer,
    label: str,
    batch_size: int = BATCH_SIZE,
) -> Sample:
    """One repetition of PgQueuer on ``postgres``: enqueue, drain, latency, worker RSS."""
    dbname = f"pgq_{label.replace('-', '_').lower()}"
    postgres.execute(f"CREATE DATABASE {dbname}")
    url = dsn(postgres, dbname)
    log = config.directory / f"{label}.log"
    try:
        install_schema(children, url, log)
        enqueue_rate = asyncio.run(enqueue_one_by_one(url, config.tasks))
        with psycopg.connect(url, autocommit=True) as connection:
            launched = datetime.now(UTC)
            worker = children.start(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.pgqueuer_app",
                    "--batch-size",
                    str(batch_size),
                ],
                env=child_env(**{DSN_ENV: url}),
                log=log,
            )
            try:
                done = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
                wait_until(
                    lambda: scalar(connection, done) >= config.tasks or None,
                    timeout=config.drain_timeout,
                    what=f"PgQueuer ({label}) to run {config.tasks} jobs",
                    interval=0.2,
                    alive=worker,
                    log=log,
                )
                failed = scalar(
                    connection,
                    "SELECT count(*) FROM pgqueuer_log WHERE status IN ('exception', 'failed')",
                )
                if failed:
                    raise BenchmarkError(f"PgQueuer ({label}): {failed} jobs failed; see {log}")
                first = scalar(
                    connection, "SELECT min(created) FROM pgqueuer_log WHERE status = 'picked'"
                )
                last = scalar(connection, f"{done.replace('count(*)', 'max(created)')}")
                drain_rate = rate(config.tasks, (last - first).total_seconds())
                wall = (last - launched).total_seconds()
                rss, pss = children_memory([worker.pid])
                latencies = pgqueuer_latencies(config, connection, url, worker, log)
            finally:
                children.stop(worker)
    finally:
        postgres.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
    return Sample(enqueue_rate, drain_rate, wall, latencies, rss, pss)


def pgqueuer_latencies(
    config: Config,
    connection: psycopg.Connection[Any],
    url: str,
    worker: Any,
    log: Path,
) -> list[float]:
    """Seconds from enqueue to pick of sequential jobs on the idle worker, by its log."""
    gaps = random.Random(42)  # noqa: S311 - jitter, not security
    latencies = []
    for index in range(config.latency_samples):
        job_id = asyncio.run(enqueue_one(url))
        wait_until(
            functools.partial(scalar, connection, LOGGED_AT, job_id, "picked"),
            timeout=30,
            what=f"PgQueuer latency job {index} to be picked",
            interval=LATENCY_POLL,
            alive=worker,
            log=log,
        )
        queued = scalar(connection, LOGGED_AT, job_id, "queued")
        picked = scalar(connection, LOGGED_AT, job_id, "picked")
        latencies.append((picked - queued).total_seconds())
        time.sleep(gaps.uniform(*LATENCY_GAP))
    return latencies
