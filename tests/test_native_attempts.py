"""The native audit's statements, in any order several processes may write them (both databases).

Each test writes what a publisher, a pool process and the worker's main process would, in an
order Celery allows, and reads the rows back.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from celery_taskq.celery.audit import NativeTaskAuditor, NotedError, TaskMessage
from celery_taskq.celery.audit_writer import AuditWriter
from celery_taskq.core.models import (
    TASK_EXHAUSTED_SQL,
    RunnerRole,
    RunnerStatus,
    RunStatus,
    TaskQueue,
    TaskRun,
)
from celery_taskq.core.native_codes import NativeCode
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.statements import native, native_attempts
from celery_taskq.core.statements.native_attempts import AttemptEnd
from celery_taskq.core.storage.database import Database
from tests.helpers import runners

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def message(
    celery_id: str = "c-1", max_retries: int | None = 3, **relations: str
) -> native.NativeTask:
    return native.NativeTask(
        celery_task_id=celery_id,
        task_name="app.work",
        task_data={"args": [1], "kwargs": {}},
        scheduled_on=T0,
        queued_on=T0,
        max_retries=max_retries,
        **relations,
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def start(database: Database, task: native.NativeTask, attempt: int, seconds: float) -> int:
    with database.transaction() as connection:
        return native_attempts.start_attempt(
            connection, task, attempt=attempt, eager=False, runner_id=None, started_on=at(seconds)
        )


def end(database: Database, run_id: int, outcome: AttemptEnd, seconds: float) -> bool:
    with database.transaction() as connection:
        return native_attempts.end_attempt(connection, run_id, outcome, at(seconds))


def rows(
    database: Database, celery_id: str = "c-1"
) -> tuple[TaskQueue, list[tuple[str, str | None, int | None]]]:
    with Session(database.engine, expire_on_commit=False) as session:
        task = session.scalars(select(TaskQueue).where(TaskQueue.celery_task_id == celery_id)).one()
        runs = session.execute(
            select(TaskRun.status, TaskRun.error_code, TaskRun.attempt)
            .where(TaskRun.task_queue_id == task.id)
            .order_by(TaskRun.id)
        ).all()
    return task, [(status.value, code, attempt) for status, code, attempt in runs]


def exhausted(database: Database, task_queue_id: int) -> bool:
    with database.transaction(read_only=True) as connection:
        return (
            connection.execute(
                select(TaskQueue.id).where(TaskQueue.id == task_queue_id, text(TASK_EXHAUSTED_SQL))
            ).first()
            is not None
        )


RETRIED = AttemptEnd(RunStatus.ERROR, "ValueError", "boom", final=False)
FAILED = AttemptEnd(RunStatus.ERROR, "ValueError", "boom")
SUCCEEDED = AttemptEnd(RunStatus.SUCCESS, results=5)


def test_publish_and_first_start_meet_on_the_task_id(database: Database) -> None:
    # Given a task whose worker starts it before its publisher's row is written
    run_id = start(database, message(parent_id="p", root_id="r", group_id="g", chord_id="c"), 0, 1)
    with database.transaction() as connection:
        native.record_published(connection, message())
    end(database, run_id, SUCCEEDED, 2)

    # Then it is one row, with what the worker knew, and one run
    task, runs = rows(database)
    assert runs == [("success", None, 0)]
    assert (
        task.celery_parent_id,
        task.celery_root_id,
        task.celery_group_id,
        task.celery_chord_id,
    ) == (
        "p",
        "r",
        "g",
        "c",
    )
    assert (task.last_status, task.max_retries, task.task_runs_failed) == (RunStatus.SUCCESS, 4, 0)


def test_a_retry_that_starts_before_its_predecessor_is_written_keeps_both(
    database: Database,
) -> None:
    # Given attempt 1 written before attempt 0 (another process wrote it first)
    second = start(database, message(), 1, 2)
    first = start(database, message(), 0, 1)
    assert rows(database)[1] == [("running", None, 1), ("timeout", "superseded", 0)]

    # When both ends arrive
    assert end(database, first, RETRIED, 3)
    assert end(database, second, SUCCEEDED, 4)

    # Then each attempt has its own outcome and the task ended with the newest
    task, runs = rows(database)
    assert runs == [("success", None, 1), ("error", "ValueError", 0)]
    assert (task.last_status, task.task_runs_failed) == (RunStatus.SUCCESS, 0)


def test_a_new_attempt_closes_an_open_one_and_its_late_end_still_counts(database: Database) -> None:
    # Given attempt 0 still open when attempt 1 starts, and the same attempt delivered again
    first = start(database, message(), 0, 1)
    second = start(database, message(), 1, 2)
    assert rows(database)[1] == [("timeout", "superseded", 0), ("running", None, 1)]
    again = start(database, message(), 1, 3)
    assert rows(database)[1][1:] == [("timeout", "worker_lost", 1), ("running", None, 1)]

    # When the first attempt's own end arrives late, and the last attempt fails for good
    assert end(database, first, RETRIED, 4)
    assert end(database, again, FAILED, 5)

    # Then the late end replaces the guess, and the task is a dead letter
    task, runs = rows(database)
    assert runs == [
        ("error", "ValueError", 0),
        ("timeout", "worker_lost", 1),
        ("error", "ValueError", 1),
    ]
    assert (task.last_status, task.task_runs_failed, task.max_retries) == (RunStatus.ERROR, 3, 3)
    assert exhausted(database, task.id)
    assert second != again


def test_max_retries_is_every_attempt_allowed_and_a_final_failure_is_a_dead_letter(
    database: Database,
) -> None:
    # Given a task Celery retries twice (three attempts), failing for good on its first
    run_id = start(database, message(max_retries=2), 0, 1)
    assert rows(database)[0].max_retries == 3
    end(database, run_id, FAILED, 2)

    # Then it had no retry left: a dead letter with one failure out of one
    task, _ = rows(database)
    assert (task.task_runs_failed, task.max_retries) == (1, 1)
    assert exhausted(database, task.id)


def test_unlimited_retries_always_leave_one_more_attempt(database: Database) -> None:
    # Given a task retried without limit
    for attempt in range(3):
        run_id = start(database, message(max_retries=None), attempt, attempt * 2)
        end(database, run_id, RETRIED, attempt * 2 + 1)
        task, _ = rows(database)
        # Then after each retried failure one more attempt is allowed: never a dead letter
        assert (task.task_runs_failed, task.max_retries) == (attempt + 1, attempt + 2)
        assert not exhausted(database, task.id)


def test_the_main_process_closes_an_attempt_once_or_records_one_never_started(
    database: Database,
) -> None:
    lost = AttemptEnd(RunStatus.TIMEOUT, NativeCode.WORKER_LOST.value, "lost")
    revoked = AttemptEnd(RunStatus.ERROR, NativeCode.REVOKED.value)
    # Given an attempt whose process was lost, seen twice
    start(database, message("lost"), 0, 1)
    for _ in range(2):
        with database.transaction() as connection:
            native_attempts.record_seen_end(
                connection, message("lost"), attempt=0, end=lost, now=at(2)
            )
    # And a task revoked before it started
    with database.transaction() as connection:
        native_attempts.record_seen_end(
            connection, message("revoked"), attempt=0, end=revoked, now=at(3)
        )

    # Then the lost attempt is closed once and final; the revoked task has one unstarted run
    task, runs = rows(database, "lost")
    assert runs == [("timeout", "worker_lost", 0)]
    assert exhausted(database, task.id)
    task, runs = rows(database, "revoked")
    assert runs == [("error", "revoked", 0)]
    with database.transaction(read_only=True) as connection:
        started = connection.execute(
            select(TaskRun.started_on).where(TaskRun.task_queue_id == task.id)
        ).scalar()
    assert started is None
    assert exhausted(database, task.id)


def test_a_terminated_attempt_stays_terminated_whichever_way_its_lost_process_is_reported(
    database: Database,
) -> None:
    lost = AttemptEnd(RunStatus.TIMEOUT, NativeCode.WORKER_LOST.value, "lost")
    terminated = AttemptEnd(RunStatus.ERROR, NativeCode.TERMINATED.value)
    # Given two attempts terminated by revoke(terminate=True): the pool reports the first's
    # process as lost after the termination was recorded, the second's before it
    for celery_id, ends in (("after", (terminated, lost)), ("before", (lost, terminated))):
        start(database, message(celery_id), 0, 1)
        for seconds, seen in enumerate(ends, start=2):
            with database.transaction() as connection:
                native_attempts.record_seen_end(
                    connection, message(celery_id), attempt=0, end=seen, now=at(seconds)
                )

    # Then each has its one attempt, terminated
    for celery_id in ("after", "before"):
        task, runs = rows(database, celery_id)
        assert runs == [("error", "terminated", 0)], celery_id
        assert task.last_status is RunStatus.ERROR


def test_ended_worker_processes_have_their_rows_and_attempts_closed(database: Database) -> None:
    # Given three processes of one worker: this one, a live one and a dead one running a task
    ids = {}
    with database.transaction() as connection:
        for name, pid in (("own", 100), ("live", 200), ("dead", 300)):
            ids[name] = native.register_celery_worker_process(
                connection,
                process_id=pid,
                hostname="host-a",
                process_create_time=1.0,
                worker_hostname="w@host-a",
                now=T0,
            )
    with database.transaction() as connection:
        native_attempts.start_attempt(
            connection, message(), attempt=0, eager=False, runner_id=ids["dead"], started_on=at(1)
        )

    # When the worker closes the rows of its processes that ended
    with database.transaction() as connection:
        closed = native.close_worker_processes(
            connection,
            hostname="host-a",
            worker_hostname="w@host-a",
            alive=lambda pid, _: pid == 200,
            now=at(2),
            this_process=100,
        )

    # Then its own ends success, the dead one timeout with its attempt lost; the live one runs
    assert closed == sorted([ids["own"], ids["dead"]])
    status = {row.id: row.status for row in runners(database)}
    assert (status[ids["own"]], status[ids["live"]], status[ids["dead"]]) == (
        RunnerStatus.SUCCESS,
        RunnerStatus.RUNNING,
        RunnerStatus.TIMEOUT,
    )
    assert {row.role for row in runners(database)} == {RunnerRole.CELERY_WORKER}
    assert rows(database)[1] == [("timeout", "worker_lost", 0)]


def test_the_auditor_tells_a_replacement_and_a_retry_from_what_the_attempt_sends(
    service: TaskQueueService,
) -> None:
    # Given an auditor whose writes are made at once, and two attempts in this thread
    writer = AuditWriter(lambda: service.database)
    writer.close()
    auditor = NativeTaskAuditor(
        get_service=lambda: service,
        should_audit=lambda name: name != "app.unaudited",
        writer=writer,
        capture_output=False,
    )
    replaced = TaskMessage(task_id="r-1", task_name="app.work")
    retried = TaskMessage(task_id="t-1", task_name="app.work", max_retries=2)

    # When one sends its replacement (one nesting deeper, of a task not audited) and ends
    # ignored, and the other sends itself again with one more retry and ends retried
    auditor.on_start(replaced, worker_hostname="w@h", ignore_result=False)
    auditor.on_publish(TaskMessage("r-1", "app.unaudited", replaced_nesting=1))
    auditor.on_end(task_id="r-1", state="IGNORED", retval=None)
    auditor.on_start(retried, worker_hostname="w@h", ignore_result=False)
    auditor.on_publish(TaskMessage("t-1", "app.work", retries=1))
    auditor.on_outcome(task_id="t-1", error=NotedError("KeyError", "'k'", "Traceback ...\n"))
    auditor.on_end(task_id="t-1", state="RETRY", retval=None)
    auditor.on_process_shutdown()

    # Then the first is replaced, the second retried (not final), each one row and one run
    assert auditor.failures == 0
    assert rows(service.database, "r-1")[1] == [("success", "replaced", 0)]
    task, runs = rows(service.database, "t-1")
    assert runs == [("error", "KeyError", 0)]
    assert (task.max_retries, task.task_runs_failed) == (3, 1)
    assert not exhausted(service.database, task.id)
    assert [row.status for row in runners(service.database)] == [RunnerStatus.SUCCESS]
