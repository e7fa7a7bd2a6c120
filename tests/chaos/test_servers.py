"""The servers go away under load: PostgreSQL restarted while runners work, Redis stopped while
tasks are enqueued. Each test starts a server of its own, so the session's are never touched.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery_taskq.core.models import RunnerStatus, RunStatus
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.chaos.support import (
    CLI,
    GroupedCeleryStack,
    Ledger,
    Overseer,
    ProcessGroups,
    child_env,
    count_tasks_with,
    open_runs,
    private_postgresql,
    private_redis,
    run_statuses,
    sigkill,
    wait_until,
)
from tests.helpers import runners

pytestmark = [pytest.mark.slow, pytest.mark.postgresql]

HANDLER = "tests.chaos.process_handlers.Ledgered"


def test_postgresql_restart_while_runners_work(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Runners survive a PostgreSQL restart, every run's status lands, none stays running."""
    tasks = 240
    ledger = Ledger(tmp_path / "ledger")
    groups = ProcessGroups(tmp_path)
    with private_postgresql(request.config) as (server, url):
        database = Database(url)
        service = TaskQueueService(database, Settings(database_url=url))
        try:
            ids = service.add_tasks(
                [
                    {"handler": HANDLER, "data": {"ledger": str(ledger.path), "seconds": 0.02}}
                    for _ in range(tasks)
                ],
                create_run=True,
            )
            env = child_env(url)
            children = [
                groups.start([*CLI, "runner"], env=env, log_name=f"runner-{n}.log")
                for n in range(3)
            ]
            with Overseer(service) as overseer:
                wait_until(
                    lambda: count_tasks_with(database, RunStatus.SUCCESS) >= tasks // 5,
                    timeout=90,
                    what="the runners to get going",
                )
                # When PostgreSQL goes down (fast shutdown: every connection is cut), one runner
                # is killed while it is down, and PostgreSQL returns
                server.stop()
                time.sleep(1.5)
                killed_at = {children[0].pid: sigkill(children[0].pid)}
                children[0].wait(timeout=30)
                time.sleep(1.5)
                assert [child.poll() for child in children[1:]] == [None] * 2
                server.start()
                done_before = count_tasks_with(database, RunStatus.SUCCESS)
                wait_until(
                    lambda: count_tasks_with(database, RunStatus.SUCCESS) == tasks,
                    timeout=120,
                    what="every task to succeed after the restart",
                )
                ticks_before = overseer.ticks
                wait_until(lambda: overseer.ticks > ticks_before, timeout=30, what="a tick")
            # Then the live runners reconnected: the same processes finished the queue
            logs = "\n".join(groups.log(f"runner-{n}.log") for n in (1, 2))
            assert [child.poll() for child in children[1:]] == [None] * 2, logs
            assert "retrying" in logs  # they did meet the outage
            assert done_before < tasks
            assert overseer.failures > 0  # so did the overseer
            # And only the killed runner was timed out, once PostgreSQL was back
            rows = {row.process_id: row for row in runners(database)}
            assert overseer.timed_out == [rows[children[0].pid].id]
            groups.stop_all()
            assert [child.returncode for child in children[1:]] == [0] * 2, logs
            # And every status landed: one success per task, nothing scheduled or running
            statuses = run_statuses(database)
            assert sorted(statuses) == sorted(ids)
            assert all(runs.count(RunStatus.SUCCESS) == 1 for runs in statuses.values())
            assert all(
                set(runs) <= {RunStatus.SUCCESS, RunStatus.TIMEOUT} for runs in statuses.values()
            )
            assert open_runs(database) == 0
            assert sorted(row.status for row in runners(database)) == sorted(
                [RunnerStatus.SUCCESS, RunnerStatus.SUCCESS, RunnerStatus.TIMEOUT]
            )
            assert ledger.violations(killed_at) == []
        finally:
            groups.stop_all()
            database.close()


ENQUEUE_WITH_THE_CELERY_LAYER = """
import sys, time
from celery_taskq.celery import app  # installs the Celery layer and its enqueue hook
from celery_taskq import enqueue
started = time.monotonic()
for n in range(int(sys.argv[1])):
    print(enqueue(sys.argv[2], {"ledger": sys.argv[3], "seconds": 0.01}), flush=True)
print(f"took {time.monotonic() - started:.1f}s", file=sys.stderr)
"""


def test_redis_outage_loses_no_enqueued_task(postgresql_schema_url: str, tmp_path: Path) -> None:
    """enqueue() records tasks while Redis is down; the work is done once Redis is back."""
    ledger = Ledger(tmp_path / "ledger")
    database = Database(postgresql_schema_url)
    with private_redis() as redis_server:
        stack = GroupedCeleryStack(
            postgresql_schema_url, f"redis://127.0.0.1:{redis_server.port}/0", tmp_path
        )
        stack.extra_env.update(TASKQ_RUNNER_MAX_IDLE="1.5", TASKQ_RETRY_BACKOFF_BASE="0")
        try:
            worker = stack.start_worker()

            hook_failures: list[int] = []

            def enqueue(count: int) -> list[int]:
                caller = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        ENQUEUE_WITH_THE_CELERY_LAYER,
                        str(count),
                        HANDLER,
                        str(ledger.path),
                    ],
                    env=stack.env,
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert caller.returncode == 0, caller.stderr
                hook_failures.append(caller.stderr.count("failed for task"))
                return [int(line) for line in caller.stdout.split()]

            # Given a working stack
            first = enqueue(3)
            wait_until(
                lambda: count_tasks_with(database, RunStatus.SUCCESS) == 3,
                timeout=90,
                what="the stack to work",
            )
            # When Redis stops, and every runner has left for want of work
            redis_server.stop()
            wait_until(
                lambda: not any(row.status is RunnerStatus.RUNNING for row in runners(database)),
                timeout=60,
                what="the runners to leave",
            )
            # Then enqueue() still records tasks, without raising
            during = enqueue(10)
            assert len(during) == 10
            # (the caller's runner request to the broker did fail: logged, never raised)
            assert hook_failures[0] == 0
            assert hook_failures[1] >= 1
            statuses = run_statuses(database)
            assert all(statuses[task_id] for task_id in during)  # each has its run already
            time.sleep(2)  # the outage goes on a little while beat fails to publish
            assert worker.poll() is None
            # And when Redis is back (empty: it keeps nothing), the work resumes
            redis_server.start()
            wait_until(
                lambda: count_tasks_with(database, RunStatus.SUCCESS) == 13,
                timeout=120,
                what="the tasks queued during the outage to run",
            )
            after = enqueue(3)
            wait_until(
                lambda: count_tasks_with(database, RunStatus.SUCCESS) == 16,
                timeout=60,
                what="tasks queued after the outage to run",
            )
            assert worker.poll() is None
            statuses = run_statuses(database)
            for task_id in [*first, *during, *after]:
                assert statuses[task_id] == [RunStatus.SUCCESS], task_id
            assert ledger.violations() == []
        finally:
            stack.stop_all()
            database.close()
