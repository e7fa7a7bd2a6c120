"""Report reads behind the Insight page and the task page, on SQLite and PostgreSQL: the
per-handler table, the first run of a window (where a young install's chart starts), and a
multi-step task's steps read from whatever its runs stored."""

from __future__ import annotations

from dataclasses import replace

import pytest

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import RunStatus
from celery_taskq.core.snapshots import RunSnapshot, TaskSnapshot
from celery_taskq.core.steps import STEPS_HANDLER
from celery_taskq.core.storage.database import Database
from celery_taskq.reports import ReportWindow
from celery_taskq.reports.handler_table import handler_table
from celery_taskq.reports.series import first_run_moment
from celery_taskq.reports.task_steps import task_steps
from tests.test_reports import HOUR, T0, A, B, Rows, at


@pytest.fixture
def rows(database: Database) -> Rows:
    """A writer of rows into the test database."""
    return Rows(database)


# -- the per-handler table ------------------------------------------------------------------


def test_handler_table_counts_failures_percentiles_and_throughput(
    database: Database, rows: Rows
) -> None:
    # Given four runs of A ending in the hour (1-4 s; one error, one timeout), a run of B
    # cancelled before it started, and runs outside the window or still running
    for seconds, status in [
        (1, RunStatus.SUCCESS),
        (2, RunStatus.ERROR),
        (3, RunStatus.SUCCESS),
        (4, RunStatus.TIMEOUT),
    ]:
        rows.run(rows.task(A, at(0)), status, started=at(10), seconds=seconds)
    rows.run(rows.task(B, at(0)), RunStatus.ERROR, finished=at(20))
    rows.run(rows.task(A, at(-90)), RunStatus.SUCCESS, started=at(-80), seconds=100)
    rows.run(rows.task(A, at(0)), RunStatus.RUNNING, started=at(30))

    # When the table is read over the hour
    table = handler_table(database, HOUR)

    # Then A comes first with its figures, and B has no duration
    assert [row.handler for row in table] == [A, B]
    first, second = table
    assert (first.runs, first.failed_runs, first.failure_rate) == (4, 2, 0.5)
    assert first.p50 == pytest.approx(2.5)
    assert first.p95 == pytest.approx(3.85)  # percentile_cont: 1 + 0.95 * 3 ranks
    assert first.throughput == pytest.approx(4.0)  # runs per hour of a one-hour window
    assert (second.runs, second.failed_runs, second.p50, second.p95) == (1, 1, None, None)
    assert handler_table(database, HOUR, limit=1) == (first,)
    assert handler_table(database, ReportWindow(at(-200), at(-150))) == ()


def test_handler_table_refuses_an_open_window(database: Database) -> None:
    with pytest.raises(InvalidArgumentError, match="both since and until"):
        handler_table(database, ReportWindow(since=at(0)))


def test_first_run_moment_is_the_earliest_run_in_the_window(database: Database, rows: Rows) -> None:
    assert first_run_moment(database, HOUR) is None
    rows.run(rows.task(A, at(0)), RunStatus.SUCCESS, started=at(20), seconds=60)  # ends at 21
    rows.run(rows.task(B, at(0)), RunStatus.RUNNING, started=at(40))
    rows.run(rows.task(B, at(-30)), RunStatus.SUCCESS, started=at(-20), seconds=60)  # before
    assert first_run_moment(database, HOUR) == at(21)
    assert first_run_moment(database, HOUR, handler=B) == at(40)


def test_task_steps_read_whatever_is_stored() -> None:
    # Given a steps task whose data and results are not the expected shape
    run = RunSnapshot(
        id=7,
        task_queue_id=1,
        status=RunStatus.RUNNING,
        started_on=None,
        finished_on=None,
        percents_completed=50,
        results=None,
        standard_output=None,
        error_output=None,
        error_code=None,
        error_message=None,
        task_runner_id=None,
        progress_step=1,
        progress_steps=3,
        progress_status=None,
        celery_task_id=None,
        checkpoint={
            "steps": [{"step": 1, "status": "success", "run_id": 7}, "junk", {"step": True}]
        },
    )
    data = {"steps": [{"handler": "a.B", "title": "one"}, 42, {"title": 5}]}
    task = replace(task_snapshot(data), runs=(run,))
    # Then the steps are shown as far as they can be read
    views = task_steps(task)
    assert [(view.step, view.handler, view.status, view.run_id) for view in views] == [
        (1, "a.B", "success", 7),
        (2, "?", "running", None),
        (3, "?", "waiting", None),
    ]
    assert task_steps(replace(task, task_data={"steps": "nope"})) == ()
    assert task_steps(replace(task, task_handler_class="app.jobs.A")) == ()


def task_snapshot(data: object) -> TaskSnapshot:
    """A multi-step task's snapshot holding ``data``, with no run."""
    return TaskSnapshot(
        id=1,
        task_handler_class=STEPS_HANDLER,
        task_data=data,
        scheduled_on=T0,
        queued_on=T0,
        queued_by_id=None,
        last_status=RunStatus.RUNNING,
        max_retries=1,
        task_runs_failed=0,
        title=None,
        unique_key=None,
        cancel_requested_on=None,
    )
