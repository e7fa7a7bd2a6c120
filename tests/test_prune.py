"""Pruning deletes exactly the finished, old rows, in bounded statements, on both databases.

Rows are written directly, so that every state a task can be in (finished in each way, may
still run, open run, never started, native) is present at once; the pruning statements are
then run through :class:`~celery_taskq.core.retention_pruner.Pruner` and OnProcess.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest
from sqlalchemy import event, insert, select
from sqlalchemy.orm import Session

from celery_taskq.core.models import (
    BeatTick,
    RunnerRole,
    RunnerStatus,
    RunStatus,
    TaskQueue,
    TaskRun,
    TaskRunner,
)
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.retention import RetentionPolicy
from celery_taskq.core.retention_models import PrunedRows
from celery_taskq.core.retention_pruner import Pruner, PruneReport
from celery_taskq.core.schedule_models import TaskSchedule, TaskScheduleSlot
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.web.metrics import metrics_registry
from tests.conftest import FakeClock

DAY = timedelta(days=1)
OLDER_THAN = RetentionPolicy.everything_older_than(30 * DAY)


@dataclass
class Seeded:
    """Ids of the rows a test seeded, by what should happen to them."""

    pruned_tasks: set[int] = field(default_factory=set)
    kept_tasks: set[int] = field(default_factory=set)
    pruned_runners: set[int] = field(default_factory=set)
    kept_runners: set[int] = field(default_factory=set)


class Seeder:
    """Writes TaskQueue, TaskRuns and TaskRunners rows in a given state."""

    def __init__(self, database: Database, now: datetime) -> None:
        self.database = database
        self.now = now

    @staticmethod
    def real_now() -> datetime:
        """The wall clock, for rows a command line (which reads it) judges."""
        return datetime.now(UTC)

    def runner(self, finished_days_ago: float | None, role: RunnerRole = RunnerRole.RUNNER) -> int:
        """A runner row; ``None``: still running."""
        started = self.now - timedelta(days=(finished_days_ago or 0) + 1)
        values: dict[str, Any] = {
            "process_id": 4242,
            "started_on": started,
            "hostname": "prune-host",
            "role": role,
            "status": RunnerStatus.RUNNING if finished_days_ago is None else RunnerStatus.SUCCESS,
            "finished_on": None
            if finished_days_ago is None
            else self.now - timedelta(days=finished_days_ago),
        }
        with self.database.transaction() as connection:
            statement = insert(TaskRunner).values(**values).returning(TaskRunner.id)
            return int(connection.execute(statement).scalar_one())

    def task(
        self,
        last_status: RunStatus | None,
        runs: list[tuple[RunStatus, float | None]],
        *,
        failed: int = 0,
        max_retries: int = 5,
        handler: str = "tests.handlers.Succeed",
        queued_days_ago: float = 100,
        cancelled: bool = False,
        runner_id: int | None = None,
    ) -> int:
        """A task with ``runs`` given as (status, days ago it finished; ``None``: not)."""
        queued = self.now - timedelta(days=queued_days_ago)
        with self.database.transaction() as connection:
            task_id = int(
                connection.execute(
                    insert(TaskQueue)
                    .values(
                        task_handler_class=handler,
                        task_data={},
                        scheduled_on=queued,
                        queued_on=queued,
                        last_status=last_status,
                        max_retries=max_retries,
                        task_runs_failed=failed,
                        cancel_requested_on=queued if cancelled else None,
                    )
                    .returning(TaskQueue.id)
                ).scalar_one()
            )
            for status, finished_days_ago in runs:
                finished = (
                    None
                    if finished_days_ago is None
                    else self.now - timedelta(days=finished_days_ago)
                )
                connection.execute(
                    insert(TaskRun).values(
                        task_queue_id=task_id,
                        status=status,
                        started_on=None if status is RunStatus.SCHEDULED else queued,
                        finished_on=finished,
                        task_runner_id=runner_id,
                    )
                )
        return task_id


def seed_every_state(database: Database, now: datetime) -> Seeded:
    """One task in each state pruning must judge, and runners around them."""
    seeder = Seeder(database, now)
    seeded = Seeded()
    old, recent = 40.0, 10.0
    ok, error, timeout = RunStatus.SUCCESS, RunStatus.ERROR, RunStatus.TIMEOUT

    # Runners: one only pruned runs refer to, one a kept run refers to, one running, one recent.
    runner_of_pruned = seeder.runner(old)
    runner_of_kept = seeder.runner(old)
    seeded.pruned_runners |= {runner_of_pruned, seeder.runner(old, RunnerRole.CELERY_WORKER)}
    seeded.kept_runners |= {runner_of_kept, seeder.runner(None), seeder.runner(recent)}

    seeded.pruned_tasks |= {
        seeder.task(ok, [(error, 45), (ok, old)], runner_id=runner_of_pruned),
        seeder.task(error, [(error, 50), (error, old)], failed=2, max_retries=2),
        seeder.task(timeout, [(timeout, old)], failed=1, max_retries=1),
        seeder.task(ok, [(ok, old)], handler="celery:app.tasks.add"),
        seeder.task(error, [(error, old)], failed=3, max_retries=3, handler="celery:app.t.x"),
        seeder.task(error, [(error, old)], failed=1, cancelled=True),  # cancelled: no retry
        seeder.task(None, [], cancelled=True),  # cancelled before it had a run
    }
    seeded.kept_tasks |= {
        seeder.task(ok, [(ok, recent)], runner_id=runner_of_kept),  # finished recently
        seeder.task(ok, [(ok, old), (ok, recent)]),  # resumed: its last run is recent
        seeder.task(error, [(error, old)], failed=1),  # retries left: due again
        seeder.task(RunStatus.RUNNING, [(error, old), (RunStatus.RUNNING, None)], failed=1),
        seeder.task(RunStatus.SCHEDULED, [(error, old), (RunStatus.SCHEDULED, None)], failed=1),
        seeder.task(None, []),  # never run
        seeder.task(None, [], handler="celery:app.tasks.add"),  # native, never started
        seeder.task(error, [(error, old)], failed=1, max_retries=4, handler="celery:a.t.r"),
        seeder.task(ok, [(ok, old), (RunStatus.RUNNING, None)], handler="celery:a.t.again"),
        seeder.task(ok, [(ok, old)], queued_days_ago=recent),  # clock skew: queued recently
        seeder.task(None, [], cancelled=True, queued_days_ago=recent),  # cancelled recently
    }
    with database.transaction() as connection:
        for days_ago in (old, recent):
            slot = int((now - timedelta(days=days_ago)).timestamp())
            connection.execute(
                insert(BeatTick).values(
                    event="process", slot=slot, ticked_on=now - timedelta(days=days_ago)
                )
            )
    return seeded


def ids(database: Database, model: type[TaskQueue] | type[TaskRunner]) -> set[int]:
    """Every id of a table."""
    with database.transaction(read_only=True) as connection:
        return set(connection.execute(select(model.id)).scalars())


def run_rows(database: Database) -> list[tuple[int, int]]:
    """(run id, task id) of every run."""
    with database.transaction(read_only=True) as connection:
        return [
            (int(a), int(b))
            for a, b in connection.execute(select(TaskRun.id, TaskRun.task_queue_id))
        ]


def pruned_totals(database: Database) -> dict[str, int]:
    """``TaskqPrunedRows``: kind → rows pruned, for the kinds of which any were."""
    with Session(database.engine) as session:
        rows = session.scalars(select(PrunedRows).where(PrunedRows.rows_pruned > 0))
        return {row.kind: row.rows_pruned for row in rows}


def test_prune_deletes_exactly_the_finished_old_rows_and_nothing_unfinished(
    database: Database, clock: FakeClock
) -> None:
    # Given a task in every state, runners and beat ticks, old and recent
    seeded = seed_every_state(database, clock.now)
    runs_before = run_rows(database)
    kept_runs = [run for run in runs_before if run[1] in seeded.kept_tasks]

    # When everything finished more than 30 days ago is pruned
    report = Pruner(database, clock).prune(OLDER_THAN)

    # Then exactly the finished, old tasks went, with their runs; every other row is intact
    assert ids(database, TaskQueue) == seeded.kept_tasks
    assert run_rows(database) == kept_runs
    assert ids(database, TaskRunner) == seeded.kept_runners
    assert report == PruneReport(
        tasks=len(seeded.pruned_tasks),
        runs=len(runs_before) - len(kept_runs),
        runners=len(seeded.pruned_runners),
        beat_ticks=1,
    )
    # And the running totals say so
    assert pruned_totals(database) == {kind: rows for kind, rows in report.counts().items() if rows}
    # And a second pass finds nothing more
    assert Pruner(database, clock).prune(OLDER_THAN).total == 0


def test_prune_by_status_leaves_other_statuses_and_the_other_kinds(
    database: Database, clock: FakeClock
) -> None:
    # Given every state
    seed_every_state(database, clock.now)
    runners_before = ids(database, TaskRunner)
    tasks_before = ids(database, TaskQueue)

    # When only successes older than 30 days are pruned
    policy = RetentionPolicy.everything_older_than(30 * DAY, (RunStatus.SUCCESS,))
    report = Pruner(database, clock).prune(policy)

    # Then only old successes went (a handler task and a native one); runners and ticks stay
    assert report.tasks == 2
    assert report.runners == 0
    assert report.beat_ticks == 0
    with database.transaction(read_only=True) as connection:
        gone = tasks_before - set(connection.execute(select(TaskQueue.id)).scalars())
    assert len(gone) == 2
    assert ids(database, TaskRunner) == runners_before


def test_dry_run_counts_what_prune_would_delete_and_writes_nothing(
    database: Database, clock: FakeClock
) -> None:
    # Given every state
    seeded = seed_every_state(database, clock.now)
    before = (ids(database, TaskQueue), run_rows(database), ids(database, TaskRunner))

    # When a dry run counts
    counted = Pruner(database, clock).prune(OLDER_THAN, dry_run=True)

    # Then nothing changed, not even the totals
    assert (ids(database, TaskQueue), run_rows(database), ids(database, TaskRunner)) == before
    assert pruned_totals(database) == {}
    # And the counts are what a real prune then deletes, but for the runners that only the
    # pruned tasks' runs refer to: a dry run counts the runners prunable before tasks go
    assert counted.tasks == len(seeded.pruned_tasks)
    pruned = Pruner(database, clock).prune(OLDER_THAN)
    assert counted == replace(pruned, runners=pruned.runners - 1)


@pytest.fixture
def statements(database: Database) -> Iterator[list[tuple[str, int]]]:
    """(SQL, rowcount) of every statement the test's engine runs."""
    seen: list[tuple[str, int]] = []

    def after(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        seen.append((statement, cursor.rowcount))

    event.listen(database.engine, "after_cursor_execute", after)
    yield seen
    event.remove(database.engine, "after_cursor_execute", after)


def test_every_pruning_statement_deletes_at_most_the_batch_size(
    database: Database, clock: FakeClock, statements: list[tuple[str, int]]
) -> None:
    # Given 12 finished old tasks of 2 runs, one of 7 runs, and 8 finished old runners
    seeder = Seeder(database, clock.now)
    many = [seeder.task(RunStatus.SUCCESS, [(RunStatus.SUCCESS, 40)] * 2) for _ in range(12)]
    long_history = seeder.task(RunStatus.SUCCESS, [(RunStatus.SUCCESS, 40)] * 7)
    for _ in range(8):
        seeder.runner(40)
    statements.clear()

    # When they are pruned 3 rows a statement
    report = Pruner(database, clock, batch_size=3).prune(OLDER_THAN)

    # Then all went
    assert ids(database, TaskQueue) == set()
    assert run_rows(database) == []
    assert report == PruneReport(tasks=13, runs=31, runners=8)
    # And no statement deleted more than 3 rows
    deletes = [(sql, rows) for sql, rows in statements if sql.lstrip().upper().startswith("DELETE")]
    assert deletes
    assert max(rows for _, rows in deletes) <= 3
    # And every run was deleted by a statement of its own, none by the cascade from its task
    runs_deleted = sum(rows for sql, rows in deletes if '"TaskRuns"' in sql.split("WHERE")[0])
    assert runs_deleted == 31
    assert long_history not in ids(database, TaskQueue)
    assert not ids(database, TaskQueue) & set(many)


def test_on_process_prunes_one_bounded_batch_a_tick_and_goes_on_where_it_left_off(
    database: Database, settings: Settings, clock: FakeClock, statements: list[tuple[str, int]]
) -> None:
    # Given 10 finished old tasks and a retention policy pruning 4 rows a statement
    seeder = Seeder(database, clock.now)
    for _ in range(10):
        seeder.task(RunStatus.SUCCESS, [(RunStatus.SUCCESS, 40)])
    kept = seeder.task(RunStatus.ERROR, [(RunStatus.ERROR, 40)], failed=1)  # may still run
    service = TaskQueueService(
        database, replace(settings, retention="success=30d", retention_batch_size=4), clock=clock
    )

    # When OnProcess ticks
    pruned = []
    for _ in range(5):
        statements.clear()
        pruned.append(service.process_queue().pruned.tasks)
        deletes = [rows for sql, rows in statements if sql.lstrip().upper().startswith("DELETE")]
        assert max(deletes, default=0) <= 4

    # Then each tick pruned at most one batch, and together they pruned all 10 (a pass ends
    # with a tick that finds the table's end and starts the next pass)
    assert max(pruned) <= 4
    assert sum(pruned) == 10
    assert ids(database, TaskQueue) == {kept}
    assert pruned_totals(database) == {"tasks": 10, "runs": 10}
    # And /metrics counts them
    exposition = generate_latest(metrics_registry(database)).decode()
    assert 'taskq_pruned_rows_total{kind="tasks"} 10.0' in exposition
    assert 'taskq_pruned_rows_total{kind="runners"} 0.0' in exposition


def test_without_a_policy_on_process_prunes_nothing(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    # Given finished old rows and the default setting (keep everything)
    seed_every_state(database, clock.now)
    before = ids(database, TaskQueue)

    # When OnProcess ticks
    report = service.process_queue()

    # Then nothing was pruned
    assert report.pruned.total == 0
    assert ids(database, TaskQueue) == before


def test_old_schedule_slots_are_pruned_but_each_schedule_keeps_its_newest_and_undecided(
    database: Database, clock: FakeClock
) -> None:
    # Given a schedule whose slots fired 40 days ago, one 40-day-old slot at its NextRunOn
    # (a beat may still be deciding it), and a second schedule with one old slot, its newest
    now = clock.now
    old = now - 40 * DAY
    with database.transaction() as connection:
        schedule_ids = [
            int(
                connection.execute(
                    insert(TaskSchedule)
                    .values(
                        name=name,
                        task_handler_class="tests.handlers.Succeed",
                        interval_seconds=60,
                        timezone="UTC",
                        misfire_policy="skip",
                        source="api",
                        created_on=old,
                        updated_on=old,
                        next_run_on=next_run_on,
                    )
                    .returning(TaskSchedule.id)
                ).scalar_one()
            )
            for name, next_run_on in (("every-minute", old + timedelta(minutes=3)), ("lone", now))
        ]
        for minutes in range(4):
            slot_on = old + timedelta(minutes=minutes)
            connection.execute(
                insert(TaskScheduleSlot).values(
                    schedule_id=schedule_ids[0], slot_on=slot_on, fired_on=slot_on
                )
            )
        connection.execute(
            insert(TaskScheduleSlot).values(schedule_id=schedule_ids[1], slot_on=old, fired_on=old)
        )

    # When everything older than 30 days is pruned, one slot row a statement
    report = Pruner(database, clock, batch_size=1).prune(OLDER_THAN)

    # Then the first schedule's three decided slots went; its slot at NextRunOn and the second
    # schedule's only slot stay
    assert report.schedule_slots == 3
    with database.transaction(read_only=True) as connection:
        kept = connection.execute(select(TaskScheduleSlot.schedule_id, TaskScheduleSlot.slot_on))
        assert sorted(kept) == [
            (schedule_ids[0], old + timedelta(minutes=3)),
            (schedule_ids[1], old),
        ]
    assert pruned_totals(database) == {"schedule_slots": 3}


def test_prune_pauses_after_each_batch_that_deleted_rows(
    database: Database, clock: FakeClock
) -> None:
    # Given 5 finished old tasks of one run each
    seeder = Seeder(database, clock.now)
    for _ in range(5):
        seeder.task(RunStatus.SUCCESS, [(RunStatus.SUCCESS, 40)])
    slept: list[float] = []

    # When they are pruned 2 rows a statement with a pause of 0.5 s
    pruner = Pruner(database, clock, batch_size=2, pause=0.5, sleep=slept.append)
    report = pruner.prune(RetentionPolicy.everything_older_than(30 * DAY, (RunStatus.SUCCESS,)))

    # Then it paused after each of the 3 batches that deleted tasks (2 + 2 + 1), and not after
    # the last look that found the table's end
    assert report.tasks == 5
    assert slept == [0.5, 0.5, 0.5]


def test_prune_leaves_the_database_to_the_runners_for_its_busy_share(
    database: Database, clock: FakeClock
) -> None:
    # Given 5 finished old tasks, and batches that each take 2 s by the pruner's timer
    seeder = Seeder(database, clock.now)
    for _ in range(5):
        seeder.task(RunStatus.SUCCESS, [(RunStatus.SUCCESS, 40)])
    ticks = iter(range(0, 1000, 2))
    slept: list[float] = []

    # When they are pruned 2 rows a statement, deleting a quarter of the time
    pruner = Pruner(
        database,
        clock,
        batch_size=2,
        busy_share=0.25,
        sleep=slept.append,
        timer=lambda: float(next(ticks)),
    )
    report = pruner.prune(RetentionPolicy.everything_older_than(30 * DAY, (RunStatus.SUCCESS,)))

    # Then after each batch that deleted tasks it waited three times as long as the batch took
    assert report.tasks == 5
    assert slept == [6.0, 6.0, 6.0]
    # And the longer of --pause and the busy share's wait wins
    waited: list[float] = []
    Pruner(database, clock, pause=9.0, busy_share=0.5, sleep=waited.append)._pause_between_batches(
        2
    )
    Pruner(database, clock, pause=1.0, busy_share=0.5, sleep=waited.append)._pause_between_batches(
        2
    )
    assert waited == [9.0, 2.0]
    # And a busy share out of range is refused
    for share in (0.0, 0.01, 1.5):
        with pytest.raises(ValueError, match=r"busy_share must be from 0\.05 to 1"):
            Pruner(database, clock, busy_share=share)
