"""The OnProcess tick's profile on PostgreSQL: where a tick's time goes.

    .venv/bin/python benchmarks/bench_tick.py [--size 1000000] [--due 1000] [--repeat 7]
                                              [--durability both|durable|no-durability]

On a private PostgreSQL (durable: fsync and synchronous_commit on; no-durability: the test
suite's settings; ``both``: one after the other), the script loads ``--size`` TaskQueue rows of
which ``--due`` are due, as run_all.py's tick figure does. Then, after a warm-up, ``--repeat``
ticks with the due tasks reset (``due``) and ``--repeat`` ticks with nothing due (``idle``):
the beat-tick claim and ``process_queue()`` timed apart, and the statements the tick sent
(on both of the Database's engines; BEGIN is implicit in psycopg, COMMIT is counted).

Last, the run-creation statement of a due tick under ``EXPLAIN (ANALYZE, BUFFERS)``: the
buffers it touches, its time and the time of its foreign-key checks, on the schema as migrated
and without the search's trigram index (dropped inside a transaction that is rolled back): what
that index costs each task row the tick rolls up. (The indexes that hold only NULLs for handler
tasks are partial since migration 0014.) The figures are medians; on a shared machine compare
the variants of one run, not runs.
"""

# ruff: noqa: E402 - the project root must be on sys.path before its packages are imported

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from sqlalchemy import Engine, event, text

from benchmarks.bench_drain import PostgresServer, postgres_server
from benchmarks.run_all_measures import LOAD_TICK_ROWS, RESET_DUE
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import upgrade_database

SEARCH_INDEX = "ix_TaskQueue_search"
"""The trigram index of the task list's search (migration 0012): a task row written outside
PostgreSQL's HOT path adds its trigrams to it."""


@contextmanager
def statements_sent(database: Database) -> Iterator[list[str]]:
    """The statements (and COMMITs) the database's engines send inside the block."""
    sent: list[str] = []
    engines: list[Engine] = [database.engine, database._autocommitting()]

    def on_execute(*args: Any) -> None:
        sent.append(str(args[2]))

    def on_commit(*_args: Any) -> None:
        sent.append("COMMIT")

    for engine in engines:
        event.listen(engine, "before_cursor_execute", on_execute)
        event.listen(engine, "commit", on_commit)
    try:
        yield sent
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", on_execute)
            event.remove(engine, "commit", on_commit)


def reset(database: Database, size: int, due: int, *, idle: bool) -> None:
    """No runs; the due tasks never ran (or, ``idle``, succeeded)."""
    with database.transaction() as connection:
        connection.execute(text('DELETE FROM "TaskRuns"'))
        status = "success" if idle else None
        connection.execute(text(RESET_DUE), {"size": size, "due": due, "status": status})


def profile_ticks(
    database: Database, service: TaskQueueService, args: argparse.Namespace, *, idle: bool
) -> dict[str, float]:
    """Median milliseconds of the claim and of ``process_queue()``, and statements a tick."""
    claims, processes, statements = [], [], []
    for index in range(args.repeat + 1):
        reset(database, args.size, args.due, idle=idle)
        time.sleep(0.01)  # a new beat slot for the claim
        with statements_sent(database) as sent:
            started = time.perf_counter()
            service.claim_beat_tick("process", service.settings.process_interval)
            claimed = time.perf_counter()
            report = service.process_queue()
            ended = time.perf_counter()
        if report.tasks_given_runs != (0 if idle else args.due):
            raise SystemExit(f"the tick created {report.tasks_given_runs} runs")
        if index:  # the first tick warms the caches
            claims.append((claimed - started) * 1000)
            processes.append((ended - claimed) * 1000)
            statements.append(len(sent))
    return {
        "claim": statistics.median(claims),
        "process_queue": statistics.median(processes),
        "tick": statistics.median(c + p for c, p in zip(claims, processes, strict=True)),
        "statements": statistics.median(statements),
    }


def creation_statement(
    database: Database, service: TaskQueueService, args: argparse.Namespace
) -> tuple[str, Any]:
    """The SQL of a due tick's run creation and its parameters, as sent."""
    reset(database, args.size, args.due, idle=False)
    captured: list[tuple[str, Any]] = []

    def on_execute(*event_args: Any) -> None:
        if 'INSERT INTO "TaskRuns"' in str(event_args[2]):
            captured.append((str(event_args[2]), event_args[3]))

    event.listen(database.engine, "before_cursor_execute", on_execute)
    try:
        service.process_queue()
    finally:
        event.remove(database.engine, "before_cursor_execute", on_execute)
    return captured[0]


def explain(
    database: Database, statement: tuple[str, Any], args: argparse.Namespace, *, search: bool
) -> tuple[int, float, float]:
    """Buffers, execution ms and foreign-key check ms of the statement after a reset, in a
    transaction that is rolled back (without ``search``: with the search index dropped in it)."""
    reset(database, args.size, args.due, idle=False)
    sql, parameters = statement
    with database.engine.connect() as connection, connection.begin() as transaction:
        if not search:
            connection.exec_driver_sql(f'DROP INDEX IF EXISTS "{SEARCH_INDEX}"')
        row = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, parameters
        ).one()
        transaction.rollback()
    plan = row[0][0]
    top = plan["Plan"]
    buffers = int(top["Shared Hit Blocks"]) + int(top.get("Shared Read Blocks", 0))
    checks = sum(float(trigger["Time"]) for trigger in plan.get("Triggers", []))
    return buffers, float(plan["Execution Time"]), checks


def load(postgres: PostgresServer, args: argparse.Namespace) -> str:
    """A database with the tick's rows, analysed; its URL."""
    postgres.execute("CREATE DATABASE tick")
    url = postgres.url("tick")
    upgrade_database(url)
    database = Database(url)
    try:
        with database.transaction() as connection:
            connection.execute(
                text(LOAD_TICK_ROWS), {"size": args.size, "due": args.due, "future": args.due}
            )
            connection.execute(
                text(
                    """SELECT setval(pg_get_serial_sequence('"TaskQueue"', 'Id'),
                    (SELECT max("Id") FROM "TaskQueue"))"""
                )
            )
        with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("VACUUM ANALYZE"))
    finally:
        database.close()
    return url


def measure(durable: bool, args: argparse.Namespace) -> list[str]:
    """The report's lines for one server."""
    label = "durable" if durable else "no-durability"
    with postgres_server(Path(tempfile.mkdtemp(prefix="taskq-bench-tick-")), durable) as pg:
        url = load(pg, args)
        database = Database(url)
        try:
            settings = Settings(database_url=url, pubsub_url="none", process_interval=0.001)
            service = TaskQueueService(database, settings)
            lines = []
            for idle in (False, True):
                figures = profile_ticks(database, service, args, idle=idle)
                lines.append(
                    f"| {label} | {'nothing' if idle else f'{args.due:,}'} | "
                    f"{figures['tick']:.1f} | {figures['claim']:.2f} | "
                    f"{figures['process_queue']:.1f} | {figures['statements']:.0f} |"
                )
            statement = creation_statement(database, service, args)
            for search in (True, False):
                plans = [explain(database, statement, args, search=search) for _ in range(3)]
                buffers, ms, checks = (
                    statistics.median(values) for values in zip(*plans, strict=True)
                )
                lines.append(
                    f"| {label} | {'as migrated' if search else 'without the search index'} | "
                    f"{ms:.1f} | {buffers:,.0f} | {checks:.1f} |"
                )
            return lines
        finally:
            database.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--durability", choices=("both", "durable", "no-durability"), default="both"
    )
    args = parser.parse_args()
    servers = {"both": (True, False), "durable": (True,), "no-durability": (False,)}
    print(f"OnProcess tick over {args.size:,} TaskQueue rows, medians of {args.repeat} ticks")
    print()
    print("| server | due | tick ms | claim ms | process_queue ms | statements |")
    print("|---|---:|---:|---:|---:|---:|")
    explained = []
    for durable in servers[args.durability]:
        lines = measure(durable, args)
        print("\n".join(lines[:2]))
        explained.extend(lines[2:])
    print()
    print("| server | indexes | run creation ms | buffers touched | foreign-key checks ms |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(explained))


if __name__ == "__main__":
    main()
