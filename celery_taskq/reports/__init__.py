"""Reports: read-only roll-ups of the three tables, as frozen values.

One package serves the command line (``celery-taskq report``), dashboards, an HTTP API and
metrics exporters alike: every function takes a
:class:`~celery_taskq.core.storage.database.Database`, reads in one read-only transaction with
SQLAlchemy ``select()`` expressions, and returns frozen dataclasses (no ORM object escapes).
Times are timezone-aware UTC datetimes; durations and ages are seconds as ``float``.

**The window.** A :class:`ReportWindow` is half-open, ``since <= t < until``; a missing bound
is open. What ``t`` is:

* a task: ``TaskQueue.QueuedOn`` (when it was queued);
* a run: the time it reached its current status: ``FinishedOn`` for a finished run
  (``success``, ``error``, ``timeout``), ``StartedOn`` for a ``running`` one, and its task's
  ``ScheduledOn`` (when it became due) for a ``scheduled`` one. Every run is so counted in
  exactly one window, and the finished runs of a window are the same set for the totals, the
  failure rates, the durations, the slowest runs and the recent failures;
* a dead letter: ``FinishedOn`` of its last run (when it ran out of retries);
* a runner: its lifetime, ``StartedOn`` to ``FinishedOn`` (still running: open), overlaps the
  window.

Due work and possibly lost native tasks are a picture of *now* (the ``now`` passed in) and
ignore the window.

**The handler filter** is an exact ``TaskHandlerClass``; it narrows every section except the
runners (a runner runs any handler).

**Indexes.** Filters are plain comparisons on columns (never a function of a column), and
the open/scheduled/running predicates are the SQL fragments of :mod:`celery_taskq.core.models`
that the partial indexes are declared with, so SQLite and PostgreSQL use those indexes: due
work (``ix_TaskRuns_scheduled``, ``ix_TaskRuns_running_by_runner``, ``ix_TaskQueue_due``),
the "no open run" test of dead letters (``uq_TaskRuns_one_open_run_per_task``) and a task's
last run (``ix_TaskRuns_TaskQueueId_Id``). The window columns ``QueuedOn`` and ``FinishedOn``
are indexed, so a windowed section reads the window's rows, not the table: the finished runs
of a window are read once for the totals and the durations together, and each run's handler is
looked up by primary key (see :func:`~celery_taskq.reports.sql.of_run_task`).

**Durations** are ``FinishedOn - StartedOn`` of finished runs that started (a run cancelled
before it started has none). Percentiles are continuous (linear interpolation between the
closest ranks, SQL's ``percentile_cont``): computed by PostgreSQL in the database, and on
SQLite in Python from the exact durations, with the same formula.

**The modules.** One per section — :mod:`~celery_taskq.reports.counts` (totals and failure
rates), :mod:`~celery_taskq.reports.durations`, :mod:`~celery_taskq.reports.failures`,
:mod:`~celery_taskq.reports.dead_letter`, :mod:`~celery_taskq.reports.runner_report`,
:mod:`~celery_taskq.reports.due`, :mod:`~celery_taskq.reports.lost` and
:mod:`~celery_taskq.reports.series` — and
:mod:`~celery_taskq.reports.report` for all of them at once, over the shared
:mod:`~celery_taskq.reports.window` and :mod:`~celery_taskq.reports.sql`.
:mod:`~celery_taskq.reports.text` renders a report; :mod:`~celery_taskq.reports.limits`,
:mod:`~celery_taskq.reports.redact`, :mod:`~celery_taskq.reports.shown` and
:mod:`~celery_taskq.reports.terminal` shape what the command line and the dashboard show of
tasks. The public names of the sections are available here and load on first use. The reports
read the core only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_taskq.reports.counts import (
        FailureRate,
        FailureRates,
        FinalOutcomes,
        HandlerTotals,
        RunCounts,
        TaskCounts,
        Totals,
        failure_rates,
        totals,
    )
    from celery_taskq.reports.dead_letter import DeadLetter, dead_letters
    from celery_taskq.reports.due import DueWork, due_work
    from celery_taskq.reports.durations import (
        PERCENTILES,
        DurationHistogram,
        DurationStats,
        SlowRun,
        duration_histograms,
        duration_stats,
        percentile_cont,
        slowest_runs,
    )
    from celery_taskq.reports.failures import FailedRun, recent_failures
    from celery_taskq.reports.limits import DEFAULT_LIMIT, MAX_LIMIT
    from celery_taskq.reports.lost import LostTask, PossiblyLost, possibly_lost
    from celery_taskq.reports.report import Report, build_report, report_as_dict
    from celery_taskq.reports.runner_report import RunnerCount, RunnerReport, runner_counts, runners
    from celery_taskq.reports.series import MAX_BUCKETS, RunBucket, RunSeries, runs_over_time
    from celery_taskq.reports.window import ReportWindow, parse_moment, resolve_moment, utc_now

_EXPORTS = {
    "DEFAULT_LIMIT": "limits",
    "MAX_LIMIT": "limits",
    "ReportWindow": "window",
    "parse_moment": "window",
    "resolve_moment": "window",
    "utc_now": "window",
    "FailureRate": "counts",
    "FailureRates": "counts",
    "FinalOutcomes": "counts",
    "HandlerTotals": "counts",
    "RunCounts": "counts",
    "TaskCounts": "counts",
    "Totals": "counts",
    "failure_rates": "counts",
    "totals": "counts",
    "PERCENTILES": "durations",
    "DurationHistogram": "durations",
    "DurationStats": "durations",
    "SlowRun": "durations",
    "duration_histograms": "durations",
    "duration_stats": "durations",
    "percentile_cont": "durations",
    "slowest_runs": "durations",
    "FailedRun": "failures",
    "recent_failures": "failures",
    "DeadLetter": "dead_letter",
    "dead_letters": "dead_letter",
    "RunnerCount": "runner_report",
    "RunnerReport": "runner_report",
    "runner_counts": "runner_report",
    "runners": "runner_report",
    "DueWork": "due",
    "due_work": "due",
    "MAX_BUCKETS": "series",
    "RunBucket": "series",
    "RunSeries": "series",
    "runs_over_time": "series",
    "LostTask": "lost",
    "PossiblyLost": "lost",
    "possibly_lost": "lost",
    "Report": "report",
    "build_report": "report",
    "report_as_dict": "report",
}
"""Each public name and the module of this package that defines it."""

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_BUCKETS",
    "MAX_LIMIT",
    "PERCENTILES",
    "DeadLetter",
    "DueWork",
    "DurationHistogram",
    "DurationStats",
    "FailedRun",
    "FailureRate",
    "FailureRates",
    "FinalOutcomes",
    "HandlerTotals",
    "LostTask",
    "PossiblyLost",
    "Report",
    "ReportWindow",
    "RunBucket",
    "RunCounts",
    "RunSeries",
    "RunnerCount",
    "RunnerReport",
    "SlowRun",
    "TaskCounts",
    "Totals",
    "build_report",
    "dead_letters",
    "due_work",
    "duration_histograms",
    "duration_stats",
    "failure_rates",
    "parse_moment",
    "percentile_cont",
    "possibly_lost",
    "recent_failures",
    "report_as_dict",
    "resolve_moment",
    "runner_counts",
    "runners",
    "runs_over_time",
    "slowest_runs",
    "totals",
    "utc_now",
]


def __getattr__(name: str) -> Any:
    # Sections load on first use: runners import the CLI, which uses only the small modules
    # of this package (limits, redact, shown, terminal), and never pay for the sections.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
