"""Two beats and two OnProcess ticks at once, over and over, while tasks fail and are retried:
a task never gets a run too many, and never two at the same time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from celery_taskq.celery import DUPLICATE_TICK
from celery_taskq.core.models import RunStatus
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.chaos.support import (
    GroupedCeleryStack,
    Ledger,
    count_tasks_with,
    run_statuses,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgresql]

TASKS = 30
FAILURES = 2


class ConcurrentTicks:
    """Two threads that run OnProcess at the same moment (a barrier), again and again."""

    def __init__(self, service: TaskQueueService) -> None:
        self.service = service
        self.pairs = 0
        self.runs_created = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._barrier = threading.Barrier(2, timeout=30)
        self._threads = [threading.Thread(target=self._tick, daemon=True) for _ in range(2)]

    def __enter__(self) -> ConcurrentTicks:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _tick(self) -> None:
        while not self._stopped.is_set():
            try:
                if self._barrier.wait() == 0:
                    with self._lock:
                        self.pairs += 1
                report = self.service.process_queue()
            except threading.BrokenBarrierError:
                return
            except Exception as exc:
                self.errors.append(exc)
                self._barrier.abort()
                return
            with self._lock:
                self.runs_created += report.tasks_given_runs
            time.sleep(0.02)
        self._barrier.abort()


def test_two_beats_and_concurrent_ticks_create_no_duplicate_runs(
    postgresql_schema_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Each task gets exactly FAILURES + 1 runs (error, error, success), one at a time."""
    ledger = Ledger(tmp_path / "ledger")
    database = Database(postgresql_schema_url)
    service = TaskQueueService(database, Settings(database_url=postgresql_schema_url))
    stack = GroupedCeleryStack(postgresql_schema_url, redis_url, tmp_path)
    stack.extra_env.update(TASKQ_RETRY_BACKOFF_BASE="0", TASKQ_PROCESS_INTERVAL="0.5")
    # Given tasks without runs: every run, first or retry, is made by a racing OnProcess
    task_ids = service.add_tasks(
        [
            {
                "handler": "tests.chaos.process_handlers.Ledgered",
                "data": {"ledger": str(ledger.path), "seconds": 0.02, "fail_first": FAILURES},
            }
            for _ in range(TASKS)
        ]
    )
    try:
        stack.start_worker(beat=False, loglevel="DEBUG")  # a skipped tick is a DEBUG line
        stack.start_beat("beat-1")
        stack.start_beat("beat-2")
        with ConcurrentTicks(service) as ticks:
            wait_until(
                lambda: count_tasks_with(database, RunStatus.SUCCESS) == TASKS,
                timeout=150,
                what="every task to succeed on its third run",
            )
        assert ticks.errors == []
        assert ticks.pairs >= 10
        assert ticks.runs_created > 0
        wait_until(
            lambda: DUPLICATE_TICK in stack.log("worker.log"),
            timeout=30,
            what="the two beats' ticks to collide",
        )
    finally:
        stack.stop_all()
    # Then each task ran exactly three times, in order, never two runs at once
    try:
        statuses = run_statuses(database)
    finally:
        database.close()
    expected = [RunStatus.ERROR] * FAILURES + [RunStatus.SUCCESS]
    assert {task_id: statuses.get(task_id) for task_id in task_ids} == dict.fromkeys(
        task_ids, expected
    )
    assert ledger.starts_per_task() == dict.fromkeys(task_ids, FAILURES + 1)
    assert ledger.violations() == []
