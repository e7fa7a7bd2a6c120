"""The whole report: every section for one window, read in one read-only transaction, and the
report as JSON-safe data.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery_taskq.core.settings import DEFAULT_NATIVE_LOST_AFTER
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.counts import (
    FailureRates,
    Totals,
    add_counts,
    failure_rates_of,
    final_outcomes_in,
    open_run_counts_in,
    task_counts_in,
    totals_of,
)
from celery_taskq.reports.dead_letter import DeadLetter, dead_letters_in
from celery_taskq.reports.due import DueWork, due_work_in
from celery_taskq.reports.durations import (
    DurationStats,
    SlowRun,
    finished_runs_in,
    slowest_runs_in,
)
from celery_taskq.reports.failures import FailedRun, recent_failures_in
from celery_taskq.reports.limits import DEFAULT_LIMIT
from celery_taskq.reports.lost import PossiblyLost, check_lost_after, possibly_lost_in
from celery_taskq.reports.runner_report import RunnerReport, runners_in
from celery_taskq.reports.sql import report_transaction
from celery_taskq.reports.window import ReportWindow, check_handler, check_limit, check_now


@dataclass(frozen=True)
class Report:
    """Every section of a report, for one window, handler filter and ``now``."""

    now: datetime
    window: ReportWindow
    handler: str | None
    limit: int
    totals: Totals
    failure_rates: FailureRates
    durations: tuple[DurationStats, ...]
    slowest_runs: tuple[SlowRun, ...]
    recent_failures: tuple[FailedRun, ...]
    dead_letters: tuple[DeadLetter, ...]
    runners: tuple[RunnerReport, ...]
    due_work: DueWork
    possibly_lost: PossiblyLost


def build_report(
    database: Database,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    handler: str | None = None,
    now: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    lost_after: float = DEFAULT_NATIVE_LOST_AFTER,
) -> Report:
    """Every section for one window, read in one read-only transaction.

    ``now`` (default: the current time) is what heartbeat ages, due work and possibly lost
    native tasks (never started ``lost_after`` seconds past due) are measured against;
    ``limit`` bounds each top-N section.
    """
    window = ReportWindow(since, until)
    now, handler, limit = check_now(now), check_handler(handler), check_limit(limit)
    lost_after = check_lost_after(lost_after)
    with report_transaction(database) as connection:
        finished = finished_runs_in(connection, window, handler)
        report_totals = totals_of(
            task_counts_in(connection, window, handler),
            add_counts(finished.counts, open_run_counts_in(connection, window, handler)),
        )
        return Report(
            now=now,
            window=window,
            handler=handler,
            limit=limit,
            totals=report_totals,
            failure_rates=failure_rates_of(
                report_totals, final_outcomes_in(connection, window, handler)
            ),
            durations=finished.durations,
            slowest_runs=slowest_runs_in(connection, window, handler, limit),
            recent_failures=recent_failures_in(connection, window, handler, limit),
            dead_letters=dead_letters_in(connection, window, handler, limit),
            runners=runners_in(connection, window, now, limit),
            due_work=due_work_in(connection, now, handler),
            possibly_lost=possibly_lost_in(connection, now, lost_after, handler, limit),
        )


def _json_safe(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            item.name: _json_safe(getattr(value, item.name)) for item in dataclasses.fields(value)
        }
    if isinstance(value, tuple | list):
        return [_json_safe(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def report_as_dict(report: Report) -> dict[str, Any]:
    """The report as JSON-safe data: dataclasses become objects (keyed by field name), tuples
    lists, times ISO 8601 strings with their offset, statuses and roles their values."""
    result: dict[str, Any] = _json_safe(report)
    return result
