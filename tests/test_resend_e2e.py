"""Re-send end to end: a real worker on Redis and PostgreSQL runs a native task that fails, and
``celery-taskq -A <app> resend`` publishes it again; the re-sent task runs, linked to the old."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.storage.database import Database
from tests.celery_stack import CeleryStack
from tests.helpers import runs_of, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgresql]

CALLER = """
import sys
from tests.resend_app import flip
print(flip.delay(sys.argv[1], greeting="hello again").id)
"""


def task_of(database: Database, celery_task_id: str) -> TaskQueue | None:
    """The task row of a Celery task id, once its attempt was recorded."""
    with database.read_session() as session:
        task_id = session.scalars(
            select(TaskRun.task_queue_id).where(TaskRun.celery_task_id == celery_task_id)
        ).first()
        if task_id is None:
            return None
        task = session.get(TaskQueue, task_id)
        session.expunge_all()
        return task


@pytest.fixture
def stack(tmp_path: Path, postgresql_schema_url: str, redis_url: str) -> Iterator[CeleryStack]:
    """PostgreSQL and Redis, for the app's worker and the command line."""
    stack = CeleryStack(postgresql_schema_url, redis_url, tmp_path)
    stack.extra_env["RESEND_BROKER_URL"] = redis_url
    yield stack
    stack.stop_all()


def test_a_failed_task_is_resent_and_runs(stack: CeleryStack) -> None:
    stack.start(
        "-m", "celery", "-A", "tests.resend_app", "worker", "--concurrency", "1",
        "--loglevel", "INFO", "--hostname", "resend@%h", log_name="resend-worker.log",
    )  # fmt: skip
    database = Database(stack.database_url)
    try:
        # Given a native task that failed for good
        marker = str(stack.directory / "marker")
        caller = subprocess.run(
            [sys.executable, "-c", CALLER, marker],
            env=stack.env, cwd=stack.directory, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert caller.returncode == 0, caller.stderr
        first_id = caller.stdout.strip().splitlines()[-1]
        old = wait_for(
            lambda: (
                (task := task_of(database, first_id)) is not None
                and task.last_status is RunStatus.ERROR
                and task
            ),
            timeout=60,
            what="the first attempt to fail",
        )

        # When it is re-sent from the command line, through the app
        resend = subprocess.run(
            [sys.executable, "-m", "celery_taskq", "-A", "tests.resend_app",
             "resend", str(old.id), "--queued-by", "tester"],
            env=stack.env, cwd=stack.directory, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert resend.returncode == 0, resend.stderr
        new_id = int(resend.stdout.strip())

        # Then the re-sent task runs and succeeds, in a new row linked to the old one
        def finished() -> TaskQueue | None:
            with database.read_session() as session:
                task = session.get(TaskQueue, new_id)
                session.expunge_all()
            return task if task is not None and task.last_status is RunStatus.SUCCESS else None

        new = wait_for(finished, timeout=60, what="the re-sent task to succeed")
        assert (new.resent_from_id, new.queued_by_id) == (old.id, "tester")
        assert new.task_handler_class == "celery:resend.flip"
        assert new.task_data == old.task_data
        assert new.celery_task_id not in (None, first_id)
        assert [
            (run.status, run.celery_task_id, run.results) for run in runs_of(database, new_id)
        ] == [(RunStatus.SUCCESS, new.celery_task_id, "hello again")]
        assert len(runs_of(database, old.id)) == 1
        # And a task that succeeded is not re-sent again
        again = subprocess.run(
            [sys.executable, "-m", "celery_taskq", "-A", "tests.resend_app",
             "resend", str(new_id)],
            env=stack.env, cwd=stack.directory, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 1
        assert f"error: task {new_id} succeeded: only a failed task can be re-sent" in again.stderr
        assert "audit of Celery task" not in stack.log("resend-worker.log")
    finally:
        database.close()
