"""How much handler work waits for a runner: one read that the runner dispatch is judged by.

:func:`runner_demand` counts the ``scheduled`` runs (each is due: a run is created only when its
task is), the live runner loops, and those of them that are running a run.
:meth:`RunnerDemand.runners_wanted` turns the counts into the number of runners to start.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, exists, func, select, text

from celery_taskq.core.models import (
    RUN_RUNNING_SQL,
    RUN_SCHEDULED_SQL,
    RUNNER_ROLE_RUNNER_SQL,
    RUNNER_RUNNING_SQL,
    TaskRun,
    TaskRunner,
)


@dataclass(frozen=True)
class RunnerDemand:
    """Scheduled runs, live runner loops, and the live runners busy with a run."""

    scheduled_runs: int
    live_runners: int
    busy_runners: int

    def runners_wanted(self, limit: int) -> int:
        """Runners to start: one per scheduled run that no idle runner will take, within
        ``limit`` (TaskRunnerLimit) runners in all. 0 when no run is scheduled."""
        idle_runners = max(self.live_runners - self.busy_runners, 0)
        return max(min(self.scheduled_runs - idle_runners, limit - self.live_runners), 0)


def runner_demand(connection: Connection) -> RunnerDemand:
    """Count scheduled runs, live runner loops and busy runner loops, in one statement.

    Each count goes through a partial index (``ix_TaskRuns_scheduled``,
    ``ix_TaskRunners_running``, ``ix_TaskRuns_running_by_runner``): the cost follows what is
    open, not the size of the tables. Worker processes running audited native tasks are not
    runners and are not counted.
    """
    scheduled = (
        select(func.count()).select_from(TaskRun).where(text(RUN_SCHEDULED_SQL)).scalar_subquery()
    )
    live = (
        select(func.count())
        .select_from(TaskRunner)
        .where(text(RUNNER_RUNNING_SQL), text(RUNNER_ROLE_RUNNER_SQL))
        .scalar_subquery()
    )
    # Inside EXISTS the unqualified "Status" is the run's (the innermost FROM).
    working = exists(
        select(TaskRun.id).where(TaskRun.task_runner_id == TaskRunner.id, text(RUN_RUNNING_SQL))
    )
    busy = (
        select(func.count())
        .select_from(TaskRunner)
        .where(text(RUNNER_RUNNING_SQL), text(RUNNER_ROLE_RUNNER_SQL), working)
        .scalar_subquery()
    )
    row = connection.execute(select(scheduled, live, busy)).one()
    return RunnerDemand(int(row[0]), int(row[1]), int(row[2]))
