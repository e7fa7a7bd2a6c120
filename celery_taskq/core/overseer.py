"""The overseer's half of the queue service: runner liveness, run creation, runner counts and
starting runners, and the seed's three events (OnProcess, OnCreateTaskRunners, OnDebug).

How many runners to start is judged by :meth:`QueueOverseer.runner_demand`: one per scheduled
run that no idle runner will take, within TaskRunnerLimit. The Celery layer sends that many
runner tasks and none while nothing is due.

:class:`QueueOverseer` is a base class of :class:`~celery_taskq.core.queue.TaskQueueService`;
the events take the service.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from celery_taskq.core.clock import Clock
from celery_taskq.core.limits import apply_declared_limits
from celery_taskq.core.notify import RunNotifier
from celery_taskq.core.retention_pruner import NOTHING_PRUNED, PruneReport, prune_on_process
from celery_taskq.core.runner.lease import boottime, process_namespace
from celery_taskq.core.runner.liveness import (
    RunnerRecord,
    current_process_start_time,
    judge_by_lease,
    judge_runner,
    kill_runner_process,
    process_start_time,
)
from celery_taskq.core.runner.loop import TaskRunner
from celery_taskq.core.schedules_firing import fire_due_schedules
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import beat, dispatch, runners, schedules, tasks
from celery_taskq.core.statements.claim import EVERY_QUEUE, ClaimScope
from celery_taskq.core.statements.dispatch import RunnerDemand
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)

RUNNER_COMMAND = (sys.executable, "-m", "celery_taskq", "runner")
"""How :meth:`QueueOverseer.create_missing_task_runners` starts a detached runner."""


@dataclass(frozen=True)
class ProcessReport:
    """What one OnProcess tick did."""

    timed_out_runners: tuple[int, ...]
    tasks_given_runs: int
    pruned: PruneReport = NOTHING_PRUNED
    """Rows the retention policy's batch deleted this tick (all 0 without a policy)."""


class QueueOverseer:
    """Oversees runners, creates runs and starts runners (a base class of
    :class:`~celery_taskq.core.queue.TaskQueueService`, whose ``__init__`` sets the attributes
    below)."""

    database: Database
    settings: Settings
    clock: Clock
    cli_mode: bool
    notifier: RunNotifier

    # -- the overseer ----------------------------------------------------------------------

    def _reading(self) -> AbstractContextManager[Connection]:
        """A connection for the tick's reads: autocommit on PostgreSQL (no BEGIN and COMMIT
        round trips), a read transaction on SQLite."""
        if self.database.dialect == "postgresql":
            return self.database.autocommit()
        return self.database.transaction(read_only=True)

    def refresh_task_runners_status(self) -> list[int]:
        """Time out every ``running`` runner that can no longer be executing a run; return their
        ids. See :mod:`celery_taskq.core.runner.liveness` for the judgement: a runner of this
        machine that is alive but out of its lease is killed first."""
        now = self.clock()
        with self._reading() as connection:
            records = runners.running_runners(connection)
        return self._time_out_dead_runners(records, now)

    def _time_out_dead_runners(self, records: Sequence[RunnerRecord], now: datetime) -> list[int]:
        """Judge the ``running`` runners read at ``now``; time out the dead ones (their ids)."""
        if not records:
            return []
        namespace = process_namespace()
        dead: list[RunnerRecord] = []
        for runner in records:
            verdict = judge_runner(
                runner,
                this_host=self.settings.hostname,
                this_namespace=namespace,
                now=now,
                heartbeat_timeout=self.settings.heartbeat_timeout,
                lease_margin=self.settings.lease_margin,
                start_time_of=process_start_time,
            )
            if verdict.kill_first and not kill_runner_process(
                runner.process_id, runner.process_create_time
            ):
                silence = (now - (runner.heartbeat_on or runner.started_on)).total_seconds()
                verdict = judge_by_lease(
                    silence, self.settings.heartbeat_timeout, self.settings.lease_margin
                )
            if not verdict.alive:
                logger.warning(
                    "runner %s (pid %s on %s) is dead: %s",
                    runner.id,
                    runner.process_id,
                    runner.hostname,
                    verdict.reason,
                    extra={"action": "runner_reaped", "runner_id": runner.id},
                )
                dead.append(runner)
        if not dead:
            return []
        with self.database.transaction() as connection:
            return runners.time_out_runners(connection, (), now, judged=dead)

    def create_task_run(self, task_queue_id: int) -> int | None:
        """Create a run for one queue row if the rules allow; return the run id or ``None``.

        Rules: the task is due, it has no scheduled or running run, and it never ran or its
        last run failed with ``TaskRunsFailed < MaxRetries``.
        """
        with self.database.transaction() as connection:
            created = tasks.create_runs(connection, self.clock(), task_queue_id)
            if not created:
                return None
            return tasks.open_run_id(connection, task_queue_id)

    def claim_beat_tick(self, event: str, interval: float) -> bool:
        """Whether this process carries out ``event``'s current tick (first caller wins)."""
        now = self.clock()
        with self.database.autocommit() as connection:  # one statement on PostgreSQL
            return beat.claim_beat_tick(connection, event, int(now.timestamp() // interval), now)

    def create_missing_task_runs(self) -> int:
        """Create runs for every due, unfinished task in one statement; return how many.

        The transaction commits without waiting for the disk (:func:`beat.relax_commit`): runs
        lost in a crash of the database server are created again by the next tick."""
        with self.database.transaction() as connection:
            beat.relax_commit(connection)
            created = tasks.create_runs(connection, self.clock())
        if created:
            logger.info("created %s task runs", len(created), extra={"action": "runs_created"})
            self.notifier.announce_work()
        return len(created)

    def process_queue(self) -> ProcessReport:
        """The seed's ``processQueue``: refresh runner status, fire due schedules, then create
        missing runs.

        A step with nothing to do costs one indexed read: the running runners, the due
        schedules and whether a task is due are read together first (autocommit on
        PostgreSQL); schedules fire only when one is due, and runs are created only when a task
        was due, a runner was timed out (its task's retry) or a schedule fired.
        """
        now = self.clock()
        with self._reading() as connection:
            records = runners.running_runners(connection)
            schedules_due = bool(schedules.due_schedule_ids(connection, now))
            tasks_due = dispatch.any_task_due(connection, now)
        timed_out = self._time_out_dead_runners(records, now)
        fired = 0
        if schedules_due:  # before runs are made
            fired = fire_due_schedules(self.database, self.settings, self.clock())
        created = self.create_missing_task_runs() if tasks_due or timed_out or fired else 0
        apply_declared_limits(self.database, self.settings)  # recounts what lost runners held
        pruned = prune_on_process(self.database, self.clock, self.settings)  # bounded; last
        return ProcessReport(tuple(timed_out), created, pruned)

    # -- runners ---------------------------------------------------------------------------

    def get_task_runner_count(self) -> int:
        """Runners in ``running`` status, on every host."""
        with self.database.transaction(read_only=True) as connection:
            return runners.count_running_runners(connection)

    def get_missing_task_runner_count(self) -> int:
        """``TaskRunnerLimit`` minus running runners, never below 0."""
        return max(self.settings.task_runner_limit - self.get_task_runner_count(), 0)

    def runner_demand(self) -> RunnerDemand:
        """Scheduled runs (counted up to twice TaskRunnerLimit), live runners and busy runners
        (one read); its
        :meth:`~celery_taskq.core.statements.dispatch.RunnerDemand.runners_wanted` is how
        many runners to start."""
        count_up_to = dispatch.DEMAND_COUNT_FACTOR * self.settings.task_runner_limit
        with self._reading() as connection:
            return dispatch.runner_demand(connection, count_up_to)

    def runners_wanted(self) -> int:
        """Runners to start now: none unless a scheduled run waits for one, never more than
        the scheduled runs that no idle runner will take, within TaskRunnerLimit."""
        return self.runner_demand().runners_wanted(self.settings.task_runner_limit)

    def get_task_runner(
        self,
        *,
        worker_hostname: str | None = None,
        worker_limit: int | None = None,
        claim_scope: ClaimScope = EVERY_QUEUE,
    ) -> TaskRunner | None:
        """Register a runner row for this process and return its runner, unless at the limit.

        A Celery worker process passes its worker's name and how many runners that worker may
        hold, so runners never take every pool process. ``claim_scope`` is what the runner
        claims: the queues it serves, and whether limits apply.
        """
        registered_at = boottime()  # the runner's lease runs from before its row is written
        limit = self.settings.task_runner_limit
        running = 0
        with self.database.transaction() as connection:
            runner_id = runners.register_runner(
                connection,
                limit=limit,
                process_id=os.getpid(),
                hostname=self.settings.hostname,
                process_create_time=current_process_start_time(),
                now=self.clock(),
                worker_hostname=worker_hostname,
                worker_limit=worker_limit,
                process_namespace=process_namespace(),
            )
            if runner_id is None:
                # Still under the registration lock: the counts are the ones that refused.
                running = runners.count_running_runners(connection)
        if runner_id is None:
            if running >= limit:
                hit = f"TaskRunnerLimit of {limit} reached ({running} running)"
            else:
                hit = f"worker {worker_hostname} holds its limit of {worker_limit} runners"
            logger.debug(
                "no runner started: %s",
                hit,
                extra={"action": "runner_limit_reached", "limit_hit": hit},
            )
            return None
        logger.debug(
            "runner %s started (pid %s)",
            runner_id,
            os.getpid(),
            extra={"action": "runner_started", "runner_id": runner_id},
        )
        return TaskRunner(
            self.database,
            runner_id,
            self.settings,
            clock=self.clock,
            notifier=self.notifier,
            registered_at=registered_at,
            claim_scope=claim_scope,
        )

    def run_standalone(self) -> bool:
        """The seed's ``runStandalone``: get a runner and let it work one iteration."""
        runner = self.get_task_runner()
        if runner is None:
            return False
        runner.run(cli_mode=False)
        return True

    def create_missing_task_runners(self, runner_args: Sequence[str] = ()) -> int:
        """Start the missing runners: detached processes in CLI mode, else one standalone run.

        Returns the number of runner processes started (or 1/0 for the standalone case).
        """
        if not self.cli_mode:
            return int(self.run_standalone())
        _reap_spawned_runners()
        missing = self.get_missing_task_runner_count()
        environment = dict(os.environ, TASKQ_DATABASE_URL=self.settings.database_url)
        for _ in range(missing):
            process = subprocess.Popen(  # noqa: S603 - a fixed argv of this interpreter, no shell
                [*RUNNER_COMMAND, *runner_args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                env=environment,
            )
            _spawned_runners.append(process)
        if missing:
            logger.info("started %s runner processes", missing, extra={"action": "runners_spawned"})
        return missing


_spawned_runners: list[subprocess.Popen[bytes]] = []
"""Runner processes this process started; kept so that they are reaped, never left zombies."""


def _reap_spawned_runners() -> None:
    _spawned_runners[:] = [process for process in _spawned_runners if process.poll() is None]


# -- the three events ----------------------------------------------------------------------


def on_process(service: QueueOverseer) -> ProcessReport:
    """``task-queue:OnProcess``: run on a schedule; refreshes runners and creates runs."""
    return service.process_queue()


def on_create_task_runners(service: QueueOverseer, runner_args: Sequence[str] = ()) -> int:
    """``task-queue:OnCreateTaskRunners``: start the missing runners."""
    return service.create_missing_task_runners(runner_args)


def on_debug(service: QueueOverseer) -> bool:
    """``task-queue:OnDebug``: work one iteration in this process."""
    return service.run_standalone()
