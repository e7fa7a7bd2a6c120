"""Pruning statements: deleting finished rows in bounded batches, and counting what went.

Every statement touches at most ``limit`` rows (callers pass at most
:data:`~celery_taskq.core.retention.MAX_BATCH_SIZE`), and each batch is its caller's own short
transaction. Tables are walked by ``Id`` windows: a batch looks at the next ``limit`` ids after a
resume point, so its cost does not grow with the table, and rows kept in one pass are looked at
again in the next.

A task is prunable when it is finished and every run of it finished before its status's cutoff:

- finished: ``LastStatus`` is ``success``; or it failed with no retry left
  (``TaskRunsFailed >= MaxRetries``); or it was cancelled (one cancelled before it had a run
  has no ``LastStatus``: it is pruned with the ``error`` tasks, aged from its cancellation). A
  task that may still run (never run, retries left, an open run) is never touched, and
  neither is any of its runs. Native ``celery:`` tasks follow the same rule: the audit keeps
  their ``MaxRetries`` so that a task Celery will retry has a retry left, and a never-started
  one has no ``LastStatus``.
- old: no run of it is open or finished at or after the cutoff, and it was queued before it.

On PostgreSQL the tasks of a batch are locked ``FOR UPDATE SKIP LOCKED`` first: a row another
transaction holds (a claim, a native attempt's write) is left for a later pass, and no run can be
added to a locked task before it is gone. Its runs are deleted before the task, at most ``limit``
a statement, so the ``ON DELETE CASCADE`` of ``TaskRuns`` never deletes an unbounded number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    delete,
    func,
    or_,
    select,
    tuple_,
)
from sqlalchemy.orm import QueryableAttribute, aliased

from celery_taskq.core.models import (
    OPEN_RUN_STATUSES,
    BeatTick,
    RunnerStatus,
    RunStatus,
    TaskQueue,
    TaskRun,
    TaskRunner,
)
from celery_taskq.core.retention_models import PrunedRows
from celery_taskq.core.schedule_models import TaskSchedule, TaskScheduleSlot
from celery_taskq.core.storage.dialects import upsert


def next_window_end(
    connection: Connection, id_column: QueryableAttribute[int], after_id: int, limit: int
) -> int | None:
    """The highest of the next ``limit`` ids above ``after_id`` (``None``: no id is above it)."""
    ids = select(id_column.label("id")).where(id_column > after_id).order_by(id_column)
    window = ids.limit(limit).subquery()
    return connection.execute(select(func.max(window.c.id))).scalar_one_or_none()


def _task_finished() -> ColumnElement[bool]:
    return or_(
        TaskQueue.last_status == RunStatus.SUCCESS,
        TaskQueue.task_runs_failed >= TaskQueue.max_retries,
        TaskQueue.cancel_requested_on.is_not(None),
    )


def _finished_before(status: RunStatus, cutoff: datetime) -> ColumnElement[bool]:
    run_kept = (
        select(TaskRun.id)
        .where(
            TaskRun.task_queue_id == TaskQueue.id,
            or_(
                TaskRun.status.in_(OPEN_RUN_STATUSES),
                TaskRun.finished_on.is_(None),
                TaskRun.finished_on >= cutoff,
            ),
        )
        .exists()
    )
    ended = and_(TaskQueue.last_status == status, TaskQueue.queued_on < cutoff, ~run_kept)
    if status is not RunStatus.ERROR:
        return ended
    # Cancelled before it had a run: no LastStatus; it counts as an error, aged from the cancel.
    cancelled_unrun = and_(
        TaskQueue.last_status.is_(None), TaskQueue.cancel_requested_on < cutoff, ~run_kept
    )
    return or_(ended, cancelled_unrun)


def prunable_task_ids(
    connection: Connection,
    cutoffs: Mapping[RunStatus, datetime],
    after_id: int,
    window_end: int,
    *,
    lock: bool = True,
) -> list[int]:
    """Finished tasks in ids ``(after_id, window_end]`` whose runs all ended before their
    status's cutoff; locked (PostgreSQL: ``FOR UPDATE SKIP LOCKED``) unless ``lock`` is off."""
    if not cutoffs:
        return []
    query = (
        select(TaskQueue.id)
        .where(
            TaskQueue.id > after_id,
            TaskQueue.id <= window_end,
            _task_finished(),
            or_(*(_finished_before(status, cutoff) for status, cutoff in cutoffs.items())),
        )
        .order_by(TaskQueue.id)
    )
    if lock:
        query = query.with_for_update(skip_locked=True, of=TaskQueue)
    return list(connection.execute(query).scalars())


def delete_runs_of(connection: Connection, task_ids: Sequence[int], limit: int) -> int:
    """Delete at most ``limit`` runs of ``task_ids``, oldest first; return how many."""
    if not task_ids:
        return 0
    batch = (
        select(TaskRun.id)
        .where(TaskRun.task_queue_id.in_(task_ids))
        .order_by(TaskRun.id)
        .limit(limit)
    )
    return connection.execute(delete(TaskRun).where(TaskRun.id.in_(batch))).rowcount


def count_runs_of(connection: Connection, task_ids: Sequence[int]) -> int:
    """How many runs ``task_ids`` have (``prune --dry-run``)."""
    if not task_ids:
        return 0
    query = select(func.count()).where(TaskRun.task_queue_id.in_(task_ids))
    return int(connection.execute(query).scalar_one())


def delete_tasks_without_runs(connection: Connection, task_ids: Sequence[int]) -> int:
    """Delete those of ``task_ids`` that have no run left; return how many.

    The caller has deleted their runs in the same transaction (:func:`delete_runs_of`); a task
    whose runs did not all fit in that batch is deleted by a later one.
    """
    if not task_ids:
        return 0
    has_run = select(TaskRun.id).where(TaskRun.task_queue_id == TaskQueue.id).exists()
    statement = delete(TaskQueue).where(TaskQueue.id.in_(task_ids), ~has_run)
    return connection.execute(statement).rowcount


def prune_runners(
    connection: Connection,
    cutoff: datetime,
    after_id: int,
    window_end: int,
    *,
    dry_run: bool = False,
) -> int:
    """Delete finished runner rows in ids ``(after_id, window_end]`` that ended before
    ``cutoff`` and that no run refers to; return how many (``dry_run``: would)."""
    referenced = select(TaskRun.id).where(TaskRun.task_runner_id == TaskRunner.id).exists()
    prunable = and_(
        TaskRunner.id > after_id,
        TaskRunner.id <= window_end,
        TaskRunner.status != RunnerStatus.RUNNING,
        TaskRunner.finished_on < cutoff,
        ~referenced,
    )
    if dry_run:
        return int(connection.execute(select(func.count()).where(prunable)).scalar_one())
    locked = select(TaskRunner.id).where(prunable).with_for_update(skip_locked=True)
    return connection.execute(delete(TaskRunner).where(TaskRunner.id.in_(locked))).rowcount


def prune_beat_ticks(
    connection: Connection, cutoff: datetime, limit: int, *, dry_run: bool = False
) -> int:
    """Delete at most ``limit`` beat-tick rows ticked before ``cutoff``; return how many
    (``dry_run``: how many there are, uncapped)."""
    old = BeatTick.ticked_on < cutoff
    if dry_run:
        return int(connection.execute(select(func.count()).where(old)).scalar_one())
    keys = select(BeatTick.event, BeatTick.slot).where(old).limit(limit)
    statement = delete(BeatTick).where(tuple_(BeatTick.event, BeatTick.slot).in_(keys))
    return connection.execute(statement).rowcount


def prune_schedule_slots(
    connection: Connection,
    cutoff: datetime,
    after_id: int,
    window_end: int,
    *,
    dry_run: bool = False,
) -> int:
    """Delete schedule-slot rows in ids ``(after_id, window_end]`` fired before ``cutoff``;
    return how many (``dry_run``: would).

    A slot a beat may still be deciding (at or after its schedule's ``NextRunOn``) is kept, and
    so is each schedule's newest slot row: the unique ``(ScheduleId, SlotOn)`` key of a slot
    that may fire again is never removed.
    """
    newer = aliased(TaskScheduleSlot)
    newer_slot = (
        select(newer.id)
        .where(
            newer.schedule_id == TaskScheduleSlot.schedule_id,
            newer.slot_on > TaskScheduleSlot.slot_on,
        )
        .exists()
    )
    passed = (
        select(TaskSchedule.id)
        .where(
            TaskSchedule.id == TaskScheduleSlot.schedule_id,
            TaskSchedule.next_run_on > TaskScheduleSlot.slot_on,
        )
        .exists()
    )
    prunable = and_(
        TaskScheduleSlot.id > after_id,
        TaskScheduleSlot.id <= window_end,
        TaskScheduleSlot.fired_on < cutoff,
        passed,
        newer_slot,
    )
    if dry_run:
        return int(connection.execute(select(func.count()).where(prunable)).scalar_one())
    locked = select(TaskScheduleSlot.id).where(prunable).with_for_update(skip_locked=True)
    statement = delete(TaskScheduleSlot).where(TaskScheduleSlot.id.in_(locked))
    return connection.execute(statement).rowcount


def add_pruned(connection: Connection, kind: str, rows: int, now: datetime) -> None:
    """Add ``rows`` to the running total of ``kind``, in the deleting transaction."""
    if rows <= 0:
        return
    statement = upsert(connection, PrunedRows).values(
        kind=kind, rows_pruned=rows, last_pruned_on=now
    )
    statement = statement.on_conflict_do_update(
        index_elements=[PrunedRows.kind],
        set_={
            "RowsPruned": PrunedRows.rows_pruned + statement.excluded.RowsPruned,
            "LastPrunedOn": statement.excluded.LastPrunedOn,
        },
    )
    connection.execute(statement)


def set_resume_point(connection: Connection, kind: str, after_id: int) -> None:
    """Where OnProcess's next batch of ``kind`` starts (0: a new pass from the first id)."""
    statement = upsert(connection, PrunedRows).values(kind=kind, resume_after_id=after_id)
    statement = statement.on_conflict_do_update(
        index_elements=[PrunedRows.kind],
        set_={"ResumeAfterId": statement.excluded.ResumeAfterId},
    )
    connection.execute(statement)


def resume_points(connection: Connection) -> dict[str, int]:
    """Each kind's resume point (a kind never walked is absent: start from 0)."""
    rows = connection.execute(select(PrunedRows.kind, PrunedRows.resume_after_id))
    return {kind: int(after_id) for kind, after_id in rows}
