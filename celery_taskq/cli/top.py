"""``celery-taskq top``: a live summary of the queue, like ``celery events`` or ``rq info
--interval``: due work per queue, running runs, recent failures and live runners.

On a terminal each frame redraws the screen in place; otherwise (a pipe, a file) frames are
printed one after another, separated by an empty line. ``--once`` prints one frame and exits.
Ctrl-C ends it with exit 0. The figures come from :mod:`celery_taskq.reports.top`, imported
when the command runs (the reports stay out of runners' memory).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING

import click

from celery_taskq.cli.errors import one_line
from celery_taskq.cli.invocation import CliContext, pass_context
from celery_taskq.cli.params import SecondsParamType
from celery_taskq.reports.limits import MAX_LIMIT
from celery_taskq.reports.terminal import escape_controls

if TYPE_CHECKING:
    from celery_taskq.reports.top import TopFrame

CLEAR_SCREEN = "\x1b[H\x1b[2J"
"""Cursor home, then erase the screen: how a frame redraws a terminal in place."""

MESSAGE_CHARS = 60
"""Characters of an error message shown in the failures table."""


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def _cell(value: object) -> str:
    return escape_controls(one_line(str(value)))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return ["  (none)"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  "
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def render_frame(frame: TopFrame, interval: float | None) -> str:
    """One frame as text; ``interval`` is named in its first line (``None``: one frame)."""
    due = frame.due
    every = "one frame" if interval is None else f"every {interval:g} s, Ctrl-C quits"
    ticks = ", ".join(
        f"{event} {_seconds(age)} s ago" for event, age in sorted(frame.beat_tick_ages.items())
    )
    lines = [
        f"celery-taskq top  {_time(frame.now)}  ({every})",
        f"beat ticks: {ticks or 'none recorded'}",
        f"due runs: {due.due_scheduled_runs} (oldest waited {_seconds(due.oldest_due_age)} s)"
        f"; later: {due.future_scheduled_runs}; running: {due.running_runs}"
        f"; due tasks without a run: {due.due_tasks_without_run}",
        "",
        "due work per queue",
        *_table(
            ("QUEUE", "DUE", "OLDEST_DUE_AGE"),
            [
                (_cell(item.queue), str(item.due_runs), _seconds(item.oldest_due_age))
                for item in frame.backlog
            ],
        ),
        "",
        f"running runs ({due.running_runs})",
        *_table(
            ("RUN", "TASK", "HANDLER", "QUEUE", "PROGRESS", "RUNNER", "SECONDS"),
            [
                (
                    str(run.run_id),
                    str(run.task_id),
                    _cell(run.handler),
                    _cell(run.queue),
                    f"{run.percents_completed}%",
                    "-" if run.task_runner_id is None else str(run.task_runner_id),
                    _seconds(run.age),
                )
                for run in frame.running
            ],
        ),
        "",
        f"failures since {_time(frame.failures_since)}",
        *_table(
            ("RUN", "TASK", "HANDLER", "STATUS", "FINISHED", "CODE", "MESSAGE"),
            [
                (
                    str(failed.run_id),
                    str(failed.task_id),
                    _cell(failed.handler),
                    failed.status.value,
                    _time(failed.finished_on),
                    _cell(failed.error_code or "-"),
                    _cell((failed.error_message or "")[:MESSAGE_CHARS]),
                )
                for failed in frame.failures
            ],
        ),
        "",
        "runners",
        *_table(
            ("ID", "ROLE", "HOST", "PID", "STATUS", "HEARTBEAT_AGE", "RUNS"),
            [
                (
                    str(runner.runner_id),
                    runner.role.value,
                    _cell(runner.hostname),
                    str(runner.process_id),
                    runner.status.value,
                    _seconds(runner.heartbeat_age),
                    str(runner.runs),
                )
                for runner in frame.runners
            ],
        ),
    ]
    return "\n".join(lines)


@click.command()
@click.option(
    "--interval",
    type=SecondsParamType(0.1),
    default=2.0,
    show_default=True,
    help="Seconds between frames.",
)
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts).")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIMIT),
    default=10,
    show_default=True,
    help="Rows of running runs, failures and runners.",
)
@pass_context
def top(context: CliContext, interval: float, once: bool, limit: int) -> None:
    """A live summary: due work per queue, running runs, failures of the last hour, runners.

    On a terminal the screen is redrawn in place; otherwise frames follow one another. Ctrl-C
    quits (exit 0).
    """
    from celery_taskq.reports.top import top_frame  # only for `top`: out of runners' memory

    database = context.service.database
    if once:
        click.echo(render_frame(top_frame(database, limit=limit), None))
        return
    redraw = sys.stdout.isatty()
    with _ctrl_c_ends_between_frames() as ctrl_c:
        while not ctrl_c.pressed:
            text = render_frame(top_frame(database, limit=limit), interval)
            click.echo((CLEAR_SCREEN + text) if redraw else text + "\n")
            ctrl_c.sleep(interval)
    if redraw:
        click.echo("")


class _CtrlC:
    """Whether Ctrl-C was pressed; set by the SIGINT handler, read between frames."""

    SLICE = 0.05
    """Longest sleep between two looks at :attr:`pressed`."""

    def __init__(self) -> None:
        self.pressed = False

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or until Ctrl-C is pressed."""
        deadline = time.monotonic() + seconds
        while not self.pressed and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, self.SLICE))


@contextlib.contextmanager
def _ctrl_c_ends_between_frames() -> Iterator[_CtrlC]:
    """Ctrl-C ends the loop once the frame being read is finished: an interrupt in the middle
    of a database call could leave its connection pool locked, and the exit waiting on it. A
    second Ctrl-C interrupts at once."""
    ctrl_c = _CtrlC()

    def on_ctrl_c(_signum: int, _frame: FrameType | None) -> None:
        if ctrl_c.pressed:
            raise KeyboardInterrupt
        ctrl_c.pressed = True

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield ctrl_c
    finally:
        signal.signal(signal.SIGINT, previous)
