"""Attempts of native Celery tasks written once they are over: a start and an end in one write.

An attempt whose start and end are both still waiting to be written (a short task: both fall
in one batch of the audit's writer) is recorded as what the start and the end would have left
together: the task's older open attempt closed, its row upserted and rolled up, and one
finished run. On PostgreSQL that is one statement, and the attempts of a batch go in one round
trip; elsewhere, and for an attempt of a task whose newer attempt is already open, it is the
start and then the end (:mod:`celery_taskq.core.statements.native_attempts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from celery_taskq.core.statements import native_pg
from celery_taskq.core.statements.native import NativeTask
from celery_taskq.core.statements.native_attempts import (
    REDELIVERED_MESSAGE,
    SUPERSEDED_MESSAGE,
    AttemptEnd,
    end_attempt,
    end_values,
    start_attempt,
)


@dataclass(frozen=True)
class CompletedAttempt:
    """An attempt that started and ended before either was written."""

    task: NativeTask
    attempt: int
    """Celery's ``retries`` of the attempt."""
    eager: bool
    runner_id: int | None
    started_on: datetime
    end: AttemptEnd
    ended_on: datetime


def record_completed(connection: Connection, attempts: Sequence[CompletedAttempt]) -> list[int]:
    """Record each of ``attempts``, in order, as a start and an end would; their runs' ids."""
    merged: list[int | None] = [None] * len(attempts)
    if connection.dialect.name == "postgresql":
        merged = native_pg.complete_attempts(
            connection,
            [
                native_pg.complete_params(
                    attempt.task,
                    attempt=attempt.attempt,
                    eager=attempt.eager,
                    runner_id=attempt.runner_id,
                    started_on=attempt.started_on,
                    values=end_values(attempt.end, attempt.ended_on),
                    final=attempt.end.final,
                    lost_message=REDELIVERED_MESSAGE,
                    superseded_message=SUPERSEDED_MESSAGE,
                )
                for attempt in attempts
            ],
        )
    run_ids = []
    for attempt, run_id in zip(attempts, merged, strict=True):
        if run_id is None:  # elsewhere, or a newer attempt of the task is open
            run_id = start_attempt(
                connection,
                attempt.task,
                attempt=attempt.attempt,
                eager=attempt.eager,
                runner_id=attempt.runner_id,
                started_on=attempt.started_on,
            )
            end_attempt(connection, run_id, attempt.end, attempt.ended_on)
        run_ids.append(run_id)
    return run_ids
