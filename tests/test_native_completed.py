"""An attempt written once it is over leaves exactly the rows its start and end would (both
databases).

Each scenario prepares a task's rows, then records one attempt: for task ``a-…`` as a start and
an end (two writes), for task ``b-…`` as one completed attempt; the rows must be the same. All
the ``b-`` attempts go in one call, so that on PostgreSQL they run as one pipelined
``executemany`` with the fallback for a task whose newer attempt is open among them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.native_codes import NativeCode
from celery_taskq.core.statements import native, native_attempts, native_pg, native_published
from celery_taskq.core.statements.native_attempts import AttemptEnd
from celery_taskq.core.statements.native_completed import CompletedAttempt, record_completed
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.encoding import JsonText

T0 = datetime(2026, 1, 1, tzinfo=UTC)

SUCCESS = AttemptEnd(
    RunStatus.SUCCESS, standard_output="out\n", error_output="", results={"value": [1, "x"]}
)
FAILED_FINAL = AttemptEnd(
    RunStatus.ERROR, "ValueError", "bad input", error_output="Traceback …\n", final=True
)
FAILED_RETRYING = AttemptEnd(RunStatus.ERROR, "ValueError", "try again", final=False)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def task_of(celery_id: str, max_retries: int | None = 3) -> native.NativeTask:
    return native.NativeTask(
        celery_task_id=celery_id,
        task_name="app.work",
        task_data={"args": [1, "ü"], "kwargs": {"k": None}},
        scheduled_on=T0,
        queued_on=T0,
        queued_by="beat:nightly",
        max_retries=max_retries,
        parent_id="p-1",
        root_id="r-1",
    )


Prepare = Callable[[Any, native.NativeTask], None]


def nothing(connection: Any, task: native.NativeTask) -> None:
    """No row yet: the worker's write creates the task."""


def published(connection: Any, task: native.NativeTask) -> None:
    native.record_published(connection, task)


def started(attempt: int, seconds: float) -> Prepare:
    def prepare(connection: Any, task: native.NativeTask) -> None:
        native.record_published(connection, task)
        native_attempts.start_attempt(
            connection, task, attempt=attempt, eager=False, runner_id=None, started_on=at(seconds)
        )

    return prepare


def failed_before(connection: Any, task: native.NativeTask) -> None:
    native.record_published(connection, task)
    run_id = native_attempts.start_attempt(
        connection, task, attempt=0, eager=False, runner_id=None, started_on=at(1)
    )
    native_attempts.end_attempt(connection, run_id, FAILED_RETRYING, at(2))


def finished_newer(end: AttemptEnd) -> Prepare:
    """A newer attempt (1, at 50-51 s) already started and ended: written first."""

    def prepare(connection: Any, task: native.NativeTask) -> None:
        native.record_published(connection, task)
        run_id = native_attempts.start_attempt(
            connection, task, attempt=1, eager=False, runner_id=None, started_on=at(50)
        )
        native_attempts.end_attempt(connection, run_id, end, at(51))

    return prepare


@dataclass(frozen=True)
class Scenario:
    name: str
    prepare: Prepare
    attempt: int
    end: AttemptEnd
    max_retries: int | None = 3
    merged: bool = True
    """Written by the one statement on PostgreSQL (else: a newer attempt is open)."""


SCENARIOS = [
    Scenario("fresh-success", nothing, 0, SUCCESS),
    Scenario("published-success", published, 0, SUCCESS),
    Scenario("published-final-failure", published, 0, FAILED_FINAL),
    Scenario("published-retrying-failure", published, 0, FAILED_RETRYING),
    Scenario("fresh-final-failure", nothing, 0, FAILED_FINAL),
    Scenario("fresh-retrying-failure", nothing, 0, FAILED_RETRYING),
    Scenario("unlimited-retrying", published, 0, FAILED_RETRYING, max_retries=None),
    Scenario("unlimited-success", published, 0, SUCCESS, max_retries=None),
    Scenario("older-open-attempt", started(0, 1), 1, FAILED_FINAL),
    Scenario("redelivered-same-attempt", started(0, 1), 0, SUCCESS),
    Scenario("after-a-failure", failed_before, 1, SUCCESS),
    Scenario("after-a-failure-fails", failed_before, 1, FAILED_FINAL, max_retries=1),
    Scenario("newer-attempt-open", started(1, 50), 0, SUCCESS, merged=False),
    # The newer attempt's writer committed first (pool processes commit in their own order)
    Scenario("newer-attempt-failed", finished_newer(FAILED_FINAL), 0, FAILED_RETRYING, 1),
    Scenario("newer-attempt-retrying", finished_newer(FAILED_RETRYING), 0, FAILED_RETRYING, 1),
    Scenario("newer-attempt-succeeded", finished_newer(SUCCESS), 0, FAILED_RETRYING, 1),
    Scenario("older-succeeded-late", finished_newer(FAILED_FINAL), 0, SUCCESS, 1),
]


def completed(scenario: Scenario, task: native.NativeTask) -> CompletedAttempt:
    return CompletedAttempt(
        task=task,
        attempt=scenario.attempt,
        eager=False,
        runner_id=None,
        started_on=at(10),
        end=scenario.end,
        ended_on=at(11),
    )


def state(database: Database, celery_id: str) -> tuple[Any, ...]:
    """The task's row and its runs, without ids."""
    with database.transaction(read_only=True) as connection:
        task = connection.execute(
            select(
                TaskQueue.task_handler_class,
                TaskQueue.task_data,
                TaskQueue.scheduled_on,
                TaskQueue.queued_on,
                TaskQueue.queued_by_id,
                TaskQueue.max_retries,
                TaskQueue.task_runs_failed,
                TaskQueue.last_status,
                TaskQueue.celery_parent_id,
                TaskQueue.celery_root_id,
                TaskQueue.celery_group_id,
            ).where(TaskQueue.celery_task_id == celery_id)
        ).one()
        runs = connection.execute(
            select(
                TaskRun.status,
                TaskRun.started_on,
                TaskRun.finished_on,
                TaskRun.attempt,
                TaskRun.eager,
                TaskRun.error_code,
                TaskRun.error_message,
                TaskRun.standard_output,
                TaskRun.error_output,
                TaskRun.results,
                TaskRun.percents_completed,
                TaskRun.task_runner_id,
                TaskRun.celery_task_id.is_(None),
            )
            .join(TaskQueue, TaskQueue.id == TaskRun.task_queue_id)
            .where(TaskQueue.celery_task_id == celery_id)
            .order_by(TaskRun.id)
        ).all()
    return tuple(task), [tuple(run) for run in runs]


def test_a_completed_attempt_leaves_the_rows_of_its_start_and_end(database: Database) -> None:
    with database.transaction() as connection:
        for scenario in SCENARIOS:
            for prefix in ("a-", "b-"):
                task = task_of(prefix + scenario.name, scenario.max_retries)
                scenario.prepare(connection, task)
    for scenario in SCENARIOS:
        task = task_of("a-" + scenario.name, scenario.max_retries)
        with database.transaction() as connection:
            run_id = native_attempts.start_attempt(
                connection,
                task,
                attempt=scenario.attempt,
                eager=False,
                runner_id=None,
                started_on=at(10),
            )
            native_attempts.end_attempt(connection, run_id, scenario.end, at(11))
    with database.transaction() as connection:
        run_ids = record_completed(
            connection,
            [
                completed(scenario, task_of("b-" + scenario.name, scenario.max_retries))
                for scenario in SCENARIOS
            ],
        )
    assert len(set(run_ids)) == len(SCENARIOS)
    for scenario in SCENARIOS:
        written = state(database, "b-" + scenario.name)
        assert written == state(database, "a-" + scenario.name), scenario.name
        assert written[1], scenario.name
    task, runs = state(database, "b-published-final-failure")
    assert (task[5], task[6], task[7]) == (1, 1, RunStatus.ERROR)  # a dead letter
    _, runs = state(database, "b-older-open-attempt")
    assert [(run[0], run[5]) for run in runs] == [
        (RunStatus.TIMEOUT, NativeCode.SUPERSEDED.value),
        (RunStatus.ERROR, "ValueError"),
    ]
    _, runs = state(database, "b-newer-attempt-open")
    assert [run[0] for run in runs] == [RunStatus.RUNNING, RunStatus.SUCCESS]
    # Written after a newer attempt finished, an attempt leaves the task's roll-up the newer
    # one's: a dead letter stays one, a retry left stays left, a success stays a success
    for name, roll_up in {
        "newer-attempt-failed": (2, 2, RunStatus.ERROR),
        "newer-attempt-retrying": (3, 2, RunStatus.ERROR),
        "newer-attempt-succeeded": (2, 0, RunStatus.SUCCESS),
        "older-succeeded-late": (1, 1, RunStatus.ERROR),
    }.items():
        task, runs = state(database, "b-" + name)
        assert (task[5], task[6], task[7]) == roll_up, name
        assert [run[3] for run in runs] == [1, 0], name


@pytest.mark.postgresql
def test_on_postgresql_one_statement_writes_each_attempt_unless_a_newer_one_is_open(
    postgresql_schema_url: str,
) -> None:
    database = Database(postgresql_schema_url)
    with database.transaction() as connection:
        for scenario in SCENARIOS:
            scenario.prepare(connection, task_of(scenario.name, scenario.max_retries))
        ids = native_pg.complete_attempts(
            connection,
            [
                native_pg.complete_params(
                    task_of(scenario.name, scenario.max_retries),
                    attempt=scenario.attempt,
                    eager=False,
                    runner_id=None,
                    started_on=at(10),
                    values=native_attempts.end_values(scenario.end, at(11)),
                    final=scenario.end.final,
                    lost_message=native_attempts.REDELIVERED_MESSAGE,
                    superseded_message=native_attempts.SUPERSEDED_MESSAGE,
                )
                for scenario in SCENARIOS
            ],
        )
    assert [run_id is not None for run_id in ids] == [s.merged for s in SCENARIOS]
    _, runs = state(database, "newer-attempt-open")
    assert [run[0] for run in runs] == [RunStatus.RUNNING]  # nothing written for the older one
    database.close()


@pytest.mark.parametrize(
    ("newer_end", "older_end", "expected"),
    [
        # The retried task failed for good: still a dead letter, both failures counted
        (FAILED_FINAL, FAILED_RETRYING, (2, 2, RunStatus.ERROR)),
        # A retry of the newer attempt is coming: the task keeps the one retry it had left
        (FAILED_RETRYING, FAILED_RETRYING, (3, 2, RunStatus.ERROR)),
        # The newer attempt succeeded: the task stays a success
        (SUCCESS, FAILED_RETRYING, (2, 0, RunStatus.SUCCESS)),
    ],
    ids=["after-a-final-failure", "after-a-retrying-failure", "after-a-success"],
)
def test_on_postgresql_an_attempt_written_after_a_newer_finished_one_leaves_it_newest(
    postgresql_schema_url: str,
    newer_end: AttemptEnd,
    older_end: AttemptEnd,
    expected: tuple[int, int, RunStatus],
) -> None:
    # Given a task (max_retries=1) whose attempt 1 is recorded as finished, as when the pool
    # process that ran it commits its audit before the one that ran attempt 0
    database = Database(postgresql_schema_url)
    task = task_of("late", max_retries=1)
    with database.transaction() as connection:
        finished_newer(newer_end)(connection, task)
    # When attempt 0 (retried, at 10-11 s) is written with the one statement
    with database.transaction() as connection:
        (run_id,) = native_pg.complete_attempts(
            connection,
            [
                native_pg.complete_params(
                    task,
                    attempt=0,
                    eager=False,
                    runner_id=None,
                    started_on=at(10),
                    values=native_attempts.end_values(older_end, at(11)),
                    final=older_end.final,
                    lost_message=native_attempts.REDELIVERED_MESSAGE,
                    superseded_message=native_attempts.SUPERSEDED_MESSAGE,
                )
            ],
        )
    # Then both attempts are there, and the task's roll-up is still the newer attempt's
    row, runs = state(database, "late")
    assert run_id is not None
    assert [(run[3], run[0]) for run in runs] == [(1, newer_end.status), (0, older_end.status)]
    assert (row[5], row[6], row[7]) == expected
    database.close()


def test_arguments_serialized_once_are_stored_as_the_document_on_every_path(
    database: Database,
) -> None:
    # Given tasks whose TaskData is JSON text already (the audit serializes arguments once)
    document = {"args": [1, "ü", None, [2.5]], "kwargs": {"quote": 'a"b', "nested": {"k": []}}}
    text = JsonText(json.dumps(document))

    def task(celery_id: str) -> native.NativeTask:
        return replace(task_of(celery_id), task_data=text)

    # When each write path stores one
    with database.transaction() as connection:
        native.record_published(connection, task("published"))
        native_published.record_published(  # a batch of publishes, a duplicate among them
            connection, [task("many-0"), task("many-1"), task("many-0")]
        )
        native_attempts.start_attempt(
            connection, task("started"), attempt=0, eager=False, runner_id=None, started_on=at(1)
        )
        record_completed(connection, [completed(SCENARIOS[0], task("completed"))])
        native_attempts.record_unstarted(
            connection,
            task("unstarted"),
            attempt=0,
            end=AttemptEnd(RunStatus.ERROR, NativeCode.REVOKED.value, "revoked"),
            now=at(2),
        )

    # Then every row holds the document itself, not a JSON string of it
    with database.transaction(read_only=True) as connection:
        stored: dict[str, Any] = dict(
            connection.execute(select(TaskQueue.celery_task_id, TaskQueue.task_data)).all()
        )
    names = ["published", "many-0", "many-1", "started", "completed", "unstarted"]
    assert {name: stored[name] for name in names} == dict.fromkeys(names, document)


def test_a_batch_of_publishes_leaves_the_rows_single_publishes_would(database: Database) -> None:
    # Given publishes of every shape: relations or none, no retry limit, an ETA, empty data,
    # no queued-by, and a task whose worker start came first
    def shapes(prefix: str) -> list[native.NativeTask]:
        base = task_of(prefix + "plain")
        return [
            base,
            replace(base, celery_task_id=prefix + "bare", parent_id=None, root_id=None),
            replace(base, celery_task_id=prefix + "unlimited", max_retries=None),
            replace(base, celery_task_id=prefix + "eta", scheduled_on=at(3600)),
            replace(base, celery_task_id=prefix + "empty", task_data={}, queued_by=None),
            replace(base, celery_task_id=prefix + "chord", group_id="g-1", chord_id="c-9"),
            replace(base, celery_task_id=prefix + "started"),
        ]

    with database.transaction() as connection:
        for prefix in ("a-", "b-"):
            native_attempts.start_attempt(
                connection,
                task_of(prefix + "started", max_retries=7),
                attempt=0,
                eager=False,
                runner_id=None,
                started_on=at(1),
            )
    # When the a- tasks are published one statement each, and the b- tasks as one batch
    with database.transaction() as connection:
        for task in shapes("a-"):
            native.record_published(connection, task)
        native_published.record_published(connection, shapes("b-"))

    # Then both leave the same rows, and the worker's row is left as it was
    for task in shapes(""):
        assert state(database, "b-" + task.celery_task_id) == state(
            database, "a-" + task.celery_task_id
        ), task.celery_task_id
    task_row, _ = state(database, "b-started")
    assert (task_row[5], task_row[7]) == (8, RunStatus.RUNNING)
    empty, _ = state(database, "b-empty")
    assert (empty[1], empty[4]) == ({}, None)


@pytest.mark.parametrize(
    ("older_end", "roll_up"),
    [(FAILED_RETRYING, (2, 2, RunStatus.ERROR)), (SUCCESS, (1, 1, RunStatus.ERROR))],
    ids=["retried", "succeeded-after-all"],
)
def test_the_late_end_of_a_superseded_attempt_leaves_a_dead_letter_dead(
    database: Database, older_end: AttemptEnd, roll_up: tuple[int, int, RunStatus]
) -> None:
    # Given a task (max_retries=1) whose attempt 0 started, then its retry, attempt 1, started
    # (closing attempt 0 as superseded) and failed for good: a dead letter
    task = task_of("late-end", max_retries=1)
    with database.transaction() as connection:
        native.record_published(connection, task)
        older = native_attempts.start_attempt(
            connection, task, attempt=0, eager=False, runner_id=None, started_on=at(10)
        )
        newer = native_attempts.start_attempt(
            connection, task, attempt=1, eager=False, runner_id=None, started_on=at(20)
        )
        native_attempts.end_attempt(connection, newer, FAILED_FINAL, at(21))
    # When attempt 0's own end is written last, as when the pool process
    # that ran it commits its audit after the one that ran attempt 1
    with database.transaction() as connection:
        assert native_attempts.end_attempt(connection, older, older_end, at(11))
    # Then attempt 0 holds its real end, and the task is still a dead letter (counting attempt
    # 0 among its failures unless it succeeded after all)
    row, runs = state(database, "late-end")
    assert [(run[3], run[0], run[5]) for run in runs] == [
        (0, older_end.status, older_end.error_code),
        (1, RunStatus.ERROR, "ValueError"),
    ]
    assert (row[5], row[6], row[7]) == roll_up
