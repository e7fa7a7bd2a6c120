"""Reports on SQLite and PostgreSQL: every number is checked against the rows the test wrote."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from celery_taskq import reports
from celery_taskq.cli import main
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import (
    RunnerRole,
    RunnerStatus,
    RunStatus,
    TaskQueue,
    TaskRun,
    TaskRunner,
)
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.statements.tasks import rollup_tasks
from celery_taskq.core.storage.database import Database
from celery_taskq.reports import (
    DeadLetter,
    DueWork,
    DurationStats,
    FailedRun,
    FailureRate,
    HandlerTotals,
    ReportWindow,
    RunCounts,
    RunnerReport,
    SlowRun,
    TaskCounts,
    build_report,
    report_as_dict,
)
from celery_taskq.reports.sql import report_transaction
from tests.conftest import FakeClock
from tests.helpers import drive

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
HOUR = ReportWindow(T0, T0 + timedelta(hours=1))
A, B, C = "app.jobs.A", "app.jobs.B", "app.jobs.C"


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    """T0 plus an offset."""
    return T0 + timedelta(minutes=minutes, seconds=seconds)


class Rows:
    """Rows written directly, as a user's SQL could; every run is rolled up like the queue does."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def task(
        self,
        handler: str,
        queued_on: datetime,
        *,
        scheduled_on: datetime | None = None,
        max_retries: int = 5,
        cancelled_on: datetime | None = None,
    ) -> int:
        with self.database.transaction() as connection:
            return int(
                connection.execute(
                    insert(TaskQueue)
                    .values(
                        task_handler_class=handler,
                        task_data={},
                        queued_on=queued_on,
                        scheduled_on=scheduled_on or queued_on,
                        max_retries=max_retries,
                        task_runs_failed=0,
                        cancel_requested_on=cancelled_on,
                    )
                    .returning(TaskQueue.id)
                ).scalar_one()
            )

    def run(
        self,
        task_id: int,
        status: RunStatus,
        *,
        started: datetime | None = None,
        seconds: float | None = None,
        finished: datetime | None = None,
        runner: int | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> int:
        if seconds is not None:
            assert started is not None
            finished = started + timedelta(seconds=seconds)
        with self.database.transaction() as connection:
            run_id = int(
                connection.execute(
                    insert(TaskRun)
                    .values(
                        task_queue_id=task_id,
                        status=status,
                        started_on=started,
                        finished_on=finished,
                        task_runner_id=runner,
                        error_code=code,
                        error_message=message,
                    )
                    .returning(TaskRun.id)
                ).scalar_one()
            )
            rollup_tasks(connection, [task_id])
        return run_id

    def runner(
        self,
        status: RunnerStatus,
        started: datetime,
        *,
        finished: datetime | None = None,
        heartbeat: datetime | None = None,
        role: RunnerRole = RunnerRole.RUNNER,
        host: str = "host-1",
        pid: int = 4242,
    ) -> int:
        with self.database.transaction() as connection:
            return int(
                connection.execute(
                    insert(TaskRunner)
                    .values(
                        process_id=pid,
                        hostname=host,
                        started_on=started,
                        finished_on=finished,
                        heartbeat_on=heartbeat,
                        status=status,
                        role=role,
                    )
                    .returning(TaskRunner.id)
                ).scalar_one()
            )


@pytest.fixture
def rows(database: Database) -> Rows:
    """A writer of rows into the test database."""
    return Rows(database)


# -- totals and failure rates ---------------------------------------------------------------


def write_totals_rows(rows: Rows) -> None:
    """Tasks and runs in and around HOUR (T0 to T0+1h)."""
    a1 = rows.task(A, at(1))
    rows.run(a1, RunStatus.SUCCESS, started=at(2), seconds=1)
    a2 = rows.task(A, at(2))
    rows.run(a2, RunStatus.ERROR, started=at(3), seconds=2)
    rows.run(a2, RunStatus.SUCCESS, started=at(4), seconds=3)
    rows.task(A, at(3))  # never run
    a_old = rows.task(A, at(-60))  # queued before the window; its run ends inside
    rows.run(a_old, RunStatus.SUCCESS, started=at(-1), finished=at(0, 4))
    a_late = rows.task(A, at(5))  # queued inside; its run ends after the window
    rows.run(a_late, RunStatus.ERROR, started=at(59), finished=at(61))
    b1 = rows.task(B, at(10), max_retries=2)
    rows.run(b1, RunStatus.ERROR, started=at(11), seconds=10)
    rows.run(b1, RunStatus.TIMEOUT, started=at(12), seconds=20)
    c1 = rows.task(C, at(20))
    rows.run(c1, RunStatus.RUNNING, started=at(21))
    c_old = rows.task(C, at(-120))  # running since before the window: not in it
    rows.run(c_old, RunStatus.RUNNING, started=at(-90))
    c2 = rows.task(C, at(22), scheduled_on=at(90))  # due after the window
    rows.run(c2, RunStatus.SCHEDULED)
    c3 = rows.task(C, at(23))  # due inside the window
    rows.run(c3, RunStatus.SCHEDULED)
    rows.task("app.jobs.D", at(70))  # queued after the window


def test_totals_count_tasks_by_queued_on_and_runs_by_when_they_reached_their_status(
    database: Database, rows: Rows
) -> None:
    write_totals_rows(rows)

    totals = reports.totals(database, HOUR)

    assert totals.tasks == TaskCounts(
        never_run=1, scheduled=2, running=1, success=2, error=1, timeout=1
    )
    assert totals.tasks.total == 8
    assert totals.runs == RunCounts(scheduled=1, running=1, success=3, error=2, timeout=1)
    assert totals.runs.total == 8
    assert totals.by_handler == (
        HandlerTotals(
            A, TaskCounts(never_run=1, success=2, error=1), RunCounts(success=3, error=1)
        ),
        HandlerTotals(B, TaskCounts(timeout=1), RunCounts(error=1, timeout=1)),
        HandlerTotals(C, TaskCounts(scheduled=2, running=1), RunCounts(scheduled=1, running=1)),
    )


def test_totals_without_a_window_count_everything(database: Database, rows: Rows) -> None:
    write_totals_rows(rows)

    totals = reports.totals(database, ReportWindow())

    assert totals.tasks == TaskCounts(
        never_run=2, scheduled=2, running=2, success=3, error=1, timeout=1
    )
    assert totals.runs == RunCounts(scheduled=2, running=2, success=3, error=3, timeout=1)
    assert [row.handler for row in totals.by_handler] == [A, B, C, "app.jobs.D"]


def test_failure_rates_overall_and_per_handler(database: Database, rows: Rows) -> None:
    write_totals_rows(rows)

    rates = reports.failure_rates(database, HOUR)

    # A: success x3, error x1 ended inside, and its three tasks all succeeded in the end (the
    # error was retried); B: error, timeout, and its task is out of retries; C: nothing finished
    assert rates.overall == FailureRate(
        None, 6, 3, 0.5, tasks=4, failed_tasks=1, task_failure_rate=0.25
    )
    assert rates.by_handler == (
        FailureRate(A, 4, 1, 0.25, tasks=3, failed_tasks=0, task_failure_rate=0.0),
        FailureRate(B, 2, 2, 1.0, tasks=1, failed_tasks=1, task_failure_rate=1.0),
    )


def test_failure_rate_per_task_counts_final_outcomes_only(database: Database, rows: Rows) -> None:
    # Given a task retried until it succeeded, one failed with retries left, one failed and
    # then cancelled, one out of retries, and one whose last run is still open
    retried = rows.task(A, at(1), max_retries=3)
    rows.run(retried, RunStatus.ERROR, started=at(2), seconds=1)
    rows.run(retried, RunStatus.TIMEOUT, started=at(3), seconds=1)
    rows.run(retried, RunStatus.SUCCESS, started=at(4), seconds=1)
    pending = rows.task(A, at(1), max_retries=3)
    rows.run(pending, RunStatus.ERROR, started=at(2), seconds=1)
    cancelled = rows.task(A, at(1), max_retries=3, cancelled_on=at(5))
    rows.run(cancelled, RunStatus.ERROR, started=at(2), seconds=1)
    exhausted = rows.task(A, at(1), max_retries=1)
    rows.run(exhausted, RunStatus.TIMEOUT, started=at(2), seconds=1)
    open_again = rows.task(A, at(1), max_retries=3)
    rows.run(open_again, RunStatus.ERROR, started=at(2), seconds=1)
    rows.run(open_again, RunStatus.SCHEDULED)

    rates = reports.failure_rates(database, HOUR)

    # Then per task: 1 succeeded, 2 failed for good; per attempt: 6 of 7 failed
    assert rates.overall == FailureRate(
        None, 7, 6, 6 / 7, tasks=3, failed_tasks=2, task_failure_rate=2 / 3
    )


def test_handler_filter_narrows_totals_and_rates(database: Database, rows: Rows) -> None:
    write_totals_rows(rows)

    totals = reports.totals(database, HOUR, handler=A)
    rates = reports.failure_rates(database, HOUR, handler=A)
    nothing = reports.failure_rates(database, HOUR, handler="app.jobs.Unknown")

    assert totals.tasks == TaskCounts(never_run=1, success=2, error=1)
    assert totals.runs == RunCounts(success=3, error=1)
    assert [row.handler for row in totals.by_handler] == [A]
    assert rates.overall == FailureRate(None, 4, 1, 0.25, 3, 0, 0.0)
    assert nothing.overall == FailureRate(None, 0, 0, None, 0, 0, None)
    assert nothing.by_handler == ()


def test_window_bounds_are_half_open(database: Database, rows: Rows) -> None:
    on_since = rows.task(A, at(0))
    rows.run(on_since, RunStatus.SUCCESS, started=at(0), finished=at(0))
    on_until = rows.task(A, at(60))
    rows.run(on_until, RunStatus.ERROR, started=at(59), finished=at(60))

    totals = reports.totals(database, HOUR)

    assert totals.tasks == TaskCounts(success=1)
    assert totals.runs == RunCounts(success=1)
    only_since = reports.totals(database, ReportWindow(since=at(60)))
    assert (only_since.tasks, only_since.runs) == (TaskCounts(error=1), RunCounts(error=1))
    only_until = reports.totals(database, ReportWindow(until=at(60)))
    assert (only_until.tasks, only_until.runs) == (TaskCounts(success=1), RunCounts(success=1))


# -- durations ------------------------------------------------------------------------------


def test_duration_percentiles_per_handler(database: Database, rows: Rows) -> None:
    for number in range(1, 12):  # A: 1 s .. 11 s, written out of order
        task = rows.task(A, at(1))
        rows.run(task, RunStatus.SUCCESS, started=at(number), seconds=(number * 7) % 11 + 1)
    b_durations = [100.0, 0.5, 4.0, 2.25]
    for number, seconds in enumerate(b_durations):
        task = rows.task(B, at(1))
        status = RunStatus.TIMEOUT if number == 0 else RunStatus.ERROR
        rows.run(task, status, started=at(10 + number), seconds=seconds)
    precise = rows.task(C, at(1))
    rows.run(precise, RunStatus.SUCCESS, started=at(5), seconds=1.000250)
    # Not counted: cancelled before it started, still running, ended outside the window
    cancelled = rows.task(A, at(1))
    rows.run(cancelled, RunStatus.ERROR, finished=at(30), code="cancelled")
    running = rows.task(A, at(1))
    rows.run(running, RunStatus.RUNNING, started=at(2))
    late = rows.task(A, at(1))
    rows.run(late, RunStatus.SUCCESS, started=at(59), seconds=3600)

    stats = reports.duration_stats(database, HOUR)

    # percentile_cont: position q * (n - 1), linear interpolation between its neighbours
    assert stats == (
        DurationStats(
            A, runs=11, p50=6.0, p90=10.0, p99=10.0 + (11.0 - 10.0) * (0.99 * 10 - 9), max=11.0
        ),
        DurationStats(
            B,
            runs=4,
            p50=2.25 + (4.0 - 2.25) * 0.5,
            p90=4.0 + (100.0 - 4.0) * (0.9 * 3 - 2),
            p99=4.0 + (100.0 - 4.0) * (0.99 * 3 - 2),
            max=100.0,
        ),
        DurationStats(C, runs=1, p50=1.00025, p90=1.00025, p99=1.00025, max=1.00025),
    )
    assert stats[0].p99 == 10.9
    assert reports.duration_stats(database, HOUR, handler=B) == (stats[1],)


def test_percentile_cont_matches_sql() -> None:
    assert reports.percentile_cont([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert reports.percentile_cont([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0
    assert reports.percentile_cont([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
    assert reports.percentile_cont([7.0], 0.99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        reports.percentile_cont([], 0.5)


@pytest.mark.postgresql
def test_report_reads_run_without_jit_on_postgresql(postgresql_schema_url: str) -> None:
    # JIT compiling cost more than the report queries themselves at a million rows.
    database = Database(postgresql_schema_url)
    try:
        with report_transaction(database) as connection:
            assert connection.exec_driver_sql("SHOW jit").scalar_one() == "off"
        with database.transaction(read_only=True) as connection:
            assert connection.exec_driver_sql("SHOW jit").scalar_one() == "on"  # the report's only
    finally:
        database.close()


# -- slowest runs and recent failures -------------------------------------------------------


def test_slowest_runs_longest_first_ties_by_run_id(database: Database, rows: Rows) -> None:
    ids = {}
    for name, handler, status, seconds in [
        ("short", A, RunStatus.SUCCESS, 1.5),
        ("tie-1", B, RunStatus.ERROR, 30.0),
        ("longest", A, RunStatus.TIMEOUT, 45.000001),
        ("tie-2", A, RunStatus.SUCCESS, 30.0),
        ("middle", B, RunStatus.SUCCESS, 12.25),
    ]:
        task = rows.task(handler, at(1))
        ids[name] = (rows.run(task, status, started=at(2), seconds=seconds), task)
    outside = rows.task(A, at(1))
    rows.run(outside, RunStatus.SUCCESS, started=at(50), seconds=7200)

    slowest = reports.slowest_runs(database, HOUR, limit=3)

    def slow(name: str, handler: str, status: RunStatus, seconds: float) -> SlowRun:
        run_id, task_id = ids[name]
        return SlowRun(run_id, task_id, handler, status, at(2), at(2, seconds), duration=seconds)

    assert slowest == (
        slow("longest", A, RunStatus.TIMEOUT, 45.000001),
        slow("tie-1", B, RunStatus.ERROR, 30.0),
        slow("tie-2", A, RunStatus.SUCCESS, 30.0),
    )
    assert reports.slowest_runs(database, HOUR, handler=B) == (
        slow("tie-1", B, RunStatus.ERROR, 30.0),
        slow("middle", B, RunStatus.SUCCESS, 12.25),
    )


def test_recent_failures_newest_first(database: Database, rows: Rows) -> None:
    t1 = rows.task(A, at(1))
    first = rows.run(t1, RunStatus.ERROR, started=at(2), finished=at(3), code="E1", message="one")
    rows.run(t1, RunStatus.SUCCESS, started=at(4), finished=at(5))
    t2 = rows.task(B, at(1))
    timeout = rows.run(t2, RunStatus.TIMEOUT, started=at(5), finished=at(20), message="lost")
    t3 = rows.task(A, at(1))
    same_time = rows.run(t3, RunStatus.ERROR, started=at(6), finished=at(20), code="E3")
    t4 = rows.task(A, at(1))
    rows.run(t4, RunStatus.ERROR, started=at(-10), finished=at(-5), code="OLD")

    failures = reports.recent_failures(database, HOUR)

    assert failures == (
        FailedRun(same_time, t3, A, RunStatus.ERROR, "E3", None, at(20)),
        FailedRun(timeout, t2, B, RunStatus.TIMEOUT, None, "lost", at(20)),
        FailedRun(first, t1, A, RunStatus.ERROR, "E1", "one", at(3)),
    )
    assert reports.recent_failures(database, HOUR, limit=1) == failures[:1]
    assert reports.recent_failures(database, HOUR, handler=B) == failures[1:2]


# -- dead letters ---------------------------------------------------------------------------


def test_dead_letters_rule(database: Database, rows: Rows) -> None:
    exhausted = rows.task(A, at(1), max_retries=2)
    rows.run(exhausted, RunStatus.ERROR, started=at(2), finished=at(3))
    exhausted_last = rows.run(
        exhausted, RunStatus.ERROR, started=at(4), finished=at(5), code="E_X", message="gone"
    )
    retries_left = rows.task(A, at(1), max_retries=2)
    rows.run(retries_left, RunStatus.ERROR, started=at(2), finished=at(3))
    retried_by_hand = rows.task(A, at(1), max_retries=1)
    rows.run(retried_by_hand, RunStatus.ERROR, started=at(2), finished=at(3))
    rows.run(retried_by_hand, RunStatus.SCHEDULED)
    # An open run older than the failed one: the roll-up says "error, 1/1", but it is not dead
    open_run = rows.task(A, at(1), max_retries=1)
    rows.run(open_run, RunStatus.SCHEDULED)
    rows.run(open_run, RunStatus.ERROR, started=at(6), finished=at(7))
    succeeded = rows.task(A, at(1), max_retries=1)
    rows.run(succeeded, RunStatus.ERROR, started=at(2), finished=at(3))
    rows.run(succeeded, RunStatus.SUCCESS, started=at(4), finished=at(5))
    timed_out = rows.task(B, at(1), max_retries=1)
    timed_out_run = rows.run(timed_out, RunStatus.TIMEOUT, started=at(2), finished=at(3))
    cancelled = rows.task(A, at(1), max_retries=1, cancelled_on=at(4))
    cancelled_run = rows.run(cancelled, RunStatus.ERROR, finished=at(4), code="cancelled")
    before = rows.task(A, at(-30), max_retries=1)
    rows.run(before, RunStatus.ERROR, started=at(-20), finished=at(-10))

    dead = reports.dead_letters(database, HOUR)

    assert dead == (
        DeadLetter(
            exhausted, A, RunStatus.ERROR, 2, 2, at(1), None, exhausted_last, at(5), "E_X", "gone"
        ),
        DeadLetter(
            cancelled,
            A,
            RunStatus.ERROR,
            1,
            1,
            at(1),
            at(4),
            cancelled_run,
            at(4),
            "cancelled",
            None,
        ),
        DeadLetter(
            timed_out, B, RunStatus.TIMEOUT, 1, 1, at(1), None, timed_out_run, at(3), None, None
        ),
    )
    assert reports.dead_letters(database, HOUR, handler=B) == dead[2:]
    assert reports.dead_letters(database, HOUR, limit=2) == dead[:2]
    unbounded = reports.dead_letters(database, ReportWindow())
    assert [letter.task_id for letter in unbounded] == [exhausted, cancelled, timed_out, before]


def test_dead_letters_through_the_queue(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    window = ReportWindow(clock.now - timedelta(hours=1), clock.now + timedelta(hours=1))
    task_id = service.add_task("tests.handlers.AlwaysFail", max_retries=2)
    drive(service, cycles=3)
    [letter] = reports.dead_letters(database, window)
    assert (letter.task_id, letter.task_runs_failed, letter.max_retries) == (task_id, 2, 2)

    service.retry_task(task_id)  # an open run: no longer dead
    assert reports.dead_letters(database, window) == ()

    drive(service)
    [letter] = reports.dead_letters(database, window)
    assert (letter.task_id, letter.task_runs_failed) == (task_id, 3)


# -- runners and due work -------------------------------------------------------------------


def test_runners_with_heartbeat_age_and_runs(database: Database, rows: Rows) -> None:
    now = at(120)
    old = rows.runner(RunnerStatus.RUNNING, at(-120), heartbeat=at(119, 30), pid=11)
    finished = rows.runner(
        RunnerStatus.SUCCESS, at(10), finished=at(20), heartbeat=at(19), host="host-2", pid=12
    )
    rows.runner(  # ended before the window
        RunnerStatus.TIMEOUT,
        at(-300),
        finished=at(-200),
        heartbeat=at(-250),
        role=RunnerRole.CELERY_WORKER,
    )
    silent = rows.runner(
        RunnerStatus.RUNNING, at(30), role=RunnerRole.CELERY_WORKER, host="host-3", pid=13
    )
    rows.runner(RunnerStatus.RUNNING, at(70), heartbeat=at(119))  # started after the window
    for minute in (1, 2):
        task = rows.task(A, at(1))
        rows.run(task, RunStatus.SUCCESS, started=at(minute), seconds=1, runner=old)
    task = rows.task(A, at(1))
    rows.run(task, RunStatus.RUNNING, started=at(3), runner=old)
    task = rows.task(B, at(1))
    rows.run(task, RunStatus.ERROR, started=at(15), seconds=1, runner=finished)

    listed = reports.runners(database, HOUR, now=now)

    assert listed == (
        RunnerReport(
            silent, RunnerRole.CELERY_WORKER, "host-3", 13, RunnerStatus.RUNNING, at(30), None,
            None, heartbeat_age=None, runs=0,
        ),
        RunnerReport(
            old, RunnerRole.RUNNER, "host-1", 11, RunnerStatus.RUNNING, at(-120), None,
            at(119, 30), heartbeat_age=30.0, runs=3,
        ),
        RunnerReport(
            finished, RunnerRole.RUNNER, "host-2", 12, RunnerStatus.SUCCESS, at(10), at(20),
            at(19), heartbeat_age=101 * 60.0, runs=1,
        ),
    )  # fmt: skip
    assert reports.runners(database, HOUR, now=now, limit=2) == listed[:2]


def test_due_work_now(database: Database, rows: Rows) -> None:
    now = at(60)
    for scheduled_on, handler in [(at(10), A), (at(30), B), (at(90), A)]:
        task = rows.task(handler, at(0), scheduled_on=scheduled_on)
        rows.run(task, RunStatus.SCHEDULED)
    running = rows.task(A, at(0))
    rows.run(running, RunStatus.RUNNING, started=at(1))
    rows.task(A, at(0), scheduled_on=at(20))  # due, no run yet
    rows.task(B, at(0), scheduled_on=at(80))  # not due yet
    rows.task("celery:app.send", at(0), scheduled_on=at(5))  # Celery delivers those
    retry_left = rows.task(B, at(0), scheduled_on=at(40), max_retries=3)
    rows.run(retry_left, RunStatus.ERROR, started=at(1), finished=at(2))
    exhausted = rows.task(A, at(0), scheduled_on=at(40), max_retries=1)
    rows.run(exhausted, RunStatus.ERROR, started=at(1), finished=at(2))
    done = rows.task(A, at(0))
    rows.run(done, RunStatus.SUCCESS, started=at(1), finished=at(2))

    assert reports.due_work(database, now=now) == DueWork(
        due_scheduled_runs=2,
        future_scheduled_runs=1,
        running_runs=1,
        oldest_due_age=50 * 60.0,
        due_tasks_without_run=2,
    )
    assert reports.due_work(database, now=now, handler=B) == DueWork(
        due_scheduled_runs=1,
        future_scheduled_runs=0,
        running_runs=0,
        oldest_due_age=30 * 60.0,
        due_tasks_without_run=1,
    )
    assert reports.due_work(database, now=at(0)) == DueWork(0, 3, 1, None, 0)


# -- the whole report -----------------------------------------------------------------------


def write_report_rows(rows: Rows) -> dict[str, int]:
    """A small history inside HOUR: one success, one dead letter, a runner, due work."""
    runner = rows.runner(RunnerStatus.RUNNING, at(0), heartbeat=at(59, 50), host="h", pid=7)
    ok = rows.task(A, at(1))
    ok_run = rows.run(ok, RunStatus.SUCCESS, started=at(2), seconds=2.5, runner=runner)
    dead = rows.task(B, at(3), max_retries=1)
    dead_run = rows.run(
        dead,
        RunStatus.ERROR,
        started=at(4),
        seconds=0.5,
        runner=runner,
        code="E_SMTP",
        message="SMTP refused\nsecond line",
    )
    waiting = rows.task(A, at(5))
    rows.run(waiting, RunStatus.SCHEDULED)
    return {"runner": runner, "ok": ok, "ok_run": ok_run, "dead": dead, "dead_run": dead_run}


def test_build_report_and_its_dict(database: Database, rows: Rows) -> None:
    ids = write_report_rows(rows)

    report = build_report(database, since=at(0), until=at(60), now=at(60))

    assert report.totals == reports.totals(database, HOUR)
    assert report.failure_rates == reports.failure_rates(database, HOUR)
    assert report.durations == reports.duration_stats(database, HOUR)
    assert report.slowest_runs == reports.slowest_runs(database, HOUR)
    assert report.recent_failures == reports.recent_failures(database, HOUR)
    assert report.dead_letters == reports.dead_letters(database, HOUR)
    assert report.runners == reports.runners(database, HOUR, now=at(60))
    assert report.due_work == reports.due_work(database, now=at(60))
    document = report_as_dict(report)
    assert json.loads(json.dumps(document)) == document
    assert document["now"] == "2026-01-01T13:00:00+00:00"
    assert document["window"] == {
        "since": "2026-01-01T12:00:00+00:00",
        "until": "2026-01-01T13:00:00+00:00",
    }
    assert (document["handler"], document["limit"]) == (None, reports.DEFAULT_LIMIT)
    assert document["totals"]["tasks"] == {
        "never_run": 0,
        "scheduled": 1,
        "running": 0,
        "success": 1,
        "error": 1,
        "timeout": 0,
        "total": 3,
    }
    assert document["failure_rates"]["overall"] == {
        "handler": None,
        "attempts": 2,
        "failed_attempts": 1,
        "attempt_failure_rate": 0.5,
        "tasks": 2,
        "failed_tasks": 1,
        "task_failure_rate": 0.5,
    }
    assert document["durations"] == [
        {"handler": A, "runs": 1, "p50": 2.5, "p90": 2.5, "p99": 2.5, "max": 2.5},
        {"handler": B, "runs": 1, "p50": 0.5, "p90": 0.5, "p99": 0.5, "max": 0.5},
    ]
    assert document["recent_failures"] == [
        {
            "run_id": ids["dead_run"],
            "task_id": ids["dead"],
            "handler": B,
            "status": "error",
            "error_code": "E_SMTP",
            "error_message": "SMTP refused\nsecond line",
            "finished_on": "2026-01-01T12:04:00.500000+00:00",
        }
    ]
    assert document["dead_letters"][0]["last_status"] == "error"
    assert document["runners"] == [
        {
            "runner_id": ids["runner"],
            "role": "runner",
            "hostname": "h",
            "process_id": 7,
            "status": "running",
            "started_on": "2026-01-01T12:00:00+00:00",
            "finished_on": None,
            "heartbeat_on": "2026-01-01T12:59:50+00:00",
            "heartbeat_age": 10.0,
            "runs": 2,
            "worker_hostname": None,
        }
    ]
    assert document["due_work"] == {
        "due_scheduled_runs": 1,
        "future_scheduled_runs": 0,
        "running_runs": 0,
        "oldest_due_age": 55 * 60.0,
        "due_tasks_without_run": 0,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"since": datetime(2026, 1, 1)}, "since must be a timezone-aware datetime"),
        ({"until": datetime(2026, 1, 1)}, "until must be a timezone-aware datetime"),
        ({"since": T0, "until": T0}, "must be before until"),
        ({"now": datetime(2026, 1, 1)}, "now must be a timezone-aware datetime"),
        ({"limit": 0}, "limit must be an integer from 1 to 1000"),
        ({"limit": 1001}, "limit must be an integer from 1 to 1000"),
        ({"handler": ""}, "handler must be a non-empty TaskHandlerClass"),
    ],
)
def test_bad_report_arguments(database: Database, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        build_report(database, **kwargs)


def test_parse_moment() -> None:
    assert reports.parse_moment("24h") == timedelta(hours=24)
    assert reports.parse_moment("1h30m") == timedelta(minutes=90)
    assert reports.parse_moment("2w") == timedelta(days=14)
    assert reports.parse_moment("90S") == timedelta(seconds=90)
    assert reports.parse_moment("2026-01-31T10:00:00+02:00") == datetime(2026, 1, 31, 8, tzinfo=UTC)
    assert reports.parse_moment("2026-01-31T08:00:00Z") == datetime(2026, 1, 31, 8, tzinfo=UTC)
    assert reports.resolve_moment(timedelta(hours=1), T0) == at(-60)
    assert reports.resolve_moment(T0, at(5)) == T0
    assert reports.resolve_moment(None, T0) is None
    with pytest.raises(InvalidArgumentError, match="neither an ISO 8601 time nor a duration"):
        reports.parse_moment("yesterday")
    with pytest.raises(InvalidArgumentError, match="has no UTC offset"):
        reports.parse_moment("2026-01-31T08:00:00")


# -- the command line -----------------------------------------------------------------------

RunCli = Callable[..., tuple[int, str, str]]
NOW = at(60)


@pytest.fixture
def run_cli(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> RunCli:
    """Run the command in-process at NOW; return (code, stdout, stderr)."""
    monkeypatch.setattr(reports, "utc_now", lambda: NOW)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--database-url", database_url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_report_tables(run_cli: RunCli, rows: Rows) -> None:
    ids = write_report_rows(rows)

    code, out, err = run_cli("report")  # the last 24 hours

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == (
        "report  since 2025-12-31T13:00:00+00:00  until -  now 2026-01-01T13:00:00+00:00  "
        "handler (all)"
    )
    titles = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == ""]
    assert titles == [
        "totals (tasks by last status, runs by status)",
        "failure rates (per task: final outcome failed; per attempt: error + timeout over "
        "finished runs)",
        "durations of finished runs (seconds)",
        "slowest runs",
        "recent failures",
        "dead letters (out of retries, no open run)",
        "runners",
        "due work (now)",
        "possibly lost (native tasks never started 3600 s past due, now): 0",
    ]
    section = {title: lines[lines.index(title) + 1 :] for title in titles}
    totals = section["totals (tasks by last status, runs by status)"]
    assert totals[0].split() == [
        "HANDLER", "OF", "TOTAL", "NEVER_RUN", "SCHEDULED", "RUNNING", "SUCCESS", "ERROR", "TIMEOUT"
    ]  # fmt: skip
    assert totals[1].split() == ["(all)", "tasks", "3", "0", "1", "0", "1", "1", "0"]
    assert totals[2].split() == ["(all)", "runs", "3", "-", "1", "0", "1", "1", "0"]
    # Columns line up: every cell starts where its header does
    assert totals[1].index("tasks") == totals[0].index("OF")
    assert totals[1].index("3") == totals[0].index("TOTAL")
    rates = section[titles[1]]
    assert rates[0].split() == [
        "HANDLER", "TASKS", "FAILED_TASKS", "PER_TASK", "ATTEMPTS", "FAILED_ATTEMPTS", "PER_ATTEMPT"
    ]  # fmt: skip
    assert rates[1].split() == ["(all)", "2", "1", "50.0%", "2", "1", "50.0%"]
    assert rates[2].split() == [A, "1", "0", "0.0%", "1", "0", "0.0%"]
    assert rates[3].split() == [B, "1", "1", "100.0%", "1", "1", "100.0%"]
    durations = section["durations of finished runs (seconds)"]
    assert durations[1].split() == [A, "1", "2.500", "2.500", "2.500", "2.500"]
    slowest = section["slowest runs"]
    assert slowest[1].split()[:5] == [str(ids["ok_run"]), str(ids["ok"]), A, "success", "2.500"]
    failures = section["recent failures"]
    assert failures[1].split() == [
        str(ids["dead_run"]), str(ids["dead"]), B, "error", "2026-01-01T12:04:00+00:00", "E_SMTP",
        "SMTP", "refused",
    ]  # fmt: skip
    dead = section["dead letters (out of retries, no open run)"]
    assert dead[1].split()[:5] == [str(ids["dead"]), B, "error", "1/1", str(ids["dead_run"])]
    runners = section["runners"]
    assert runners[1].split() == [
        str(ids["runner"]), "runner", "h", "7", "running", "2026-01-01T12:00:00+00:00", "10.000",
        "2",
    ]  # fmt: skip
    due = section["due work (now)"]
    assert due[1].split() == ["1", "0", "0", "3300.000", "0"]


def test_cli_report_empty_sections(run_cli: RunCli) -> None:
    code, out, _ = run_cli("report", "--handler", "app.jobs.Nothing")
    assert code == 0
    lines = out.splitlines()
    assert lines[lines.index("slowest runs") + 2] == "(none)"
    assert lines[lines.index("runners") + 2] == "(none)"


def test_cli_report_json_is_the_report(run_cli: RunCli, database: Database, rows: Rows) -> None:
    write_report_rows(rows)

    code, out, err = run_cli(
        "report", "--json", "--since", "2026-01-01T13:00:00+01:00", "--until", "30m", "--limit", "1"
    )

    assert (code, err) == (0, "")
    expected = build_report(database, since=at(0), until=at(30), now=NOW, limit=1)
    assert json.loads(out) == report_as_dict(expected)
    assert json.loads(out)["window"]["until"] == "2026-01-01T12:30:00+00:00"


def test_cli_report_csv(run_cli: RunCli, rows: Rows) -> None:
    ids = write_report_rows(rows)

    code, out, err = run_cli("report", "--csv", "--handler", B)

    assert (code, err) == (0, "")
    tables: dict[str, list[list[str]]] = {}
    for block in out.split("\n# "):
        name, _, body = block.removeprefix("# ").partition("\n")
        tables[name] = [row for row in csv.reader(io.StringIO(body)) if row]
    assert list(tables) == [
        "totals",
        "failure_rates",
        "durations",
        "slowest_runs",
        "recent_failures",
        "dead_letters",
        "runners",
        "due_work",
        "possibly_lost",
    ]
    assert tables["totals"] == [
        [
            "HANDLER",
            "OF",
            "TOTAL",
            "NEVER_RUN",
            "SCHEDULED",
            "RUNNING",
            "SUCCESS",
            "ERROR",
            "TIMEOUT",
        ],
        ["(all)", "tasks", "1", "0", "0", "0", "0", "1", "0"],
        ["(all)", "runs", "1", "", "0", "0", "0", "1", "0"],
        [B, "tasks", "1", "0", "0", "0", "0", "1", "0"],
        [B, "runs", "1", "", "0", "0", "0", "1", "0"],
    ]
    assert tables["failure_rates"][1:] == [
        ["(all)", "1", "1", "1.0", "1", "1", "1.0"],
        [B, "1", "1", "1.0", "1", "1", "1.0"],
    ]
    assert tables["durations"][1:] == [[B, "1", "0.5", "0.5", "0.5", "0.5"]]
    assert tables["recent_failures"][1:] == [
        [
            str(ids["dead_run"]),
            str(ids["dead"]),
            B,
            "error",
            "2026-01-01T12:04:00.500000+00:00",
            "E_SMTP",
            "SMTP refused\nsecond line",
        ]
    ]
    assert tables["runners"][1:] == [
        [
            str(ids["runner"]),
            "runner",
            "h",
            "7",
            "running",
            "2026-01-01T12:00:00+00:00",
            "10.0",
            "2",
        ]
    ]
    assert tables["due_work"] == [
        ["DUE_SCHEDULED", "FUTURE_SCHEDULED", "RUNNING", "OLDEST_DUE_AGE", "DUE_WITHOUT_RUN"],
        ["0", "0", "0", "", "0"],
    ]


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--json", "--csv"], 2, "error: --json and --csv cannot be combined: choose one"),
        (
            ["--since", "yesterday"],
            2,
            "error: Invalid value for '--since': 'yesterday' is neither an ISO 8601 time nor a "
            "duration like 24h, 30m or 7d",
        ),
        (["--until", "2026-01-01T08:00:00"], 2, "has no UTC offset"),
        (["--limit", "0"], 2, "Invalid value for '--limit'"),
        (["--format", "xml"], 2, "error: No such option '--format'"),
        (
            ["--since", "1h", "--until", "2h"],
            1,
            "error: since (2026-01-01T12:00:00+00:00) must be before until "
            "(2026-01-01T11:00:00+00:00)",
        ),
        (["--handler", ""], 1, "error: handler must be a non-empty TaskHandlerClass"),
    ],
)
def test_cli_report_bad_input(run_cli: RunCli, args: list[str], code: int, expected: str) -> None:
    result, out, err = run_cli("report", *args)
    assert result == code
    assert out == ""
    assert expected in err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "rror" in line]
    assert len(error_lines) == 1
