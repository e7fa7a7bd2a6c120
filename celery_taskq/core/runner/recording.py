"""How a runner claims runs and records what they did, waiting out database outages.

A claimed run must end recorded: while the database is unreachable the runner retries
(:meth:`RunRecording._until_stored`) rather than leave the run ``running`` under a live runner,
which the overseer would never time out. The outcome of one run and the claim of the next
travel in one transaction (or, on PostgreSQL, one statement) while the loop goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from celery_taskq.core.clock import Clock
from celery_taskq.core.context import Progress
from celery_taskq.core.exceptions import SchemaNotReadyError, StorageError, StorageRefusedError
from celery_taskq.core.models import RunStatus
from celery_taskq.core.notify import RunNotifier
from celery_taskq.core.runner.backoff import Backoff
from celery_taskq.core.runner.outcome import RunOutcome, refused_outcome
from celery_taskq.core.statements import claim, limits, runs, tasks
from celery_taskq.core.statements.claim import ClaimedRun, ClaimScope
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)

STORAGE_RETRY_FIRST_DELAY = 0.1
"""Seconds before the first retry when the database is unreachable; doubled per failure."""

STORAGE_RETRY_MAX_DELAY = 5.0
"""The longest wait between two attempts to reach the database."""

_T = TypeVar("_T")


class RunRecording:
    """The database side of :class:`~celery_taskq.core.runner.loop.TaskRunner`: claims, the run's
    input, progress, checkpoints and its final state (a base class of the runner, whose
    ``__init__`` sets the attributes below)."""

    database: Database
    task_runner_id: int
    claim_scope: ClaimScope
    clock: Clock
    notifier: RunNotifier
    _stop: threading.Event
    _claim_uncertain: bool
    _claimed_ahead: ClaimedRun | None
    _may_claim_ahead: Callable[[], bool] | None

    def get_next_task_run(self) -> ClaimedRun | None:
        """Claim the next scheduled run of the queues served (highest priority first, then
        FIFO) in one atomic statement; ``None`` if none."""
        with self.database.transaction() as connection:
            claimed = None
            if self._claim_uncertain:
                # A transaction that claimed failed with its connection: its commit may have
                # landed all the same, leaving a run ``running`` under this live runner that
                # the overseer would never time out. Such a run is taken up first.
                orphan = runs.running_run_of_runner(connection, self.task_runner_id)
                claimed = None if orphan is None else ClaimedRun(*orphan)
            if claimed is None:
                claimed = claim.claim_next_run(
                    connection, self.task_runner_id, self.clock(), self.claim_scope
                )
        self._claim_uncertain = False
        self._log_claimed(claimed)
        return claimed

    def _log_claimed(self, claimed: ClaimedRun | None) -> None:
        if claimed is not None:
            logger.info(
                "runner %s claimed run %s of task %s",
                self.task_runner_id,
                claimed.run_id,
                claimed.task_queue_id,
                extra={
                    "action": "run_claimed",
                    "run_id": claimed.run_id,
                    "queue_id": claimed.task_queue_id,
                },
            )

    def _record(
        self, claimed: ClaimedRun, outcome: RunOutcome, backoff: Backoff
    ) -> tuple[bool, RunOutcome]:
        """Write the run's outcome (waiting out outages); whether it was still this runner's,
        and the outcome as written.

        An outcome the database refuses (not an outage: retrying cannot help) is recorded as
        an ``error`` saying so, and without its output if even that is refused.
        """
        what = f"recording run {claimed.run_id}"
        try:
            return self._until_stored(what, lambda: self._write(claimed, outcome, backoff)), outcome
        except StorageRefusedError as refusal:
            logger.error(
                "the database refused the outcome of run %s: %s",
                claimed.run_id,
                refusal,
                extra={"action": "outcome_refused", "run_id": claimed.run_id},
            )
            outcome = refused_outcome(outcome, refusal)
        try:
            return self._until_stored(what, lambda: self._write(claimed, outcome, backoff)), outcome
        except StorageRefusedError:
            outcome = dataclasses.replace(outcome, standard_output="", error_output="")
            return self._until_stored(what, lambda: self._write(claimed, outcome, backoff)), outcome

    def _write(self, claimed: ClaimedRun, outcome: RunOutcome, backoff: Backoff) -> bool:
        """One attempt at writing the outcome (one transaction), claiming the next run with it
        when the loop goes on."""
        if (
            runs.is_plain_success(outcome)
            and self._may_claim_ahead is not None
            and self._may_claim_ahead()
        ):
            values = runs.success_values(claimed.run_id, self.task_runner_id, outcome, self.clock())
            done = claim.finish_success_and_claim(self.database, values, self.claim_scope)
            if done is not None:
                recorded, self._claimed_ahead = done
                return recorded
        with self.database.transaction() as connection:
            now = self.clock()
            recorded = runs.finish_run(
                connection, claimed.run_id, self.task_runner_id, outcome, now
            )
            if recorded and self.claim_scope.limited:
                limits.release(connection, claimed.run_id)
            if recorded and outcome.status in (RunStatus.ERROR, RunStatus.TIMEOUT):
                runs.defer_retry(connection, claimed.task_queue_id, now, backoff.delay)
            if self._may_claim_ahead is not None and self._may_claim_ahead():
                self._claimed_ahead = claim.claim_next_run(
                    connection, self.task_runner_id, now, self.claim_scope
                )
        return recorded

    def _load_run_input(self, claimed: ClaimedRun) -> tuple[str, Any, Any] | None:
        with self.database.transaction(read_only=True) as connection:
            return runs.load_run_input(connection, claimed.task_queue_id)

    def _until_stored(self, what: str, attempt: Callable[[], _T]) -> _T:
        """``attempt`` (one transaction), repeated until the database is reachable again.

        A claimed run whose outcome is not written would stay ``running`` under a live runner,
        which the overseer never times out; so the runner waits out an outage here. (If the
        overseer times it out meanwhile, ``finish_run`` finds that and writes nothing; if a
        failed commit landed after all, the retry finds the run finished, and a run it had
        claimed ahead is taken up by the next claim.)
        """
        delay = STORAGE_RETRY_FIRST_DELAY
        while True:
            try:
                return attempt()
            except (SchemaNotReadyError, StorageRefusedError):
                raise
            except StorageError as exc:
                self._claim_uncertain = True
                self._claimed_ahead = None
                if self._stop.is_set():
                    # Asked to stop while the database is out: the run stays ``running``
                    # under this runner, which ends ``timeout`` (or, unreachable, is found
                    # dead by the overseer), so the run is taken up again.
                    logger.error(
                        "%s failed and the runner is asked to stop: giving up",
                        what,
                        extra={"action": "storage_given_up", "runner_id": self.task_runner_id},
                    )
                    raise
                logger.warning(
                    "%s failed, retrying in %.1fs: %s",
                    what,
                    delay,
                    exc,
                    extra={"action": "storage_retry", "runner_id": self.task_runner_id},
                )
                self._stop.wait(delay)
                delay = min(delay * 2, STORAGE_RETRY_MAX_DELAY)

    def _save_checkpoint(self, run_id: int, checkpoint: Any) -> None:
        with self.database.transaction() as connection:
            runs.save_run_checkpoint(connection, run_id, checkpoint)

    def _is_cancelled(self, task_queue_id: int) -> bool:
        with self.database.transaction(read_only=True) as connection:
            return tasks.is_cancelled(connection, task_queue_id)

    def _write_progress(self, run_id: int, progress: Progress) -> None:
        with self.database.transaction() as connection:
            runs.set_run_progress(connection, run_id, progress)
        self.notifier.publish(run_id)
