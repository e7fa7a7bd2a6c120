"""An attempt's writes: its start, its end, and both at once when neither was written yet.

The auditor hands the start to the writer when the attempt starts and the end when it ends.
Where both fall in one batch of the writer (a short task), the end stands in for both
(:class:`~celery_taskq.celery.audit_writer.MergingOp`): one finished run is written, and the
finished attempts of a batch go together (one round trip on PostgreSQL). Otherwise the end finds
its run through the :class:`Attempt` its start filled in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from celery_taskq.celery.audit_message import NotedError, TaskMessage
from celery_taskq.celery.audit_processes import ProcessRunner
from celery_taskq.celery.audit_writer import GroupedOp, MergingOp
from celery_taskq.celery.native_output import OutputCapture
from celery_taskq.core.statements import native_attempts, native_completed
from celery_taskq.core.statements.native import NativeTask
from celery_taskq.core.statements.native_attempts import AttemptEnd
from celery_taskq.core.statements.native_completed import CompletedAttempt


@dataclass
class Attempt:
    """One attempt running in this thread; its start operation fills in ``run_id``."""

    message: TaskMessage
    started_on: datetime
    ignore_result: bool
    capture: OutputCapture | None
    run_id: int | None = None
    runner_id: int | None = None
    output: tuple[str, str] | None = None
    error: NotedError | None = None
    replaced: bool = False
    start: AttemptStart | None = None
    """Its start's write, handed to the writer when it started."""

    def finish_capture(self) -> tuple[str, str]:
        """The attempt's captured output (stdout, stderr), the capture ended on first call."""
        if self.output is None:
            self.output = ("", "") if self.capture is None else self.capture.finish()
            self.capture = None
        return self.output


@dataclass(eq=False)
class AttemptStart:
    """Write an attempt's start: a ``running`` run."""

    attempt: Attempt
    task: NativeTask
    runner: ProcessRunner | None

    def __call__(self, connection: Connection) -> None:
        """Write the start, and note the run's id on the attempt."""
        attempt = self.attempt
        attempt.runner_id = None if self.runner is None else self.runner.id
        attempt.run_id = native_attempts.start_attempt(
            connection,
            self.task,
            attempt=attempt.message.retries,
            eager=attempt.message.eager,
            runner_id=attempt.runner_id,
            started_on=attempt.started_on,
        )


@dataclass(eq=False)
class AttemptFinish(MergingOp):
    """Write an attempt's end over its run; with its start, if that was not written yet."""

    start: AttemptStart
    end: AttemptEnd
    ended_on: datetime

    @property
    def merges(self) -> object:
        """The attempt's start."""
        return self.start

    def merged(self) -> CompletedAttempts:
        """The whole attempt, written once."""
        return CompletedAttempts(self)

    def __call__(self, connection: Connection) -> None:
        """Write the end over the run the start wrote (found again if its id is unknown)."""
        attempt = self.start.attempt
        run_id = attempt.run_id
        if run_id is None:
            run_id = native_attempts.find_attempt(
                connection, attempt.message.task_id, attempt.message.retries, attempt.runner_id
            )
        if run_id is not None:
            native_attempts.end_attempt(connection, run_id, self.end, self.ended_on)


class CompletedAttempts(GroupedOp):
    """An attempt started and ended within one batch: one finished run."""

    def __init__(self, finish: AttemptFinish) -> None:
        self.finish = finish

    @property
    def group(self) -> object:
        """Every finished attempt: consecutive ones are written together."""
        return CompletedAttempts

    def run_group(self, connection: Connection, ops: Sequence[GroupedOp]) -> None:
        """Write the attempts of ``ops``, in order."""
        finishes = [op.finish for op in ops if isinstance(op, CompletedAttempts)]
        run_ids = native_completed.record_completed(
            connection, [_completed(finish) for finish in finishes]
        )
        for finish, run_id in zip(finishes, run_ids, strict=True):
            finish.start.attempt.run_id = run_id


def _completed(finish: AttemptFinish) -> CompletedAttempt:
    start = finish.start
    attempt = start.attempt
    attempt.runner_id = None if start.runner is None else start.runner.id
    return CompletedAttempt(
        task=start.task,
        attempt=attempt.message.retries,
        eager=attempt.message.eager,
        runner_id=attempt.runner_id,
        started_on=attempt.started_on,
        end=finish.end,
        ended_on=finish.ended_on,
    )
