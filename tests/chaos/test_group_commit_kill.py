"""SIGKILL of runners in the fast mode (batched claims, group commit), again and again, while
they drain short tasks on PostgreSQL, with OnProcess on a timer.

The handlers' ledger (start and end of each execution, with its run id and PID, written outside
the database) proves the stated crash guarantee (docs/reliability.md): no run is lost (every
task ends ``success`` exactly once, nothing is left open), no task executes twice at once, and a
run whose handler finished within the window is never recorded failed (unless, handed back by a
runner's time-out, it was started again the strict way). The kills land mid-batch: some
finished runs lose their outcome and run again (at-least-once within the window), and a run
runs again only after a kill of the process that ran it. A task that kills every runner that
runs it uses up its retries.
"""

from __future__ import annotations

import random
import re
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import select

from celery_taskq.api import enqueue_many
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.chaos.support import (
    CLI,
    Execution,
    Overseer,
    ProcessGroups,
    child_env,
    count_tasks_with,
    open_runs,
    run_statuses,
    sigkill,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgresql]

TASKS = 300
KILLS = 10
RUNNERS = 2
WINDOW_MS = 50
DEADLINE_SECONDS = 120


def fast_runner_env(database_url: str, **extra: str) -> dict[str, str]:
    """Runner processes in the fast mode (window WINDOW_MS, reservations of up to 16)."""
    return child_env(
        database_url,
        TASKQ_GROUP_COMMIT_MS=str(WINDOW_MS),
        TASKQ_CLAIM_BATCH_MAX="16",
        TASKQ_PUBSUB_URL="none",
        **extra,
    )


def executions(ledger: Path) -> list[Execution]:
    """The ledger's executions, keyed by run and process."""
    starts: dict[tuple[int, int], tuple[int, int]] = {}
    ends: dict[tuple[int, int], int] = {}
    if not ledger.exists():
        return []
    for line in ledger.read_text().splitlines():
        event, task, run, pid, at = line.split()
        key = (int(run), int(pid))
        if event == "start":
            assert key not in starts, f"run {run} started twice in process {pid}"
            starts[key] = (int(task), int(at))
        else:
            ends[key] = int(at)
    return [
        Execution(task, run, pid, started, ends.get((run, pid)))
        for (run, pid), (task, started) in sorted(starts.items())
    ]


def overlaps(found: list[Execution], killed_at: dict[int, int]) -> list[str]:
    """Executions of one task that overlap in time (an unended one lasts until its kill)."""
    problems: list[str] = []
    spans: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for execution in found:
        end = execution.ended_ns if execution.ended_ns is not None else killed_at.get(execution.pid)
        if end is None:
            problems.append(f"run {execution.run_id} never ended and pid {execution.pid} lives")
            continue
        spans[execution.task_id].append((execution.started_ns, end, execution.run_id))
    for task_id, task_spans in spans.items():
        task_spans.sort()
        latest_end, latest_run = task_spans[0][1], task_spans[0][2]
        for started, ended, run_id in task_spans[1:]:
            if started < latest_end:
                problems.append(f"task {task_id}: run {run_id} started while {latest_run} ran")
            if ended > latest_end:
                latest_end, latest_run = ended, run_id
    return problems


def test_sigkills_mid_batch_lose_no_run_and_never_fail_a_finished_one(
    postgresql_schema_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    database = Database(postgresql_schema_url)
    env = fast_runner_env(postgresql_schema_url, TASKQ_TASK_RUNNER_LIMIT="8")
    task_ids = enqueue_many(
        [
            {
                "handler": "tests.chaos.process_handlers.Ledgered",
                "data": {"ledger": str(ledger), "seconds": 0.002},
            }
            for _ in range(TASKS)
        ],
        database_url=postgresql_schema_url,
    )
    service = TaskQueueService(database, Settings(database_url=postgresql_schema_url))
    groups = ProcessGroups(tmp_path)
    killed_at: dict[int, int] = {}
    chance = random.Random(19)  # noqa: S311 - test pacing, not security
    spawned = 0

    def start_runner() -> tuple[subprocess.Popen[bytes], int]:
        nonlocal spawned
        spawned += 1
        process = groups.start([*CLI, "runner"], env=env, log_name=f"runner-{spawned}.log")
        return process, chance.randint(3, 40)  # kill it once it started this many runs

    try:
        with Overseer(service, interval=0.2):
            fleet = [start_runner() for _ in range(RUNNERS)]
            deadline = time.monotonic() + DEADLINE_SECONDS
            while count_tasks_with(database, RunStatus.SUCCESS) < TASKS or open_runs(database):
                assert time.monotonic() < deadline, (
                    f"{count_tasks_with(database, RunStatus.SUCCESS)}/{TASKS} tasks done, "
                    f"{len(killed_at)} kills after {DEADLINE_SECONDS}s"
                )
                started: dict[int, int] = defaultdict(int)
                for execution in executions(ledger):
                    started[execution.pid] += 1
                for index, (process, kill_after) in enumerate(fleet):
                    if process.poll() is not None:
                        fleet[index] = start_runner()
                    elif len(killed_at) < KILLS and started[process.pid] >= kill_after:
                        killed_at[process.pid] = sigkill(process.pid)
                        process.wait(timeout=10)
                        fleet[index] = start_runner()
                time.sleep(0.02)
    finally:
        groups.stop_all()
    try:
        check_the_guarantee(database, ledger, task_ids, killed_at, strict_starts(tmp_path))
    finally:
        database.close()


STRICT_START = re.compile(r"run (\d+) was held by a runner that was lost: it starts the strict way")


def strict_starts(directory: Path) -> set[int]:
    """Runs that a runner started the strict way, as its log says, because a runner that had
    reserved them was timed out (``reservation_lost``)."""
    return {
        int(match.group(1))
        for log in directory.glob("runner-*.log")
        for match in STRICT_START.finditer(log.read_text(errors="replace"))
    }


def check_the_guarantee(
    database: Database,
    ledger: Path,
    task_ids: list[int],
    killed_at: dict[int, int],
    started_strictly: set[int],
) -> None:
    """The ledger and the tables after the drain (see the module's docstring)."""

    found = executions(ledger)
    assert len(killed_at) == KILLS, f"only {len(killed_at)} kills: the drain ended first"
    assert started_strictly, "no kill left a reserved run to be started the strict way"
    # No run is lost: every task succeeded exactly once, nothing is left open
    statuses = run_statuses(database)
    assert sorted(statuses) == sorted(task_ids)
    for task_id, runs in statuses.items():
        assert runs.count(RunStatus.SUCCESS) == 1, (task_id, runs)
        assert set(runs) <= {RunStatus.SUCCESS, RunStatus.TIMEOUT}, (task_id, runs)
    assert open_runs(database) == 0
    # No task executed twice at once
    assert overlaps(found, killed_at) == []
    # A run whose handler finished within the window is never recorded failed (a run that
    # outlived it was marked running, and so was a run handed back by a runner's time-out
    # before it started again: for those, a crash right after the handler ended is a timeout,
    # as in the strict mode)
    with database.transaction(read_only=True) as connection:
        failed = set(
            connection.execute(
                select(TaskRun.id).where(TaskRun.status != RunStatus.SUCCESS)
            ).scalars()
        )
    window_ns = WINDOW_MS * 1_000_000
    by_run: dict[int, list[Execution]] = defaultdict(list)
    for execution in sorted(found, key=lambda execution: execution.started_ns):
        by_run[execution.run_id].append(execution)
    for run_id in failed:  # a failed run started, and its last execution was a strict one
        assert by_run.get(run_id), f"run {run_id} failed without ever starting"
        last = by_run[run_id][-1]
        outlived = last.ended_ns is None or last.ended_ns - last.started_ns >= window_ns
        assert outlived or run_id in started_strictly, last
    # A run executes again only after the process of its earlier execution was killed
    for run_id, executed in by_run.items():
        for earlier in executed[:-1]:
            assert earlier.pid in killed_at, f"run {run_id} ran again though {earlier} lives"
    # The kills hit batches: finished runs whose outcome was lost ran again
    rerun = [
        run_id
        for run_id, executed in by_run.items()
        if any(execution.ended_ns is not None for execution in executed[:-1])
    ]
    assert rerun, "no kill caught a finished run waiting for its group commit"


POISON_RETRIES = 2
"""``max_retries`` of the poison task: it may be attempted this many times."""


def test_a_task_that_kills_every_runner_uses_up_its_retries_and_the_rest_drains(
    postgresql_schema_url: str, tmp_path: Path
) -> None:
    # Given fast runners (respawned when they die) and a queue holding a task whose handler
    # SIGKILLs its process every time, among short ones
    ledger = tmp_path / "ledger"
    database = Database(postgresql_schema_url)
    env = fast_runner_env(postgresql_schema_url)
    items: list[dict[str, object]] = [
        {"handler": "tests.chaos.process_handlers.Ledgered", "data": {"ledger": str(ledger)}}
        for _ in range(40)
    ]
    items.insert(
        5,
        {
            "handler": "tests.chaos.process_handlers.KillsItsProcess",
            "data": {"ledger": str(ledger)},
            "max_retries": POISON_RETRIES,
        },
    )
    task_ids = enqueue_many(items, database_url=postgresql_schema_url)
    poison = task_ids[5]
    service = TaskQueueService(database, Settings(database_url=postgresql_schema_url))
    groups = ProcessGroups(tmp_path)
    deaths = 0
    try:
        # When they drain it, with OnProcess on a timer
        with Overseer(service, interval=0.2):
            fleet = [
                groups.start([*CLI, "runner"], env=env, log_name=f"runner-{n}.log")
                for n in range(RUNNERS)
            ]
            deadline = time.monotonic() + DEADLINE_SECONDS
            while not _drained(database, poison):
                assert time.monotonic() < deadline, (
                    f"after {deaths} runner deaths: poison runs"
                    f" {run_statuses(database).get(poison)},"
                    f" {count_tasks_with(database, RunStatus.SUCCESS)} tasks done"
                )
                for index, process in enumerate(fleet):
                    if process.poll() is not None:
                        deaths += 1
                        fleet[index] = groups.start(
                            [*CLI, "runner"], env=env, log_name=f"runner-r{deaths}.log"
                        )
                time.sleep(0.05)
    finally:
        groups.stop_all()
    # Then the poison task is a dead letter: each of its attempts ended timeout, and each ran
    # at most twice (handed back once, unrecorded, then started the strict way); every other
    # task succeeded exactly once, and nothing is left open
    try:
        statuses = run_statuses(database)
        poison_runs = statuses.pop(poison)
        assert poison_runs == [RunStatus.TIMEOUT] * (POISON_RETRIES), poison_runs
        with database.transaction(read_only=True) as connection:
            failed, allowed = connection.execute(
                select(TaskQueue.task_runs_failed, TaskQueue.max_retries).where(
                    TaskQueue.id == poison
                )
            ).one()
        assert failed >= allowed
        poison_starts = _read_lines(ledger).count(f"start {poison}")
        assert POISON_RETRIES <= poison_starts <= 2 * POISON_RETRIES
        for task_id, runs in statuses.items():
            assert runs.count(RunStatus.SUCCESS) == 1, (task_id, runs)
        assert open_runs(database) == 0
    finally:
        database.close()


def _drained(database: Database, poison: int) -> bool:
    with database.transaction(read_only=True) as connection:
        row = connection.execute(
            select(TaskQueue.last_status, TaskQueue.task_runs_failed, TaskQueue.max_retries).where(
                TaskQueue.id == poison
            )
        ).one()
    exhausted = row[0] == RunStatus.TIMEOUT and row[1] >= row[2]
    return exhausted and open_runs(database) == 0


def _read_lines(ledger: Path) -> list[str]:
    """The ledger's lines, each cut to its event and task id."""
    if not ledger.exists():
        return []
    return [" ".join(line.split()[:2]) for line in ledger.read_text().splitlines()]
