"""Limits and priorities with many real runner processes, on SQLite and PostgreSQL.

Six ``celery-taskq runner`` processes work a backlog of limited and unlimited runs. Every
handler run writes its start and end to a ledger file; a sampler reads the running runs from
the database throughout. Neither may ever show a limit exceeded, and runs of one queue start
in priority order, give or take the claims in flight at the same moment. The Export handler
also has a rate limit, checked on the times its runs were claimed.
"""

from __future__ import annotations

import random
import subprocess
import threading
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from celery_taskq.core.limits import apply_declared_limits
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.helpers import start_runner

RUNNERS = 6
LEDGER = "tests.limit_handlers.Ledger"
EXPORT = "tests.limit_handlers.LedgerExport"
LIMITS = {"reports": 2, EXPORT: 1}
CONCURRENCY = f"reports=2,handler:{EXPORT}=1"
RATE_LIMITS = f"handler:{EXPORT}=2/s"


def max_overlap(ledger: Path, key: str) -> int:
    """Most runs of ``key`` (a queue or a handler class name) between start and end at once."""
    events = []
    for line in ledger.read_text().splitlines():
        kind, at, handler, queue, _n, _pid = line.split()
        if key in (handler, queue):
            events.append((int(at), 0 if kind == "end" else 1))
    running = most = 0
    for _, is_start in sorted(events):
        running += 1 if is_start else -1
        most = max(most, running)
    return most


class Sampler(threading.Thread):
    """Reads the running runs of the limited queue and handler until stopped; keeps the most."""

    def __init__(self, database: Database) -> None:
        super().__init__(daemon=True)
        self.database = database
        self.most = {"reports": 0, EXPORT: 0}
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        running = TaskRun.status == RunStatus.RUNNING
        reports = select(func.count()).where(running, TaskRun.queue == "reports")
        exports = (
            select(func.count())
            .select_from(TaskRun)
            .join(TaskQueue, TaskQueue.id == TaskRun.task_queue_id)
            .where(running, TaskQueue.task_handler_class == EXPORT)
        )
        while not self.done.wait(0.01):
            with self.database.transaction(read_only=True) as connection:
                counts = {
                    "reports": connection.execute(reports).scalar_one(),
                    EXPORT: connection.execute(exports).scalar_one(),
                }
            self.samples += 1
            for key, count in counts.items():
                self.most[key] = max(self.most[key], int(count))


def test_many_runner_processes_keep_the_limits_and_the_priority_order(
    live: TaskQueueService,
    database: Database,
    subprocess_env: dict[str, str],
    spawn: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    # Given limits declared for every process, and a backlog queued before any runner starts:
    # reports (2 at once), the Export handler (1 at once), and an unlimited "bulk" queue
    ledger = tmp_path / "ledger"
    settings = Settings(
        database_url=live.settings.database_url, concurrency=CONCURRENCY, rate_limits=RATE_LIMITS
    )
    assert apply_declared_limits(database, settings)
    shuffled = random.Random(17)  # noqa: S311 - a fixed mix of priorities, not a secret

    def work(queue: str, seconds: float) -> dict[str, object]:
        return {"ledger": str(ledger), "queue": queue, "seconds": seconds}

    for n in range(10):
        data = {**work("reports", 0.15), "n": n}
        live.add_task(LEDGER, data, queue="reports", priority=n % 3, create_run=True)
    for n in range(5):
        live.add_task(EXPORT, {**work("default", 0.15), "n": n}, priority=2, create_run=True)
    bulk = {}
    for n in range(30):
        priority = shuffled.randrange(4)
        data = {**work("bulk", 0.03), "n": n}
        bulk[live.add_task(LEDGER, data, queue="bulk", priority=priority, create_run=True)] = (
            priority
        )
    sampler = Sampler(database)
    sampler.start()
    # When six runner processes work it
    env = {**subprocess_env, "TASKQ_CONCURRENCY": CONCURRENCY, "TASKQ_RATE_LIMITS": RATE_LIMITS}
    # a runner idles at most until the next rate window (1 s) opens before it may leave
    runners = [start_runner(spawn, env, "--max-idle", "2") for _ in range(RUNNERS)]
    for runner in runners:
        _, err = runner.communicate(timeout=120)
        assert runner.returncode == 0, err
    sampler.done.set()
    sampler.join()
    # Then every run succeeded
    with database.transaction(read_only=True) as connection:
        statuses = connection.execute(select(TaskQueue.last_status)).scalars().all()
        started = connection.execute(
            select(TaskRun.task_queue_id)
            .where(TaskRun.queue == "bulk")
            .order_by(TaskRun.started_on, TaskRun.id)
        ).scalars()
        bulk_order = [bulk[task_id] for task_id in started]
        export_starts = connection.execute(
            select(TaskRun.started_on)
            .join(TaskQueue, TaskQueue.id == TaskRun.task_queue_id)
            .where(TaskQueue.task_handler_class == EXPORT)
        ).scalars()
        export_windows = Counter(
            int(when.timestamp()) if when is not None else None for when in export_starts
        )
    assert statuses == [RunStatus.SUCCESS] * 45
    # And neither the ledger nor any sample ever shows a limit exceeded
    assert max_overlap(ledger, "reports") <= LIMITS["reports"]
    assert max_overlap(ledger, "LedgerExport") <= LIMITS[EXPORT]
    assert sampler.samples > 0
    assert sampler.most["reports"] <= LIMITS["reports"]
    assert sampler.most[EXPORT] <= LIMITS[EXPORT]
    # And no second of the clock started more than two Export runs
    assert None not in export_windows
    assert sum(export_windows.values()) == 5
    assert max(export_windows.values()) <= 2
    # While the runners did work side by side
    assert max_overlap(ledger, "bulk") + max_overlap(ledger, "reports") > 1
    # And a bulk run started behind a higher-priority one only by the claims in flight at once
    for position, priority in enumerate(bulk_order):
        higher_later = [p for p in bulk_order[position + RUNNERS :] if p > priority]
        assert not higher_later, (position, bulk_order)
