"""Batched claims and group commit: the runner's fast mode (``TASKQ_GROUP_COMMIT_MS`` > 0).

In the strict mode (the default) every run costs one commit: its outcome, committed with the
claim of the next run before that run starts. In the fast mode, on PostgreSQL and for a runner
without limits, a runner:

- **reserves** up to N runs in one statement (:func:`~celery_taskq.core.statements.reserve.
  reserve_runs`); N starts at 1, doubles while reservations come back full and falls to what the
  last one found, capped by ``TASKQ_CLAIM_BATCH_MAX``. A reserved run stays ``scheduled``.
- **executes** its reserved runs one after the other, keeping each plain success in memory;
- **group-commits** those outcomes in one transaction: with the next reservation when it runs
  out of reserved runs, before a run starts once the oldest waiting outcome is
  ``TASKQ_GROUP_COMMIT_MS`` old, and when the loop ends;
- **marks a run ``running``** (with the waiting outcomes, in one transaction) the moment it
  outlives the window, or writes progress or a checkpoint. From then on it is a run of the
  strict mode: its outcome is committed on its own, and a crash records it ``timeout``.
  Outcomes other than a plain success are recorded the strict way too, after that mark.
- **marks a run ``running`` before it starts** when an earlier runner that reserved it timed
  out (``reservation_lost``): that run may be what killed it, and a task that kills every
  runner that runs it must use up its retries, not be handed back for ever.

What a crash (SIGKILL) may leave unrecorded is bounded by the window: the runs that finished
within it, and the run that was executing, if it had not outlived the window. Their runner's
end (the overseer times it out) hands them back: they run again, without a failure counted.
See docs/reliability.md.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

from celery_taskq.core.context import Progress
from celery_taskq.core.runner.backoff import Backoff
from celery_taskq.core.runner.lease import Lease
from celery_taskq.core.runner.outcome import RunOutcome
from celery_taskq.core.runner.recording import RunRecording
from celery_taskq.core.runner.start_watch import StartWatch
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import reserve, runs
from celery_taskq.core.statements.claim import ClaimedRun
from celery_taskq.core.statements.reserve import ReservedSuccess

logger = logging.getLogger(__name__)

PENDING_OUTPUT_MAX = 4 * 1024 * 1024
"""Characters of output the waiting outcomes may hold before they are committed early (each
run's output is capped, but a group of runs that print a lot would add up)."""


class BatchedRecording(RunRecording):
    """:class:`RunRecording` with the fast mode (a base class of the runner, whose ``__init__``
    calls :meth:`_init_batching` and whose loop calls :meth:`start_batching` and
    :meth:`stop_batching`)."""

    settings: Settings
    _lease: Lease | None
    _run_in_progress: bool

    def _init_batching(self) -> None:
        self._reserved: deque[ClaimedRun] = deque()
        self._pending: list[ReservedSuccess] = []
        self._pending_since: float | None = None
        self._pending_output = 0
        self._reservation_size = 1
        self._watch: StartWatch | None = None
        self._started_on: datetime | None = None
        self._reservation_room: Callable[[], int] = lambda: 0

    @property
    def group_commit(self) -> bool:
        """Whether this runner works in the fast mode (see the module's docstring)."""
        return (
            self.settings.group_commit_ms > 0
            and self.database.dialect == "postgresql"
            and not self.claim_scope.limited
        )

    def start_batching(self, reservation_room: Callable[[], int]) -> None:
        """Enter the fast mode for the loop; ``reservation_room`` says how many more runs the
        loop will start (0: reserve none)."""
        self._reservation_room = reservation_room
        self._watch = StartWatch()

    def stop_batching(self) -> None:
        """Leave the fast mode (the loop ended; :meth:`commit_pending` runs in its end)."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    @property
    def batching(self) -> bool:
        """Whether the loop runs in the fast mode now."""
        return self._watch is not None

    # -- the loop's step -------------------------------------------------------------------

    def next_reserved_run(self) -> ClaimedRun | None:
        """The next run to execute: a reserved one, reserving more (with the waiting outcomes
        committed in the same transaction) when none is left; ``None`` if there is no work.

        The caller holds the lease from here until the run is done."""
        if not self._reserved:
            self._refill()
        if not self._reserved:
            return None
        if self._pending_since is not None and (
            self._window_left() <= 0 or self._pending_output > PENDING_OUTPUT_MAX
        ):
            self._until_stored("recording finished runs", lambda: self._commit())
        return self._reserved.popleft()

    def holds_reserved_runs(self) -> bool:
        """Whether runs are reserved and not started yet (the lease stays held)."""
        return bool(self._reserved)

    def arm_start(self, claimed: ClaimedRun) -> None:
        """The run starts now: mark it ``running`` if it outlives the window."""
        if self._watch is None:
            return
        started_on = self.clock()
        self._started_on = started_on
        if claimed.reservation_lost:
            logger.warning(
                "run %s was held by a runner that was lost: it starts the strict way",
                claimed.run_id,
                extra={"action": "reservation_lost_start", "run_id": claimed.run_id},
            )
            start = (claimed, started_on)
            self._until_stored(f"starting run {claimed.run_id}", lambda: self._commit(start=start))
            return
        left = self._window_left() if self._pending_since is not None else self._window

        def mark_running() -> None:
            self._commit(start=(claimed, started_on), hand_back=True)

        self._watch.arm(left, mark_running)

    def _finish(
        self, claimed: ClaimedRun, outcome: RunOutcome, backoff: Backoff
    ) -> tuple[bool, RunOutcome]:
        """Record the run's outcome: kept for the group commit if it is a plain success of a
        run never marked ``running``, else recorded the strict way (marked ``running`` first)."""
        if self._watch is None:
            return self._record(claimed, outcome, backoff)
        # A run reserved again after a lost runner was marked running before it started
        started = self._watch.disarm() or claimed.reservation_lost
        started_on = self._started_on or self.clock()
        if not started and runs.is_plain_success(outcome):
            values = runs.success_values(claimed.run_id, self.task_runner_id, outcome, self.clock())
            self._pending.append(
                ReservedSuccess(
                    claimed.run_id,
                    started_on,
                    values["now"],
                    values["standard_output"],
                    values["error_output"],
                    values["results"],
                    values["percents_completed"],
                )
            )
            self._pending_output += len(outcome.standard_output) + len(outcome.error_output)
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            return True, outcome
        if not started:
            start = (claimed, started_on)
            self._until_stored(f"starting run {claimed.run_id}", lambda: self._commit(start=start))
        return self._record(claimed, outcome, backoff)

    def commit_pending(self) -> None:
        """Commit the waiting outcomes now (the loop ends; a failure leaves them to be handed
        back and run again, as a crash would)."""
        if self._pending:
            try:
                self._commit()
            except Exception:
                logger.exception(
                    "runner %s could not record %s finished runs: they will run again",
                    self.task_runner_id,
                    len(self._pending),
                    extra={"action": "group_commit_lost", "runner_id": self.task_runner_id},
                )

    # -- progress and checkpoints mark a reserved run running first ------------------------

    def _write_progress(self, run_id: int, progress: Progress) -> None:
        if self._watch is not None:
            self._watch.run_now()
        super()._write_progress(run_id, progress)

    def _save_checkpoint(self, run_id: int, checkpoint: object) -> None:
        if self._watch is not None:
            self._watch.run_now()
        super()._save_checkpoint(run_id, checkpoint)

    # -- the transactions ------------------------------------------------------------------

    @property
    def _window(self) -> float:
        return self.settings.group_commit_ms / 1000

    def _window_left(self) -> float:
        if self._pending_since is None:
            return self._window
        return self._window - (time.monotonic() - self._pending_since)

    def _refill(self) -> None:
        room = min(self._reservation_size, self._reservation_room())
        if room <= 0:
            if self._pending:
                self._until_stored("recording finished runs", lambda: self._commit())
            return
        reserved = self._commit(reserve_up_to=room)  # a StorageError goes to the loop
        self._claim_uncertain = False
        self._reserved.extend(reserved)
        self._log_claimed_all(reserved)
        cap = self.settings.claim_batch_max
        if len(reserved) == room:
            self._reservation_size = min(room * 2, cap)
        else:
            self._reservation_size = max(len(reserved), 1)

    def _commit(
        self,
        *,
        start: tuple[ClaimedRun, datetime] | None = None,
        hand_back: bool = False,
        reserve_up_to: int = 0,
    ) -> list[ClaimedRun]:
        """One transaction: the waiting outcomes, a run marked ``running``, the runs still
        reserved handed back (``hand_back``: they would wait behind a long run), a new
        reservation.

        Runs handed back are dropped here first: if the commit is not confirmed, they stay
        reserved in the database, and the next reservation hands them back (as it does after
        any transaction whose commit was not confirmed; this runner then holds no other
        reserved run: it reserves only when it has none left)."""
        pending = list(self._pending)
        reserved: list[ClaimedRun] = []
        if hand_back and self._reserved:
            self._reserved.clear()
            self._claim_uncertain = True  # until the hand-back below is committed
        else:
            hand_back = False
        with self.database.transaction() as connection:
            recorded = reserve.finish_reserved_successes(connection, self.task_runner_id, pending)
            if start is not None:
                reserve.start_reserved_run(
                    connection, start[0].run_id, self.task_runner_id, start[1]
                )
            if hand_back:
                reserve.hand_back_reservations(connection, [self.task_runner_id])
            if reserve_up_to:
                if self._claim_uncertain:
                    reserve.hand_back_reservations(connection, [self.task_runner_id])
                reserved = reserve.reserve_runs(
                    connection, self.task_runner_id, self.clock(), reserve_up_to, self.claim_scope
                )
        if hand_back:
            self._claim_uncertain = False
        del self._pending[: len(pending)]
        self._pending_output = sum(
            len(done.standard_output) + len(done.error_output) for done in self._pending
        )
        self._pending_since = None if not self._pending else time.monotonic()
        self._after_commit(pending, recorded)
        return reserved

    def _after_commit(self, pending: list[ReservedSuccess], recorded: list[int]) -> None:
        for run_id in recorded:
            self.notifier.publish(run_id)
        lost = {success.run_id for success in pending} - set(recorded)
        for run_id in sorted(lost):
            logger.warning(
                "run %s was no longer this runner's: its outcome is not recorded",
                run_id,
                extra={"action": "run_outcome_discarded", "run_id": run_id},
            )

    def _log_claimed_all(self, reserved: list[ClaimedRun]) -> None:
        for claimed in reserved:
            self._log_claimed(claimed)
