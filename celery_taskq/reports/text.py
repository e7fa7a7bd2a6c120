"""Rendering of a :class:`~celery_taskq.reports.Report`: aligned text, JSON and CSV.

Text and CSV share one list of sections (a title, a header and rows): the text tables round
numbers and cut long messages for the eye, the CSV keeps raw values (seconds and ratios as
Python floats, times ISO 8601, messages whole). CSV is one table per section, each preceded
by a ``# <section>`` line (the section names are the keys of the JSON document) and followed
by an empty line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from celery_taskq.reports.counts import RunCounts, TaskCounts
from celery_taskq.reports.report import Report, report_as_dict
from celery_taskq.reports.terminal import escape_controls

MESSAGE_WIDTH = 60
"""Characters of an error message shown in a text table (the CSV and JSON keep it whole)."""

ALL_HANDLERS = "(all)"
"""The handler column of a row summing every handler."""


@dataclass(frozen=True)
class Section:
    """One table of a report."""

    name: str
    """Key of the section in the JSON document, and the ``# name`` line of the CSV."""
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class _Format:
    time: Callable[[datetime | None], str]
    seconds: Callable[[float | None], str]
    ratio: Callable[[float | None], str]
    message: Callable[[str | None], str]


def _text_message(message: str | None) -> str:
    if not message:
        return "-"
    line = message.strip().splitlines()[0] if message.strip() else "-"
    return line if len(line) <= MESSAGE_WIDTH else line[: MESSAGE_WIDTH - 1] + "…"


_TEXT = _Format(
    time=lambda value: "-" if value is None else value.isoformat(timespec="seconds"),
    seconds=lambda value: "-" if value is None else f"{value:.3f}",
    ratio=lambda value: "-" if value is None else f"{value * 100:.1f}%",
    message=_text_message,
)
_RAW = _Format(
    time=lambda value: "" if value is None else value.isoformat(),
    seconds=lambda value: "" if value is None else repr(value),
    ratio=lambda value: "" if value is None else repr(value),
    message=lambda value: value or "",
)

_STATUSES = ("scheduled", "running", "success", "error", "timeout")


def _count_row(
    handler: str, kind: str, counts: TaskCounts | RunCounts, empty: str
) -> tuple[str, ...]:
    never_run = str(counts.never_run) if isinstance(counts, TaskCounts) else empty
    return (
        handler,
        kind,
        str(counts.total),
        never_run,
        *(str(getattr(counts, status)) for status in _STATUSES),
    )


def sections(report: Report, *, raw: bool = False) -> list[Section]:
    """The report's tables in order; ``raw`` keeps values unrounded (for CSV)."""
    fmt = _RAW if raw else _TEXT
    empty = "" if raw else "-"
    totals = report.totals
    count_rows = [
        _count_row(ALL_HANDLERS, "tasks", totals.tasks, empty),
        _count_row(ALL_HANDLERS, "runs", totals.runs, empty),
    ]
    for row in totals.by_handler:
        count_rows += [
            _count_row(row.handler, "tasks", row.tasks, empty),
            _count_row(row.handler, "runs", row.runs, empty),
        ]
    rates = report.failure_rates
    due = report.due_work
    lost = report.possibly_lost
    return [
        Section(
            "totals",
            "totals (tasks by last status, runs by status)",
            ("HANDLER", "OF", "TOTAL", "NEVER_RUN", *(status.upper() for status in _STATUSES)),
            tuple(count_rows),
        ),
        Section(
            "failure_rates",
            "failure rates (per task: final outcome failed; per attempt: error + timeout "
            "over finished runs)",
            (
                "HANDLER",
                "TASKS",
                "FAILED_TASKS",
                "PER_TASK",
                "ATTEMPTS",
                "FAILED_ATTEMPTS",
                "PER_ATTEMPT",
            ),
            tuple(
                (
                    rate.handler or ALL_HANDLERS,
                    str(rate.tasks),
                    str(rate.failed_tasks),
                    fmt.ratio(rate.task_failure_rate),
                    str(rate.attempts),
                    str(rate.failed_attempts),
                    fmt.ratio(rate.attempt_failure_rate),
                )
                for rate in (rates.overall, *rates.by_handler)
            ),
        ),
        Section(
            "durations",
            "durations of finished runs (seconds)",
            ("HANDLER", "RUNS", "P50", "P90", "P99", "MAX"),
            tuple(
                (
                    stats.handler,
                    str(stats.runs),
                    fmt.seconds(stats.p50),
                    fmt.seconds(stats.p90),
                    fmt.seconds(stats.p99),
                    fmt.seconds(stats.max),
                )
                for stats in report.durations
            ),
        ),
        Section(
            "slowest_runs",
            "slowest runs",
            ("RUN", "TASK", "HANDLER", "STATUS", "SECONDS", "STARTED", "FINISHED"),
            tuple(
                (
                    str(run.run_id),
                    str(run.task_id),
                    run.handler,
                    run.status.value,
                    fmt.seconds(run.duration),
                    fmt.time(run.started_on),
                    fmt.time(run.finished_on),
                )
                for run in report.slowest_runs
            ),
        ),
        Section(
            "recent_failures",
            "recent failures",
            ("RUN", "TASK", "HANDLER", "STATUS", "FINISHED", "CODE", "MESSAGE"),
            tuple(
                (
                    str(run.run_id),
                    str(run.task_id),
                    run.handler,
                    run.status.value,
                    fmt.time(run.finished_on),
                    run.error_code or empty,
                    fmt.message(run.error_message),
                )
                for run in report.recent_failures
            ),
        ),
        Section(
            "dead_letters",
            "dead letters (out of retries, no open run)",
            ("TASK", "HANDLER", "STATUS", "FAILED", "LAST_RUN", "FINISHED", "CODE", "MESSAGE"),
            tuple(
                (
                    str(task.task_id),
                    task.handler,
                    task.last_status.value,
                    f"{task.task_runs_failed}/{task.max_retries}",
                    str(task.last_run_id),
                    fmt.time(task.last_finished_on),
                    task.error_code or empty,
                    fmt.message(task.error_message),
                )
                for task in report.dead_letters
            ),
        ),
        Section(
            "runners",
            "runners",
            ("ID", "ROLE", "HOST", "PID", "STATUS", "STARTED", "HEARTBEAT_AGE", "RUNS"),
            tuple(
                (
                    str(runner.runner_id),
                    runner.role.value,
                    runner.hostname,
                    str(runner.process_id),
                    runner.status.value,
                    fmt.time(runner.started_on),
                    fmt.seconds(runner.heartbeat_age),
                    str(runner.runs),
                )
                for runner in report.runners
            ),
        ),
        Section(
            "due_work",
            "due work (now)",
            ("DUE_SCHEDULED", "FUTURE_SCHEDULED", "RUNNING", "OLDEST_DUE_AGE", "DUE_WITHOUT_RUN"),
            (
                (
                    str(due.due_scheduled_runs),
                    str(due.future_scheduled_runs),
                    str(due.running_runs),
                    fmt.seconds(due.oldest_due_age),
                    str(due.due_tasks_without_run),
                ),
            ),
        ),
        Section(
            "possibly_lost",
            f"possibly lost (native tasks never started {lost.lost_after:g} s past due, now): "
            f"{lost.count}",
            ("TASK", "HANDLER", "CELERY_TASK_ID", "SCHEDULED", "AGE"),
            tuple(
                (
                    str(task.task_id),
                    task.handler,
                    task.celery_task_id or empty,
                    fmt.time(task.scheduled_on),
                    fmt.seconds(task.age),
                )
                for task in lost.tasks
            ),
        ),
    ]


def _aligned(header: tuple[str, ...], rows: tuple[tuple[str, ...], ...]) -> list[str]:
    rows = tuple(tuple(escape_controls(cell) for cell in row) for row in rows)
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def render_report(report: Report) -> str:
    """The report as plain-text sections of aligned tables."""
    window = report.window
    lines = [
        f"report  since {_TEXT.time(window.since)}  until {_TEXT.time(window.until)}  "
        f"now {_TEXT.time(report.now)}  "
        f"handler {escape_controls(report.handler or ALL_HANDLERS)}"
    ]
    for section in sections(report):
        lines += ["", section.title, *_aligned(section.header, section.rows)]
        if not section.rows:
            lines.append("(none)")
    return "\n".join(lines)


def render_report_json(report: Report) -> str:
    """The report as one JSON document (:func:`~celery_taskq.reports.report_as_dict`)."""
    return json.dumps(report_as_dict(report), sort_keys=True, indent=2)


def render_report_csv(report: Report) -> str:
    """The report as CSV: per section a ``# name`` line, the header, the rows, an empty line.

    Control characters in stored text are shown escaped, as in the text tables; line feeds
    and tabs stay (CSV quotes them). The JSON document keeps every value exact."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for section in sections(report, raw=True):
        buffer.write(f"# {section.name}\n")
        writer.writerow(section.header)
        writer.writerows(
            tuple(escape_controls(cell, multiline=True) for cell in row) for row in section.rows
        )
        buffer.write("\n")
    return buffer.getvalue()
