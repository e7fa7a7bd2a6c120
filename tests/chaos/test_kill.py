"""SIGKILL, twenty times, of standalone runners and Celery pool children while 500 tasks stream
through a PostgreSQL + Redis stack with beat: nothing is lost, nothing runs twice at once."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from celery_taskq.api import enqueue_many
from celery_taskq.core.models import RunnerRole, RunnerStatus, RunStatus, TaskRun, TaskRunner
from celery_taskq.core.storage.database import Database
from tests.chaos.support import (
    CLI,
    GroupedCeleryStack,
    Ledger,
    count_tasks_with,
    is_child_of,
    open_runs,
    run_statuses,
    sigkill,
)
from tests.helpers import runners

pytestmark = [pytest.mark.slow, pytest.mark.postgresql]

TASKS = 500
KILLS = 20
BATCH = 25
STANDALONE_RUNNERS = 2
DEADLINE_SECONDS = 180


def busy_runners(database: Database) -> dict[int, tuple[int, str | None]]:
    """Running runner loops (PID → (runner id, worker name)), those with a run in hand first."""
    with database.transaction(read_only=True) as connection:
        rows = connection.execute(
            select(TaskRunner.id, TaskRunner.process_id, TaskRunner.worker_hostname).where(
                TaskRunner.status == RunnerStatus.RUNNING, TaskRunner.role == RunnerRole.RUNNER
            )
        ).all()
        working = set(
            connection.execute(
                select(TaskRun.task_runner_id).where(TaskRun.status == RunStatus.RUNNING)
            ).scalars()
        )
    ordered = sorted(rows, key=lambda row: row[0] not in working)
    return {pid: (runner_id, worker) for runner_id, pid, worker in ordered}


def timed_out_runners(database: Database) -> set[int]:
    """Ids of the runner rows the overseer timed out."""
    with database.transaction(read_only=True) as connection:
        return set(
            connection.execute(
                select(TaskRunner.id).where(TaskRunner.status == RunnerStatus.TIMEOUT)
            ).scalars()
        )


def test_twenty_sigkills_while_500_tasks_are_worked(
    postgresql_schema_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Every task ends ``success`` exactly once; only killed runners and their runs time out;
    no task's runs ever overlap (the handlers' ledger says so)."""
    ledger = Ledger(tmp_path / "ledger")
    database = Database(postgresql_schema_url)
    stack = GroupedCeleryStack(postgresql_schema_url, redis_url, tmp_path)
    stack.extra_env.update(
        TASKQ_TASK_RUNNER_LIMIT="8",
        TASKQ_RUNNER_MAX_IDLE="30",
        TASKQ_HEARTBEAT_INTERVAL="0.3",
        TASKQ_POLL_INTERVAL="0.05",
        TASKQ_RETRY_BACKOFF_BASE="0",
    )
    killed_at: dict[int, int] = {}
    killed_runner_ids: set[int] = set()
    kinds = {"standalone": 0, "celery": 0}
    task_ids: list[int] = []
    try:
        worker = stack.start_worker()
        standalone: list[subprocess.Popen[bytes]] = [
            stack.start(*CLI[1:], "runner", log_name=f"runner-{n}.log")
            for n in range(STANDALONE_RUNNERS)
        ]
        spawned = STANDALONE_RUNNERS
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            assert time.monotonic() < deadline, (
                f"{count_tasks_with(database, RunStatus.SUCCESS)}/{TASKS} tasks done, "
                f"{len(killed_at)} kills after {DEADLINE_SECONDS}s"
            )
            assert worker.poll() is None, stack.log("worker.log")[-3000:]
            if len(task_ids) < TASKS:  # the stream: a batch per turn
                task_ids += enqueue_many(
                    [
                        {
                            "handler": "tests.chaos.process_handlers.Ledgered",
                            "data": {"ledger": str(ledger.path), "seconds": 0.03},
                        }
                        for _ in range(BATCH)
                    ],
                    database_url=postgresql_schema_url,
                )
            done = count_tasks_with(database, RunStatus.SUCCESS)
            if len(killed_at) < KILLS and done >= (len(killed_at) + 1) * TASKS // (KILLS + 5):
                ours = {process.pid for process in standalone if process.poll() is None}
                candidates = [
                    (pid, runner_id, "standalone" if worker_name is None else "celery")
                    for pid, (runner_id, worker_name) in busy_runners(database).items()
                    if pid not in killed_at
                    and (pid in ours if worker_name is None else is_child_of(pid, worker.pid))
                ]
                wanted = "standalone" if len(killed_at) % 2 == 0 else "celery"
                candidates.sort(key=lambda candidate: candidate[2] != wanted)
                if candidates:
                    pid, runner_id, kind = candidates[0]
                    killed_at[pid] = sigkill(pid)
                    killed_runner_ids.add(runner_id)
                    kinds[kind] += 1
            for index, process in enumerate(standalone):
                if process.poll() is not None:  # killed (or refused by the limit): replace it
                    spawned += 1
                    standalone[index] = stack.start(
                        *CLI[1:], "runner", log_name=f"runner-{spawned}.log"
                    )
            if (
                len(killed_at) == KILLS
                and count_tasks_with(database, RunStatus.SUCCESS) == TASKS
                and killed_runner_ids <= timed_out_runners(database)
            ):
                break
            time.sleep(0.05)
    finally:
        stack.stop_all()
    try:
        # Every task succeeded exactly once, with nothing left scheduled or running
        statuses = run_statuses(database)
        assert sorted(statuses) == sorted(task_ids)
        assert len(task_ids) == TASKS
        for task_id, runs in statuses.items():
            assert runs.count(RunStatus.SUCCESS) == 1, (task_id, runs)
            assert set(runs) <= {RunStatus.SUCCESS, RunStatus.TIMEOUT}, (task_id, runs)
        assert open_runs(database) == 0
        # Both kinds of runner were killed, and the kills hit runs in progress
        assert min(kinds.values()) >= KILLS // 4, kinds
        timed_out_runs = sum(runs.count(RunStatus.TIMEOUT) for runs in statuses.values())
        assert 1 <= timed_out_runs <= KILLS
        # Only the killed runners were timed out, and every one of them was
        assert timed_out_runners(database) == killed_runner_ids
        assert {row.status for row in runners(database)} <= {
            RunnerStatus.SUCCESS,
            RunnerStatus.TIMEOUT,
        }
        with database.transaction(read_only=True) as connection:
            owners = set(
                connection.execute(
                    select(TaskRun.task_runner_id).where(TaskRun.status == RunStatus.TIMEOUT)
                ).scalars()
            )
        assert owners <= killed_runner_ids
        # And no task ever had two runs executing at once
        assert ledger.violations(killed_at) == []
    finally:
        database.close()
