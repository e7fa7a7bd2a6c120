"""The claim with queues, priorities and limits, against the FIFO claim it replaced.

    .venv/bin/python benchmarks/bench_claim.py [--database sqlite|postgresql|both]
        [--backlog N] [--claims M] [--repeat R]

Two databases with the same backlog of ``--backlog`` scheduled runs: one at revision 0008 (the
schema before queues) claimed with the FIFO statement of that revision (copied below, word for
word, from ``core/statements/claim.py`` at commit 9f526cf), one at head claimed with today's
statements. Each measurement claims ``--claims`` runs one at a time, each claim in its own
transaction as a runner makes it, then puts them back to ``scheduled`` and vacuums, so every
measurement starts from the same backlog. The cases are interleaved ``--repeat`` times (each
repetition starting with the next case). Printed are the medians of the CPU per claim (of this
process and of the database's server processes: what the claim costs, which other work on a
busy machine changes little) and of the claim rate (wall clock, which it changes a lot):

- ``fifo (0008)``: the old claim, ``ORDER BY "Id"`` over ``ix_TaskRuns_scheduled (Id)``;
- ``every queue``: today's claim for a runner serving every queue (priorities 0-9 mixed);
- ``queue c``: a runner serving one of the three queues (as every runner task under Celery);
- ``queues a,b``: a runner serving two of the three queues (a third of the backlog is c's);
- ``limited``: a runner of a process that declares limits (a concurrency limit on queue a and
  one on the handler, both too high to hold anything back: the cost of checking and counting).

PostgreSQL is a private cluster started as benchmarks/bench_drain.py starts one, measured twice:
durable (fsync and synchronous_commit on) and with no durability (the test suite's settings).
"""

# ruff: noqa: E402, S608 - the project root must be on sys.path first; the SQL is constant

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import psutil
from sqlalchemy import Connection, Integer, bindparam, column, text

from benchmarks.bench_drain import postgres_server
from celery_taskq.core.clock import utc_now
from celery_taskq.core.models import UTCDateTime
from celery_taskq.core.queues import LimitSpec
from celery_taskq.core.statements import limits
from celery_taskq.core.statements.claim import ClaimScope, claim_next_run
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.driver import DriverStatement
from celery_taskq.core.storage.migrate import upgrade_database

HANDLER = "benchmarks.handlers.Noop"

DURABLE = "postgresql durable"
"""PostgreSQL with fsync and synchronous_commit on: every commit waits for the disk."""

NO_DURABILITY = "postgresql no-durability"
"""PostgreSQL with fsync, synchronous_commit and full_page_writes off (the test suite's)."""

OLD_PG_CLAIM = """
        WITH claimed AS (
            UPDATE "TaskRuns" SET "Status" = 'running', "StartedOn" = :now,
                "TaskRunnerId" = :runner_id
            WHERE "Id" = (
                SELECT "Id" FROM "TaskRuns" WHERE "Status" = 'scheduled'
                ORDER BY "Id" LIMIT 1 FOR UPDATE SKIP LOCKED
            ) AND "Status" = 'scheduled' AND EXISTS (
                SELECT 1 FROM "TaskRunners"
                WHERE "TaskRunners"."Id" = :runner_id AND "TaskRunners"."Status" = 'running'
            )
            RETURNING "Id", "TaskQueueId"
        ), task AS (
            UPDATE "TaskQueue" SET "LastStatus" = 'running' FROM claimed
            WHERE "TaskQueue"."Id" = claimed."TaskQueueId"
            RETURNING "TaskQueue"."Id", "TaskQueue"."TaskHandlerClass", "TaskQueue"."TaskData"
        )
        SELECT claimed."Id", claimed."TaskQueueId", task."TaskHandlerClass", task."TaskData",
            (SELECT r."Checkpoint" FROM "TaskRuns" r
             WHERE r."TaskQueueId" = claimed."TaskQueueId" AND r."Checkpoint" IS NOT NULL
             ORDER BY r."Id" DESC LIMIT 1) AS "Checkpoint"
        FROM claimed LEFT JOIN task ON task."Id" = claimed."TaskQueueId"
"""
"""The claim on PostgreSQL at commit 9f526cf (revision 0008)."""

OLD_SQLITE_CLAIM = """
        UPDATE "TaskRuns" SET "Status" = 'running', "StartedOn" = :now,
            "TaskRunnerId" = :runner_id
        WHERE "Id" = (
            SELECT "Id" FROM "TaskRuns" WHERE "Status" = 'scheduled' ORDER BY "Id" LIMIT 1
        ) AND "Status" = 'scheduled' AND EXISTS (
            SELECT 1 FROM "TaskRunners"
            WHERE "TaskRunners"."Id" = :runner_id AND "TaskRunners"."Status" = 'running'
        )
        RETURNING "Id", "TaskQueueId"
"""
"""The claim on SQLite at commit 9f526cf; the roll-up and input read that followed it in the
transaction are below, unchanged since."""

_TYPED = (bindparam("now", type_=UTCDateTime()), bindparam("runner_id", type_=Integer()))
_OLD_PG = DriverStatement(text(OLD_PG_CLAIM).bindparams(*_TYPED))
_OLD_SQLITE = text(OLD_SQLITE_CLAIM).bindparams(*_TYPED).columns(column("Id"), column("T"))
_SQLITE_ROLL_UP = text("""UPDATE "TaskQueue" SET "LastStatus" = 'running' WHERE "Id" = :id""")
_SQLITE_INPUT = text(
    """SELECT q."TaskHandlerClass", q."TaskData",
        (SELECT r."Checkpoint" FROM "TaskRuns" r
         WHERE r."TaskQueueId" = q."Id" AND r."Checkpoint" IS NOT NULL
         ORDER BY r."Id" DESC LIMIT 1) AS "Checkpoint"
    FROM "TaskQueue" q WHERE q."Id" = :id"""
)


def old_claim(connection: Connection, runner_id: int) -> bool:
    """The claim of revision 0008, as its runner made it; whether a run was claimed."""
    values = {"now": utc_now(), "runner_id": runner_id}
    if connection.dialect.name == "postgresql":
        return _OLD_PG.first(connection, values) is not None
    row = connection.execute(_OLD_SQLITE, values).first()
    if row is None:
        return False
    connection.execute(_SQLITE_ROLL_UP, {"id": row[1]})
    connection.execute(_SQLITE_INPUT, {"id": row[1]}).first()
    return True


def fill(database: Database, backlog: int, with_queues: bool) -> int:
    """``backlog`` due tasks, each with a scheduled run (queues a, b, c and priorities 0-9 in
    turn where the schema has them), and one live runner; return the runner's id."""
    sqlite = database.dialect == "sqlite"
    series = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
        "SELECT i FROM n"
        if sqlite
        else "SELECT i FROM generate_series(1, :count) AS n(i)"
    )
    now = "CURRENT_TIMESTAMP"
    extra_columns = ', "Queue", "Priority"' if with_queues else ""
    queue = "CASE i % 3 WHEN 0 THEN 'a' WHEN 1 THEN 'b' ELSE 'c' END"
    extra_values = f", {queue}, (i * 7) % 10" if with_queues else ""
    with database.transaction() as connection:
        connection.execute(
            text(
                f"""INSERT INTO "TaskQueue" ("TaskHandlerClass", "TaskData", "ScheduledOn",
                    "QueuedOn", "LastStatus", "MaxRetries", "TaskRunsFailed"{extra_columns})
                SELECT '{HANDLER}', '{{}}', {now}, {now}, 'scheduled', 5, 0{extra_values}
                FROM ({series}) AS s"""
            ),
            {"count": backlog},
        )
        connection.execute(
            text(
                f"""INSERT INTO "TaskRuns" ("TaskQueueId", "Status"{extra_columns})
                SELECT "Id", 'scheduled'{", " + '"Queue", "Priority"' if with_queues else ""}
                FROM "TaskQueue" ORDER BY "Id" """
            )
        )
        return int(
            connection.execute(
                text(
                    """INSERT INTO "TaskRunners" ("ProcessId", "StartedOn", "Status", "Hostname")
                    VALUES (1, CURRENT_TIMESTAMP, 'running', 'bench') RETURNING "Id" """
                )
            ).scalar_one()
        )


def put_back(database: Database, *, with_limits: bool) -> None:
    """Every claimed run back to ``scheduled`` (and the limits' counts to 0), then vacuum, so
    the next measurement starts from the same backlog."""
    with database.transaction() as connection:
        connection.execute(
            text(
                """UPDATE "TaskRuns" SET "Status" = 'scheduled', "StartedOn" = NULL,
                "TaskRunnerId" = NULL WHERE "Status" = 'running'"""
            )
        )
        if with_limits:
            connection.execute(text('UPDATE "TaskqLimits" SET "Running" = 0'))
    if database.dialect == "postgresql":
        with database.autocommit() as connection:
            connection.execute(text("VACUUM ANALYZE"))
    else:
        with database.transaction() as connection:
            connection.execute(text("ANALYZE"))


@dataclass(frozen=True)
class Measurement:
    """One measurement: claims per second, and CPU per claim of this process and of the
    database's server processes (what the claim costs, whatever else the machine runs)."""

    rate: float
    cpu_us: float


def server_processes(database: Database) -> list[psutil.Process]:
    """The PostgreSQL backends serving ``database`` (none for SQLite: it runs in this process)."""
    if database.dialect != "postgresql":
        return []
    with database.transaction(read_only=True) as connection:
        pids = connection.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars()
        return [psutil.Process(pid) for pid in pids]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User and system CPU of this process and of ``processes``."""
    total = time.process_time()
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def measure_once(
    database: Database, claims: int, claim_one: Callable[[Connection], bool], *, new: bool
) -> Measurement:
    """Claim ``claims`` runs, each in its own transaction, then put them back."""
    with database.transaction() as connection:  # the pooled connection is open before timing
        claim_one(connection)
    put_back(database, with_limits=new)
    servers = server_processes(database)
    cpu_before, started = cpu_seconds(servers), time.perf_counter()
    for _ in range(claims):
        with database.transaction() as connection:
            if not claim_one(connection):
                raise RuntimeError("the backlog ran out: give a larger --backlog")
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(servers) - cpu_before
    put_back(database, with_limits=new)
    return Measurement(claims / elapsed, cpu / claims * 1e6)


@contextlib.contextmanager
def databases(kind: str, directory: Path) -> Iterator[tuple[str, str]]:
    """URLs of two empty databases of ``kind``: one to be upgraded to 0008, one to head.

    ``kind`` is ``sqlite``, ``postgresql durable`` (fsync and synchronous_commit on) or
    ``postgresql no-durability`` (the test suite's settings)."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'old.db'}", f"sqlite:///{directory / 'new.db'}"
        return
    with postgres_server(directory, durable=kind == DURABLE) as server:
        server.execute("CREATE DATABASE old_claim")
        server.execute("CREATE DATABASE new_claim")
        yield server.url("old_claim"), server.url("new_claim")


def measure(kind: str, backlog: int, claims: int, repeat: int) -> dict[str, list[Measurement]]:
    """The claim rates of each case on ``kind``, one per repetition."""
    with tempfile.TemporaryDirectory() as directory, databases(kind, Path(directory)) as urls:
        upgrade_database(urls[0], "0008")
        upgrade_database(urls[1])
        old, new = Database(urls[0]), Database(urls[1])
        try:
            old_runner = fill(old, backlog, with_queues=False)
            new_runner = fill(new, backlog, with_queues=True)
            with new.transaction() as connection:
                limits.store_limits(
                    connection,
                    {
                        "queue:a": LimitSpec(max_running=1_000_000),
                        f"handler:{HANDLER}": LimitSpec(max_running=1_000_000),
                    },
                )
            put_back(old, with_limits=False)
            put_back(new, with_limits=True)

            def new_claim(scope: ClaimScope) -> Callable[[Connection], bool]:
                return lambda c: claim_next_run(c, new_runner, utc_now(), scope) is not None

            cases: dict[str, tuple[Database, Callable[[Connection], bool]]] = {
                "fifo (0008)": (old, lambda c: old_claim(c, old_runner)),
                "every queue": (new, new_claim(ClaimScope())),
                "queue c": (new, new_claim(ClaimScope(queues=("c",)))),
                "queues a,b": (new, new_claim(ClaimScope(queues=("a", "b")))),
                "limited": (new, new_claim(ClaimScope(limited=True))),
            }
            rates: dict[str, list[Measurement]] = {name: [] for name in cases}
            names = list(cases)
            for repetition in range(repeat):
                # each repetition starts with the next case, so no case always goes first
                shift = repetition % len(names)
                for name in names[shift:] + names[:shift]:
                    database, claim_one = cases[name]
                    rates[name].append(
                        measure_once(database, claims, claim_one, new=database is new)
                    )
            return rates
        finally:
            old.close()
            new.close()


def main(argv: list[str] | None = None) -> int:
    """Run the claim benchmark and print a Markdown table; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--claims", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    postgresql = (DURABLE, NO_DURABILITY)
    kinds = {"sqlite": ("sqlite",), "postgresql": postgresql}.get(
        args.database, ("sqlite", *postgresql)
    )
    print(
        f"backlog {args.backlog:,} scheduled runs; {args.claims:,} claims a measurement; "
        f"median of {args.repeat} interleaved repetitions; load average at the start "
        f"{_load()}"
    )
    print()
    print(
        "| database | case | CPU per claim (µs, median) | vs fifo (0008) | claims/s (median) "
        "| vs fifo (0008) | claims/s spread |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for kind in kinds:
        results = measure(kind, args.backlog, args.claims, args.repeat)
        base_cpu = statistics.median(m.cpu_us for m in results["fifo (0008)"])
        base_rate = statistics.median(m.rate for m in results["fifo (0008)"])
        for name, values in results.items():
            cpu = statistics.median(m.cpu_us for m in values)
            rate = statistics.median(m.rate for m in values)
            low, high = min(m.rate for m in values), max(m.rate for m in values)
            print(
                f"| {kind} | {name} | {cpu:,.0f} | {cpu / base_cpu:.2f}x | {rate:,.0f} "
                f"| {rate / base_rate:.2f}x | {low:,.0f}-{high:,.0f} |"
            )
    print(f"\nload average at the end {_load()}")
    return 0


def _load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
