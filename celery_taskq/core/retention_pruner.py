"""Applying a retention policy: ``celery-taskq prune`` and OnProcess's bounded share of it.

:meth:`Pruner.prune` walks every table once from its first id (the command line);
:meth:`Pruner.prune_step` does one batch of each kind from where the last OnProcess tick left
off, so a tick's work is bounded whatever the tables hold. Every batch is its own short
transaction and adds what it deleted to ``TaskqPrunedRows`` in that transaction. The rules of
what may be deleted are in :mod:`celery_taskq.core.statements.prune`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from celery_taskq.core.clock import Clock
from celery_taskq.core.exceptions import StorageError
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRunner
from celery_taskq.core.retention import MAX_BATCH_SIZE, RUNNERS, TICKS, RetentionPolicy
from celery_taskq.core.schedule_models import TaskScheduleSlot
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import prune
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)

SLOTS = "schedule_slots"

MIN_BUSY_SHARE = 0.05
"""The smallest share of its time ``celery-taskq prune`` may spend deleting."""

DEFAULT_BUSY_SHARE = 0.5
"""``celery-taskq prune`` deletes half of the time and leaves the database to the runners the
other half, unless told otherwise: flat out it took about 30 % of their drain rate."""


@dataclass(frozen=True)
class PruneReport:
    """Rows deleted (or, for a dry run, that would be) by kind."""

    tasks: int = 0
    runs: int = 0
    runners: int = 0
    beat_ticks: int = 0
    schedule_slots: int = 0

    def __add__(self, other: PruneReport) -> PruneReport:
        return PruneReport(
            **{
                field.name: getattr(self, field.name) + getattr(other, field.name)
                for field in fields(self)
            }
        )

    @property
    def total(self) -> int:
        """Rows of every kind."""
        return sum(getattr(self, field.name) for field in fields(self))

    def counts(self) -> dict[str, int]:
        """``{kind: rows}``, in the order of :data:`~celery_taskq.core.retention.PRUNED_KINDS`."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def summary(self) -> str:
        """``tasks 3, runs 9, runners 0, beat_ticks 0, schedule_slots 0``."""
        return ", ".join(f"{kind} {rows}" for kind, rows in self.counts().items())


NOTHING_PRUNED = PruneReport()
"""The report of a tick or command that pruned nothing."""


@dataclass(frozen=True)
class _Batch:
    report: PruneReport
    next_after: int
    """Where the next batch starts."""
    pass_done: bool
    """The window reached the table's end: the next batch starts a new pass."""


def _walk(
    batch: Callable[[int], _Batch], pause: Callable[[float], None], timer: Callable[[], float]
) -> PruneReport:
    """Batch after batch from the first id to the table's end (``celery-taskq prune``),
    pausing after each batch that deleted something (``pause`` is told how long it took)."""
    report, after = PruneReport(), 0
    while True:
        started = timer()
        step = batch(after)
        report += step.report
        if step.pass_done:
            return report
        if step.report.total:
            pause(timer() - started)
        after = step.next_after


class Pruner:
    """Deletes finished rows by a :class:`RetentionPolicy`, ``batch_size`` rows a statement."""

    def __init__(
        self,
        database: Database,
        clock: Clock,
        batch_size: int = MAX_BATCH_SIZE,
        *,
        pause: float = 0.0,
        busy_share: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        timer: Callable[[], float] = time.monotonic,
    ):
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be from 1 to {MAX_BATCH_SIZE}")
        if not 0 <= pause < float("inf"):
            raise ValueError("pause must be a finite number of seconds, 0 or more")
        if not MIN_BUSY_SHARE <= busy_share <= 1:
            raise ValueError(f"busy_share must be from {MIN_BUSY_SHARE:g} to 1")
        self.database = database
        self.clock = clock
        self.batch_size = batch_size
        self.pause = pause
        """Seconds :meth:`prune` waits at least after each batch that deleted rows, leaving
        the database to the work (``celery-taskq prune --pause``)."""
        self.busy_share = busy_share
        """The share of its time :meth:`prune` spends deleting: after a batch that took t
        seconds it waits t × (1 − share) / share (``celery-taskq prune --busy-share``)."""
        self._sleep = sleep
        self._timer = timer

    def prune(self, policy: RetentionPolicy, *, dry_run: bool = False) -> PruneReport:
        """Walk every table once; with ``dry_run`` only count, writing nothing.

        A dry run counts the runner rows prunable now: those that only the runs of tasks it
        counts refer to are not among them (a real prune deletes those runs first).
        """
        now = self.clock()
        report = PruneReport()
        cutoffs = policy.task_cutoffs(now)
        pause = self._pause_between_batches
        if cutoffs:
            report += _walk(
                lambda after: self._tasks_batch(cutoffs, after, now, dry_run=dry_run),
                pause,
                self._timer,
            )
        runner_cutoff = policy.cutoff(RUNNERS, now)
        if runner_cutoff is not None:
            runners = runner_cutoff
            report += _walk(
                lambda after: self._runners_batch(runners, after, now, dry_run=dry_run),
                pause,
                self._timer,
            )
        tick_cutoff = policy.cutoff(TICKS, now)
        if tick_cutoff is not None:
            ticks = tick_cutoff
            while True:
                started = self._timer()
                batch = self._ticks_batch(ticks, now, dry_run=dry_run)
                report += batch
                if dry_run or batch.beat_ticks < self.batch_size:
                    break
                pause(self._timer() - started)
            report += _walk(
                lambda after: self._slots_batch(ticks, after, now, dry_run=dry_run),
                pause,
                self._timer,
            )
        if not dry_run and report.total:
            logger.info("pruned %s", report.summary(), extra={"action": "rows_pruned"})
        return report

    def _pause_between_batches(self, batch_seconds: float) -> None:
        wait = max(self.pause, batch_seconds * (1 - self.busy_share) / self.busy_share)
        if wait > 0:
            self._sleep(wait)

    def prune_step(self, policy: RetentionPolicy) -> PruneReport:
        """OnProcess's share: one batch of each kind, from the resume points it stored."""
        if policy.empty:
            return PruneReport()
        now = self.clock()
        with self.database.transaction(read_only=True) as connection:
            resume = prune.resume_points(connection)
        report = PruneReport()
        cutoffs = policy.task_cutoffs(now)
        if cutoffs:
            batch = self._tasks_batch(cutoffs, resume.get("tasks", 0), now, remember=True)
            report += batch.report
        runner_cutoff = policy.cutoff(RUNNERS, now)
        if runner_cutoff is not None:
            after = resume.get("runners", 0)
            report += self._runners_batch(runner_cutoff, after, now, remember=True).report
        tick_cutoff = policy.cutoff(TICKS, now)
        if tick_cutoff is not None:
            report += self._ticks_batch(tick_cutoff, now)
            after = resume.get(SLOTS, 0)
            report += self._slots_batch(tick_cutoff, after, now, remember=True).report
        if report.total:
            logger.info("pruned %s", report.summary(), extra={"action": "rows_pruned"})
        return report

    def _tasks_batch(
        self,
        cutoffs: dict[RunStatus, datetime],
        after: int,
        now: datetime,
        *,
        dry_run: bool = False,
        remember: bool = False,
    ) -> _Batch:
        with self.database.transaction(read_only=dry_run) as connection:
            end = prune.next_window_end(connection, TaskQueue.id, after, self.batch_size)
            if end is None:
                return self._pass_done(connection, "tasks", PruneReport(), remember)
            ids = prune.prunable_task_ids(connection, cutoffs, after, end, lock=not dry_run)
            if dry_run:
                report = PruneReport(tasks=len(ids), runs=prune.count_runs_of(connection, ids))
                return _Batch(report, end, pass_done=False)
            runs = prune.delete_runs_of(connection, ids, self.batch_size)
            tasks = prune.delete_tasks_without_runs(connection, ids)
            prune.add_pruned(connection, "runs", runs, now)
            prune.add_pruned(connection, "tasks", tasks, now)
            # A batch that filled its runs limit may have left runs of its tasks: look again.
            next_after = after if runs >= self.batch_size else end
            if remember:
                prune.set_resume_point(connection, "tasks", next_after)
            return _Batch(PruneReport(tasks=tasks, runs=runs), next_after, pass_done=False)

    def _runners_batch(
        self,
        cutoff: datetime,
        after: int,
        now: datetime,
        *,
        dry_run: bool = False,
        remember: bool = False,
    ) -> _Batch:
        return self._window_batch(
            RUNNERS, TaskRunner.id, prune.prune_runners, cutoff, after, now, dry_run, remember
        )

    def _slots_batch(
        self,
        cutoff: datetime,
        after: int,
        now: datetime,
        *,
        dry_run: bool = False,
        remember: bool = False,
    ) -> _Batch:
        return self._window_batch(
            SLOTS,
            TaskScheduleSlot.id,
            prune.prune_schedule_slots,
            cutoff,
            after,
            now,
            dry_run,
            remember,
        )

    def _window_batch(
        self,
        kind: str,
        id_column: Any,
        prune_window: Callable[..., int],
        cutoff: datetime,
        after: int,
        now: datetime,
        dry_run: bool,
        remember: bool,
    ) -> _Batch:
        """One ``Id`` window of the rows of ``kind`` (a :class:`PruneReport` field): deleted
        (or counted), added to the totals, its end remembered as the resume point."""
        with self.database.transaction(read_only=dry_run) as connection:
            end = prune.next_window_end(connection, id_column, after, self.batch_size)
            if end is None:
                return self._pass_done(connection, kind, PruneReport(), remember)
            pruned = prune_window(connection, cutoff, after, end, dry_run=dry_run)
            if not dry_run:
                prune.add_pruned(connection, kind, pruned, now)
                if remember:
                    prune.set_resume_point(connection, kind, end)
            return _Batch(PruneReport(**{kind: pruned}), end, pass_done=False)

    def _ticks_batch(
        self, cutoff: datetime, now: datetime, *, dry_run: bool = False
    ) -> PruneReport:
        with self.database.transaction(read_only=dry_run) as connection:
            ticks = prune.prune_beat_ticks(connection, cutoff, self.batch_size, dry_run=dry_run)
            if not dry_run:
                prune.add_pruned(connection, "beat_ticks", ticks, now)
        return PruneReport(beat_ticks=ticks)

    @staticmethod
    def _pass_done(
        connection: Connection, kind: str, report: PruneReport, remember: bool
    ) -> _Batch:
        if remember:
            prune.set_resume_point(connection, kind, 0)
        return _Batch(report, 0, pass_done=True)


def prune_on_process(database: Database, clock: Clock, settings: Settings) -> PruneReport:
    """OnProcess's pruning: one batch of each kind by the ``retention`` setting (nothing, and
    no query, without one). A failure is logged and leaves the tick's other work done."""
    policy = settings.retention_policy
    if policy.empty:
        return PruneReport()
    try:
        return Pruner(database, clock, settings.retention_batch_size).prune_step(policy)
    except StorageError:
        logger.exception("pruning failed", extra={"action": "prune_failed"})
        return PruneReport()
