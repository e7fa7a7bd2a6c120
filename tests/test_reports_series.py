"""Report queries behind the dashboard and metrics, on SQLite and PostgreSQL: runs over time,
duration histograms, runner counts, and the Flower keys runners and snapshots carry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from celery_taskq import reports
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import RunnerRole, RunnerStatus, RunStatus, TaskRun, TaskRunner
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.storage.database import Database
from celery_taskq.reports import (
    DurationHistogram,
    ReportWindow,
    RunCounts,
    RunnerCount,
)
from tests.test_reports import HOUR, A, B, Rows, at, write_totals_rows


@pytest.fixture
def rows(database: Database) -> Rows:
    """A writer of rows into the test database."""
    return Rows(database)


# -- runs over time -------------------------------------------------------------------------


def test_runs_over_time_buckets_add_up_to_the_window_totals(database: Database, rows: Rows) -> None:
    write_totals_rows(rows)

    series = reports.runs_over_time(database, HOUR, 4)

    assert series.bucket_seconds == 15 * 60.0
    assert [bucket.start for bucket in series.buckets] == [at(0), at(15), at(30), at(45)]
    assert [bucket.end for bucket in series.buckets] == [at(15), at(30), at(45), at(60)]
    # Each run falls where it reached its status, exactly once: the buckets add up.
    totals = reports.totals(database, HOUR).runs
    for status in RunStatus:
        assert sum(getattr(bucket.runs, status.value) for bucket in series.buckets) == getattr(
            totals, status.value
        )
    assert totals.total > 0


def test_runs_over_time_puts_each_run_in_its_bucket(database: Database, rows: Rows) -> None:
    for minute, status in [(5, RunStatus.SUCCESS), (14, RunStatus.ERROR), (29, RunStatus.SUCCESS)]:
        task = rows.task(A, at(0))
        rows.run(task, status, started=at(minute), seconds=30)  # ends at minute + 0.5
    boundary = rows.task(B, at(0))
    rows.run(boundary, RunStatus.TIMEOUT, started=at(10), finished=at(15))  # on a boundary
    running = rows.task(B, at(0))
    rows.run(running, RunStatus.RUNNING, started=at(50))
    scheduled = rows.task(B, at(0), scheduled_on=at(59, 59))
    rows.run(scheduled, RunStatus.SCHEDULED)
    outside = rows.task(A, at(0))
    rows.run(outside, RunStatus.SUCCESS, started=at(59), finished=at(60))  # until is excluded

    series = reports.runs_over_time(database, HOUR, 4)

    assert [bucket.runs for bucket in series.buckets] == [
        RunCounts(success=1, error=1),
        RunCounts(success=1, timeout=1),
        RunCounts(),
        RunCounts(running=1, scheduled=1),
    ]
    only_b = reports.runs_over_time(database, HOUR, 2, handler=B)
    assert [bucket.runs for bucket in only_b.buckets] == [
        RunCounts(timeout=1),
        RunCounts(running=1, scheduled=1),
    ]


def test_runs_over_time_uneven_buckets_end_at_until(database: Database, rows: Rows) -> None:
    task = rows.task(A, at(0))
    rows.run(task, RunStatus.SUCCESS, started=at(59), finished=at(59, 59))
    series = reports.runs_over_time(database, HOUR, 7)
    assert len(series.buckets) == 7
    assert series.buckets[-1].end == at(60)
    assert series.buckets[-1].runs == RunCounts(success=1)
    assert sum(bucket.runs.total for bucket in series.buckets) == 1


def test_runs_over_time_in_one_bucket(database: Database, rows: Rows) -> None:
    write_totals_rows(rows)
    (bucket,) = reports.runs_over_time(database, HOUR, 1).buckets
    assert (bucket.start, bucket.end) == (at(0), at(60))
    assert bucket.runs == reports.totals(database, HOUR).runs


@pytest.mark.parametrize(
    ("window", "buckets", "message"),
    [
        (ReportWindow(at(0)), 4, "both since and until"),
        (ReportWindow(None, at(0)), 4, "both since and until"),
        (HOUR, 0, "buckets must be an integer from 1 to 500"),
        (HOUR, 501, "buckets must be an integer from 1 to 500"),
    ],
)
def test_runs_over_time_refuses_bad_arguments(
    database: Database, window: ReportWindow, buckets: int, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        reports.runs_over_time(database, window, buckets)


# -- duration histograms --------------------------------------------------------------------


def test_duration_histograms_count_runs_at_most_each_bound(database: Database, rows: Rows) -> None:
    for seconds in (0.5, 1.0, 1.5, 10.0):
        task = rows.task(A, at(0))
        rows.run(task, RunStatus.SUCCESS, started=at(1), seconds=seconds)
    failed = rows.task(B, at(0))
    rows.run(failed, RunStatus.ERROR, started=at(2), seconds=3)
    never_started = rows.task(B, at(0))
    rows.run(never_started, RunStatus.ERROR, finished=at(3))  # cancelled before it started
    rows.run(rows.task(B, at(0)), RunStatus.RUNNING, started=at(4))  # not finished

    histograms = reports.duration_histograms(database, ReportWindow(), (1, 2, 5))

    assert histograms == (
        DurationHistogram(A, ((1.0, 2), (2.0, 3), (5.0, 3)), count=4, sum=13.0),
        DurationHistogram(B, ((1.0, 0), (2.0, 0), (5.0, 1)), count=1, sum=3.0),
    )
    assert reports.duration_histograms(database, ReportWindow(), (1,), handler=B) == (
        DurationHistogram(B, ((1.0, 0),), count=1, sum=3.0),
    )
    later = ReportWindow(at(10))
    assert reports.duration_histograms(database, later, (1,)) == ()


@pytest.mark.parametrize("bounds", [(), (0,), (2, 1), (1, 1), (float("inf"),), (-1,)])
def test_duration_histograms_refuse_bad_bounds(
    database: Database, bounds: tuple[float, ...]
) -> None:
    with pytest.raises(InvalidArgumentError, match="bounds must be ascending"):
        reports.duration_histograms(database, ReportWindow(), bounds)


# -- runners --------------------------------------------------------------------------------


def test_runner_counts_by_role_and_status(database: Database, rows: Rows) -> None:
    rows.runner(RunnerStatus.RUNNING, at(0))
    rows.runner(RunnerStatus.RUNNING, at(1))
    rows.runner(RunnerStatus.TIMEOUT, at(2), finished=at(3))
    rows.runner(RunnerStatus.SUCCESS, at(4), finished=at(5), role=RunnerRole.CELERY_WORKER)

    assert reports.runner_counts(database) == (
        RunnerCount(RunnerRole.CELERY_WORKER, RunnerStatus.SUCCESS, 1),
        RunnerCount(RunnerRole.RUNNER, RunnerStatus.RUNNING, 2),
        RunnerCount(RunnerRole.RUNNER, RunnerStatus.TIMEOUT, 1),
    )


def test_runner_report_carries_the_worker_hostname(database: Database, rows: Rows) -> None:
    runner_id = rows.runner(RunnerStatus.RUNNING, at(0), role=RunnerRole.CELERY_WORKER)
    with database.transaction() as connection:
        connection.execute(
            update(TaskRunner)
            .where(TaskRunner.id == runner_id)
            .values(worker_hostname="celery@host-1")
        )
    (runner,) = reports.runners(database, ReportWindow(), now=at(1))
    assert runner.worker_hostname == "celery@host-1"


# -- snapshots ------------------------------------------------------------------------------


def test_snapshots_carry_title_unique_key_cancel_and_celery_task_id(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task(
        "tests.handlers.Succeed", {}, title="Report 7", unique_key="report:7", create_run=True
    )
    with database.transaction() as connection:
        connection.execute(
            update(TaskRun).where(TaskRun.task_queue_id == task_id).values(celery_task_id="c-1")
        )
    service.cancel_task(task_id)
    task = service.get_task(task_id)
    assert (task.title, task.unique_key) == ("Report 7", "report:7")
    assert task.cancel_requested_on == service.clock()
    assert task.runs[0].celery_task_id == "c-1"
    assert service.get_run(task.runs[0].id).celery_task_id == "c-1"


def test_runs_over_time_of_one_second(database: Database, rows: Rows) -> None:
    task = rows.task(A, at(0))
    rows.run(task, RunStatus.SUCCESS, started=at(0), finished=at(0, 0.5))
    window = ReportWindow(at(0), at(0) + timedelta(seconds=1))
    series = reports.runs_over_time(database, window, 500)
    assert sum(bucket.runs.success for bucket in series.buckets) == 1
    assert series.buckets[250].runs == RunCounts(success=1)
