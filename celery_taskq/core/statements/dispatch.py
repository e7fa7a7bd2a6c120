"""How much handler work waits for a runner: one read that the runner dispatch is judged by,
and whether a task waits for a run (:func:`any_task_due`, OnProcess's probe).

:func:`runner_demand` counts the ``scheduled`` runs no runner holds (each is due: a run is
created only when its task is), the live runner loops, and those of them that are running a run
or hold reserved ones (the fast mode's batched claims: work already in a runner's hands).
:meth:`RunnerDemand.runners_wanted` turns the counts into the number of runners to start, and
:func:`split_by_queue` shares them out among the queues whose runs wait
(:func:`waiting_by_queue`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, exists, func, select, text

from celery_taskq.core.models import (
    RUN_RESERVED_SQL,
    RUN_RUNNING_SQL,
    RUN_SCHEDULED_SQL,
    RUNNER_ROLE_RUNNER_SQL,
    RUNNER_RUNNING_SQL,
    TASK_OPEN_SQL,
    Limit,
    TaskQueue,
    TaskRun,
    TaskRunner,
)
from celery_taskq.core.queues import QUEUE_LIMIT_PREFIX

DEMAND_COUNT_FACTOR = 2
"""Scheduled runs are counted up to this many times TaskRunnerLimit: with ``live`` runners
(``idle`` of them idle, ``live < limit``) and ``2 * limit`` runs or more, the runs no idle runner
takes are at least ``2 * limit - idle >= limit - live``, the most that may start anyway."""

_UNRESERVED = TaskRun.task_runner_id.is_(None)
"""A ``scheduled`` run no runner holds (a reserved one is already in a runner's hands)."""


@dataclass(frozen=True)
class RunnerDemand:
    """Scheduled runs no runner holds, live runner loops, and the live runners busy with a
    run (running it, or holding reserved ones)."""

    scheduled_runs: int
    live_runners: int
    busy_runners: int

    def runners_wanted(self, limit: int) -> int:
        """Runners to start: one per scheduled run that no idle runner will take, within
        ``limit`` (TaskRunnerLimit) runners in all. 0 when no run is scheduled.

        Scheduled runs beyond ``2 * limit`` change nothing (idle runners are at most the live
        ones), so they need not be counted (:data:`DEMAND_COUNT_FACTOR`)."""
        idle_runners = max(self.live_runners - self.busy_runners, 0)
        return max(min(self.scheduled_runs - idle_runners, limit - self.live_runners), 0)


def runner_demand(connection: Connection, count_up_to: int | None = None) -> RunnerDemand:
    """Count scheduled runs, live runner loops and busy runner loops, in one statement.

    Each count goes through a partial index (``ix_TaskRuns_scheduled``,
    ``ix_TaskRunners_running``, ``ix_TaskRuns_running_by_runner``): the cost follows what is
    open, not the size of the tables. With ``count_up_to`` the scheduled runs are counted up
    to that many only, so a deep backlog costs no more than a shallow one. Worker processes
    running audited native tasks are not runners and are not counted.
    """
    scheduled_runs = select(TaskRun.id).where(text(RUN_SCHEDULED_SQL), _UNRESERVED)
    if count_up_to is not None:
        scheduled_runs = scheduled_runs.limit(max(count_up_to, 0))
    scheduled = (
        select(func.count()).select_from(scheduled_runs.subquery("scheduled")).scalar_subquery()
    )
    live = (
        select(func.count())
        .select_from(TaskRunner)
        .where(text(RUNNER_RUNNING_SQL), text(RUNNER_ROLE_RUNNER_SQL))
        .scalar_subquery()
    )
    # Inside EXISTS the unqualified "Status" is the run's (the innermost FROM).
    running = exists(
        select(TaskRun.id).where(TaskRun.task_runner_id == TaskRunner.id, text(RUN_RUNNING_SQL))
    )
    holding = exists(
        select(TaskRun.id).where(TaskRun.task_runner_id == TaskRunner.id, text(RUN_RESERVED_SQL))
    )
    working = running | holding
    busy = (
        select(func.count())
        .select_from(TaskRunner)
        .where(text(RUNNER_RUNNING_SQL), text(RUNNER_ROLE_RUNNER_SQL), working)
        .scalar_subquery()
    )
    row = connection.execute(select(scheduled, live, busy)).one()
    return RunnerDemand(int(row[0]), int(row[1]), int(row[2]))


def any_task_due(connection: Connection, now: datetime) -> bool:
    """Whether a task is due at ``now`` and may get a run: the condition of
    :func:`~celery_taskq.core.statements.tasks.create_runs`, probed through the partial index
    ``ix_TaskQueue_due`` (its cost follows the due tasks, not the table)."""
    due = select(TaskQueue.id).where(TaskQueue.scheduled_on <= now, text(TASK_OPEN_SQL))
    return bool(connection.execute(select(exists(due))).scalar())


@dataclass(frozen=True)
class QueueDemand:
    """The ``scheduled`` runs of one queue: how many, the highest priority among them, and how
    many a runner could take now (fewer when the queue's concurrency limit is nearly full)."""

    scheduled_runs: int
    top_priority: int
    runnable: int | None = None
    """``None``: all of them."""

    @property
    def takeable(self) -> int:
        """The runs a runner could take now."""
        return self.scheduled_runs if self.runnable is None else self.runnable


def waiting_by_queue(connection: Connection) -> dict[str, QueueDemand]:
    """The queues with ``scheduled`` runs, each with its count and top priority (through the
    partial index of scheduled runs), and the room its concurrency limit leaves, if it has one."""
    rows = connection.execute(
        select(TaskRun.queue, func.count(), func.max(TaskRun.priority))
        .where(text(RUN_SCHEDULED_SQL), _UNRESERVED)
        .group_by(TaskRun.queue)
    ).all()
    room = {
        str(name).removeprefix(QUEUE_LIMIT_PREFIX): max(int(most or 0) - int(running), 0)
        for name, most, running in connection.execute(
            select(Limit.name, Limit.max_running, Limit.running).where(
                Limit.name.startswith(QUEUE_LIMIT_PREFIX), Limit.max_running.is_not(None)
            )
        )
    }
    return {
        str(queue): QueueDemand(
            int(runs), int(top), None if queue not in room else min(int(runs), room[queue])
        )
        for queue, runs, top in rows
    }


def split_by_queue(wanted: int, waiting: Mapping[str, QueueDemand]) -> dict[str, int]:
    """Share ``wanted`` runners among the queues, one at a time in turn, never more to a queue
    than it has runs a runner could take now; queues with higher-priority work, then more work,
    come first."""
    order = sorted(
        waiting, key=lambda queue: (-waiting[queue].top_priority, -waiting[queue].scheduled_runs)
    )
    shares = dict.fromkeys(order, 0)
    while wanted > 0:
        given = False
        for queue in order:
            if wanted > 0 and shares[queue] < waiting[queue].takeable:
                shares[queue] += 1
                wanted -= 1
                given = True
        if not given:
            break
    return {queue: share for queue, share in shares.items() if share}
