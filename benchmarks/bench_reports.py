"""Reads at scale: the task list, a filtered page, a task page and the report on 1,000,000 tasks.

    .venv/bin/python benchmarks/bench_reports.py [--tasks N] [--runs-per-task R] [--repeat K]

Starts a private PostgreSQL (as benchmarks/bench_drain.py does), migrates it, and loads
``--tasks`` TaskQueue rows (default 1,000,000) with ``--runs-per-task`` runs each (default 3)
using set-based ``INSERT … SELECT generate_series`` statements: tasks queued over the last
365 days, 12 handlers, 1,000 users, ~94 % ending ``success``, the rest ``error``/``timeout``,
a few still scheduled or running, and some exhausted. It then times, ``--repeat`` times each
after one warm-up call, the functions the CLI, the dashboard and the HTTP API call:

* the task list, first page and a deep page (``listing.list_tasks``, keyset);
* a filtered page (status ``error`` + one handler), and a page filtered by queued-by;
* a task page (``TaskQueueService.get_task``: the task and its runs);
* the report over the last 24 hours (``reports.build_report``) and over 7 days;
* the task list's search (``reports.search.find_tasks``): a value inside one task's data, a
  word in many tasks, text in none, a search with a status filter, and one too short for the
  trigram index (the window of the newest tasks);
* the sorted list: by handler, status, queue time and queued-by, one page deep by offset;
* the per-handler table (``reports.handler_table``, the insight page's) over 24 hours and 7 days;
* when the web package is importable, the same pages through the HTTP app.

The tables are loaded at revision 0011 and then upgraded to the newest revision, so the
upgrade to 0012 builds the search's trigram index over the loaded rows; its time is printed.

It prints a Markdown table of median and worst milliseconds and appends it to
``benchmarks/RESULTS-reports.md``.
"""

# ruff: noqa: E402 - the project root must be on sys.path before its packages are imported

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from sqlalchemy import text

from benchmarks.bench_drain import machine, postgres_server
from celery_taskq import reports
from celery_taskq.core import listing
from celery_taskq.core.listing import TaskFilter, parse_status
from celery_taskq.core.models import RunStatus
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import upgrade_database
from celery_taskq.reports.handler_table import handler_table
from celery_taskq.reports.search import TaskQuery, find_tasks

RESULTS = PROJECT_ROOT / "benchmarks" / "RESULTS-reports.md"
HANDLERS = 12
USERS = 1000
TARGET_MS = 200.0
SEARCH_INDEX_REVISION_BEFORE = "0011"
"""The revision the rows are loaded at; the upgrade from it builds the search index."""

LOAD_TASKS = """
INSERT INTO "TaskQueue" ("Id", "TaskHandlerClass", "TaskData", "ScheduledOn", "QueuedOn",
    "QueuedById", "LastStatus", "MaxRetries", "TaskRunsFailed", "Title")
SELECT g,
       'bench.handlers.Handler' || (g % :handlers),
       jsonb_build_object('n', g, 'order', 'ORD-' || lpad(g::text, 8, '0'),
                          'customer', 'cust-' || (g % 5000)),
       :start + (g * :spread) * interval '1 second',
       :start + (g * :spread) * interval '1 second',
       'user-' || (g % :users),
       (CASE WHEN g > :tasks - 20 THEN 'scheduled'
             WHEN g > :tasks - 40 THEN 'running'
             WHEN g % 50 = 0 THEN 'error'
             WHEN g % 97 = 0 THEN 'timeout'
             ELSE 'success' END),
       3,
       (CASE WHEN g % 50 = 0 AND g % 100 = 0 THEN 3 WHEN g % 50 = 0 THEN 1
             WHEN g % 97 = 0 THEN 1 ELSE 0 END),
       'task ' || g
FROM generate_series(1, :tasks) AS g
"""

LOAD_RUNS = """
INSERT INTO "TaskRuns" ("TaskQueueId", "StartedOn", "PercentsCompleted", "FinishedOn",
    "Results", "Status", "StandardOutput", "ErrorOutput", "ErrorCode", "ErrorMessage")
SELECT t."Id",
       t."QueuedOn" + (r * 60) * interval '1 second',
       CASE WHEN s.status = 'success' THEN 100 ELSE 40 END,
       CASE WHEN s.status IN ('scheduled', 'running') THEN NULL
            ELSE t."QueuedOn" + (r * 60 + 1 + (t."Id" % 7)) * interval '1 second' END,
       CASE WHEN s.status = 'success' THEN '{"ok": true}'::jsonb END,
       s.status,
       'line one' || chr(10) || 'line two',
       '',
       CASE WHEN s.status = 'error' THEN 'E_BENCH' END,
       CASE WHEN s.status = 'error' THEN 'it failed' END
FROM "TaskQueue" t
CROSS JOIN generate_series(1, :runs) AS r
CROSS JOIN LATERAL (SELECT CASE
       WHEN r < :runs THEN (CASE WHEN t."Id" % 2 = 0 THEN 'error' ELSE 'timeout' END)
       ELSE t."LastStatus" END AS status) s
ORDER BY t."Id", r
"""


def timed(call: Callable[[], Any], repeat: int) -> list[float]:
    """Milliseconds of ``repeat`` calls, after one warm-up call."""
    call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def load(database: Database, tasks: int, runs: int) -> None:
    """Fill the tables; returns when the rows are in and the statistics are fresh."""
    start = datetime.now(UTC) - timedelta(days=365)
    spread = 365 * 24 * 3600 / tasks
    with database.transaction() as connection:
        connection.execute(text('ALTER TABLE "TaskRuns" SET (autovacuum_enabled = false)'))
        connection.execute(
            text(LOAD_TASKS),
            {
                "handlers": HANDLERS,
                "users": USERS,
                "tasks": tasks,
                "start": start,
                "spread": spread,
            },
        )
        connection.execute(text(LOAD_RUNS), {"runs": runs})
        connection.execute(
            text("SELECT setval(pg_get_serial_sequence('\"TaskQueue\"', 'Id'), :tasks)"),
            {"tasks": tasks},
        )
        connection.execute(text('ALTER TABLE "TaskRuns" RESET (autovacuum_enabled)'))
    with database.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))


def measurements(
    database: Database, tasks: int, args_sections: bool
) -> dict[str, Callable[[], Any]]:
    """What to time, by name."""
    service = TaskQueueService(database, Settings(database_url=str(database.engine.url)))
    now = datetime.now(UTC)
    handler = "bench.handlers.Handler3"
    middle = tasks // 2
    calls: dict[str, Callable[[], Any]] = {
        "list: first page (50)": lambda: listing.list_tasks(database, TaskFilter(), limit=50),
        "list: a page deep in the table": lambda: listing.list_tasks(
            database, TaskFilter(), limit=50, before_id=middle
        ),
        "list: status=error + handler": lambda: listing.list_tasks(
            database, TaskFilter(status=RunStatus.ERROR, handler=handler), limit=50
        ),
        "list: queued-by": lambda: listing.list_tasks(
            database, TaskFilter(queued_by="user-7"), limit=50
        ),
        "task page (task + its runs)": lambda: service.get_task(middle),
        "report: last 24 h": lambda: reports.build_report(
            database, since=now - timedelta(hours=24), until=None, handler=None, now=now
        ),
        "report: last 7 days": lambda: reports.build_report(
            database, since=now - timedelta(days=7), until=None, handler=None, now=now
        ),
    }
    calls.update(search_measurements(database, tasks, now))
    day = reports.ReportWindow(since=now - timedelta(hours=24))
    sections: dict[str, Callable[[], Any]] = {
        "section: totals": lambda: reports.totals(database, day),
        "section: durations": lambda: reports.duration_stats(database, day),
        "section: slowest runs": lambda: reports.slowest_runs(database, day),
        "section: recent failures": lambda: reports.recent_failures(database, day),
        "section: dead letters": lambda: reports.dead_letters(database, day),
        "section: runners": lambda: reports.runners(database, day, now=now),
        "section: due work": lambda: reports.due_work(database, now=now),
    }
    if args_sections:
        calls.update(sections)
    calls.update(http_measurements(str(database.engine.url), middle))
    return calls


def search_measurements(
    database: Database, tasks: int, now: datetime
) -> dict[str, Callable[[], Any]]:
    """The task list's search and sort, and the per-handler table."""
    wanted = f"ORD-{tasks // 2:08d}"

    def find(**options: Any) -> Callable[[], Any]:
        return lambda: find_tasks(database, TaskQuery(**options))

    def table(days: int) -> Callable[[], Any]:
        window = reports.ReportWindow(now - timedelta(days=days), now)
        return lambda: handler_table(database, window)

    return {
        f"search: a value inside one task's data ({wanted})": find(search=wanted),
        "search: a word in many tasks (Handler3)": find(search="Handler3"),
        "search: text in no task": find(search="no such text anywhere"),
        "search: + status=error": find(
            search="cust-42", task_filter=TaskFilter(status=RunStatus.ERROR)
        ),
        "search: 2 characters (window of the newest 10,000)": find(search="zq"),
        "list: status=cancelled chip": find(
            task_filter=TaskFilter(status=parse_status("cancelled"))
        ),
        "list: status=never-run chip": find(
            task_filter=TaskFilter(status=parse_status("never-run"))
        ),
        "sorted: handler ascending": find(sort="handler", order="asc"),
        "sorted: status descending": find(sort="status", order="desc"),
        "sorted: queued, oldest first": find(sort="queued", order="asc"),
        "sorted: queued-by, offset 5,000": find(sort="queued_by", order="asc", offset=5000),
        "sorted: handler + status=error": find(
            sort="handler", order="asc", task_filter=TaskFilter(status=RunStatus.ERROR)
        ),
        "per-handler table: last 24 h": table(1),
        "per-handler table: last 7 days": table(7),
    }


def http_measurements(database_url: str, task_id: int) -> dict[str, Callable[[], Any]]:
    """The same pages through the dashboard and API, when the web package is there."""
    try:
        from fastapi.testclient import TestClient

        from celery_taskq.web import create_app
    except ImportError:
        return {}
    client = TestClient(create_app(Settings(database_url=database_url)))

    def get(path: str) -> Callable[[], Any]:
        def call() -> None:
            response = client.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:200]}")

        return call

    calls = {
        "HTTP GET /tasks (dashboard list)": get("/tasks"),
        "HTTP GET /tasks?status=error&handler=…": get(
            "/tasks?status=error&handler=bench.handlers.Handler3"
        ),
        f"HTTP GET /tasks/{task_id} (task page)": get(f"/tasks/{task_id}"),
        "HTTP GET /api/v1/report": get("/api/v1/report"),
        "HTTP GET /tasks?q=ORD-… (dashboard search)": get(f"/tasks?q=ORD-{task_id:08d}"),
        "HTTP GET /api/v1/tasks?sort=handler&order=asc": get(
            "/api/v1/tasks?sort=handler&order=asc"
        ),
    }
    if client.get("/insight").status_code != 404:
        calls["HTTP GET /insight (per-handler table)"] = get("/insight")
    return calls


def render(
    results: dict[str, list[float]], args: argparse.Namespace, seconds: float, indexed: float
) -> str:
    lines = [
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — {args.tasks:,} tasks, "
        f"{args.tasks * args.runs_per_task:,} runs",
        "",
        ", ".join(f"{k}: {v}" for k, v in machine().items())
        + f"; load took {seconds:.0f} s, the upgrade building the search index {indexed:.0f} s;"
        f" {args.repeat} timed calls each after one warm-up.",
        "",
        f"| read | median ms | worst ms | under {TARGET_MS:.0f} ms |",
        "|---|---:|---:|:---:|",
    ]
    for name, samples in results.items():
        worst = max(samples)
        lines.append(
            f"| {name} | {statistics.median(samples):.1f} | {worst:.1f} | "
            f"{'yes' if worst < TARGET_MS else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--runs-per-task", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--sections", action="store_true", help="also time each report section on its own"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory, contextlib.ExitStack() as stack:
        server = stack.enter_context(postgres_server(Path(directory), durable=False))
        server.execute("CREATE DATABASE bench")
        url = server.url("bench")
        upgrade_database(url, SEARCH_INDEX_REVISION_BEFORE)
        database = Database(url)
        stack.callback(database.close)
        started = time.perf_counter()
        load(database, args.tasks, args.runs_per_task)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        upgrade_database(url)
        indexed = time.perf_counter() - started
        print(f"upgrade to head (the search index over the loaded rows): {indexed:.0f} s")
        with database.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(
                text('ANALYZE "TaskQueue"')
            )
        results = {
            name: timed(call, args.repeat)
            for name, call in measurements(database, args.tasks, args.sections).items()
        }
    table = render(results, args, loaded, indexed)
    print(table)
    with RESULTS.open("a") as out:
        out.write(table + "\n")
    return 0 if all(max(s) < TARGET_MS for s in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
