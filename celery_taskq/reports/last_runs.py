"""The latest run of each of some tasks, and how long it took: the ``DURATION`` column of
``celery-taskq list`` (one short read for a page of tasks)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from celery_taskq.core.models import RunStatus, TaskRun
from celery_taskq.core.storage.database import Database


@dataclass(frozen=True)
class LastRun:
    """A task's latest run (highest ``Id``): its status and times."""

    run_id: int
    status: RunStatus
    started_on: datetime | None
    finished_on: datetime | None

    def seconds(self, now: datetime) -> float | None:
        """``FinishedOn - StartedOn``; while it runs, the time so far; ``None`` if not started.

        Times are shown as stored: a clock that went back gives a negative duration.
        """
        if self.started_on is None:
            return None
        end = self.finished_on
        if end is None:
            end = now if self.status is RunStatus.RUNNING else None
        return None if end is None else (end - self.started_on).total_seconds()


def last_runs(database: Database, task_ids: Iterable[int]) -> dict[int, LastRun]:
    """Each given task's latest run, by task id; a task with no run is left out."""
    wanted = sorted(set(task_ids))
    if not wanted:
        return {}
    latest = (
        select(func.max(TaskRun.id))
        .where(TaskRun.task_queue_id.in_(wanted))
        .group_by(TaskRun.task_queue_id)
    )
    query = select(
        TaskRun.task_queue_id, TaskRun.id, TaskRun.status, TaskRun.started_on, TaskRun.finished_on
    ).where(TaskRun.id.in_(latest))
    with database.transaction(read_only=True) as connection:
        rows = connection.execute(query).all()
    return {
        int(task_id): LastRun(int(run_id), RunStatus(status), started_on, finished_on)
        for task_id, run_id, status, started_on, finished_on in rows
    }
