"""Pruning while runner processes work the queue: the work is untouched and nothing fails.

Real ``celery-taskq runner`` processes claim and finish runs while the test prunes old,
finished tasks whose ids lie before, between and after the working ones (so pruning batches
walk over the working tasks' rows too), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, literal, select

from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.retention import RetentionPolicy
from celery_taskq.core.retention_pruner import Pruner, PruneReport
from celery_taskq.core.storage.database import Database
from tests.helpers import start_runner, wait_for

OLD_TASKS_PER_BLOCK = 1_000
"""Finished old tasks seeded before, between and after the working ones (3 runs each)."""
WORKING_TASKS = 120
WORK_SECONDS = 0.02
"""Each working task sleeps this long, so the runners are still working while pruning runs."""


def seed_finished_old_tasks(database: Database, count: int, finished_on: datetime) -> None:
    """``count`` succeeded tasks with two failed runs and a successful one, finished long ago."""
    with database.transaction() as connection:
        connection.execute(
            insert(TaskQueue),
            [
                {
                    "TaskHandlerClass": "tests.handlers.Succeed",
                    "TaskData": {"old": index},
                    "ScheduledOn": finished_on,
                    "QueuedOn": finished_on,
                    "LastStatus": RunStatus.SUCCESS,
                    "MaxRetries": 5,
                    "TaskRunsFailed": 0,
                }
                for index in range(count)
            ],
        )
        no_runs_yet = select(TaskQueue.id).where(
            TaskQueue.last_status == RunStatus.SUCCESS,
            ~select(TaskRun.id).where(TaskRun.task_queue_id == TaskQueue.id).exists(),
        )
        fresh = [int(task_id) for task_id in connection.execute(no_runs_yet).scalars()]
        for status in (RunStatus.ERROR, RunStatus.ERROR, RunStatus.SUCCESS):
            rows = select(
                TaskQueue.id, literal(status.value), literal(finished_on), literal(finished_on)
            ).where(TaskQueue.id.in_(fresh))
            connection.execute(
                insert(TaskRun).from_select(
                    ["TaskQueueId", "Status", "StartedOn", "FinishedOn"], rows
                )
            )


def succeeded(database: Database, tasks: list[int]) -> int:
    """Runs of ``tasks`` that ended ``success``."""
    with database.transaction(read_only=True) as connection:
        query = select(func.count()).where(
            TaskRun.status == RunStatus.SUCCESS, TaskRun.task_queue_id.in_(tasks)
        )
        return int(connection.execute(query).scalar_one())


def running_between(
    database: Database, tasks: list[int], started: datetime, ended: datetime
) -> int:
    """Runs of ``tasks`` that were running at some moment between ``started`` and ``ended``."""
    with database.transaction(read_only=True) as connection:
        query = select(func.count()).where(
            TaskRun.task_queue_id.in_(tasks),
            TaskRun.started_on <= ended,
            TaskRun.finished_on >= started,
        )
        return int(connection.execute(query).scalar_one())


def test_pruning_while_runners_work_leaves_every_working_run_intact(
    database: Database,
    live: TaskQueueService,
    subprocess_env: dict[str, str],
    spawn: list[subprocess.Popen[str]],
) -> None:
    # Given finished old tasks around 120 working tasks whose runs are due
    long_ago = datetime.now(UTC) - timedelta(days=60)
    seed_finished_old_tasks(database, OLD_TASKS_PER_BLOCK, long_ago)
    working = [
        live.add_task("tests.handlers.Sleep", {"seconds": WORK_SECONDS})
        for _ in range(WORKING_TASKS // 2)
    ]
    seed_finished_old_tasks(database, OLD_TASKS_PER_BLOCK, long_ago)
    working += [
        live.add_task("tests.handlers.Sleep", {"seconds": WORK_SECONDS})
        for _ in range(WORKING_TASKS // 2)
    ]
    seed_finished_old_tasks(database, OLD_TASKS_PER_BLOCK, long_ago)
    assert live.process_queue().tasks_given_runs == WORKING_TASKS

    # When two runner processes work the queue while pruning runs, 100 rows a statement
    runners = [start_runner(spawn, subprocess_env, "--burst") for _ in range(2)]
    pruner = Pruner(database, live.clock, batch_size=100)
    policy = RetentionPolicy.everything_older_than(timedelta(days=30))
    report = PruneReport()
    passes = 0
    wait_for(lambda: succeeded(database, working) > 0, what="the runners to start working")
    before = succeeded(database, working)
    pass_started = datetime.now(UTC)
    report += pruner.prune(policy)
    pass_ended = datetime.now(UTC)
    passes += 1
    while passes == 0 or any(runner.poll() is None for runner in runners):
        report += pruner.prune(policy)
        passes += 1
        time.sleep(0.1)  # later passes find little: leave SQLite's write lock to the runners
    outputs = [runner.communicate(timeout=60) for runner in runners]

    # Then the runners were working runs while the first pass pruned
    assert before < WORKING_TASKS
    assert running_between(database, working, pass_started, pass_ended) > 0
    # And every old task went with its runs, and pruning raised nothing
    assert report == PruneReport(tasks=3 * OLD_TASKS_PER_BLOCK, runs=9 * OLD_TASKS_PER_BLOCK)
    # And the runners ended cleanly: no deadlock or serialization error leaked to them
    assert [runner.returncode for runner in runners] == [0, 0], outputs
    # And every working task finished once, with its one run intact and successful
    with database.transaction(read_only=True) as connection:
        tasks = {
            row.Id: row.LastStatus
            for row in connection.execute(select(TaskQueue.id, TaskQueue.last_status))
        }
        runs = [
            (int(row[0]), RunStatus(row[1]), row[2], row[3])
            for row in connection.execute(
                select(
                    TaskRun.task_queue_id, TaskRun.status, TaskRun.results, TaskRun.task_runner_id
                )
            )
        ]
        assert connection.execute(select(func.count()).select_from(TaskQueue)).scalar_one() == (
            WORKING_TASKS
        )
    assert tasks == dict.fromkeys(working, RunStatus.SUCCESS)
    assert sorted(task_id for task_id, *_ in runs) == sorted(working)
    assert {status for _, status, _, _ in runs} == {RunStatus.SUCCESS}
    assert all(result == {"slept": WORK_SECONDS} for _, _, result, _ in runs)
    assert all(runner_id is not None for *_, runner_id in runs)
