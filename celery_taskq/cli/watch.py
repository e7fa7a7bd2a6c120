"""``celery-taskq watch``: a live progress bar of a task's runs, followed through its retries
until the task is finished; the exit code says how it ended.

Exit codes: ``0`` success; ``1`` failed for good (its last run ended ``error`` and no retry is
left); ``3`` the same with ``timeout``; ``4`` cancelled; ``5`` ``--timeout`` passed while the
task could still run. A usage error is ``2``, as everywhere.
"""

from __future__ import annotations

import enum
import time

import click

from celery_taskq.cli.errors import error_line
from celery_taskq.cli.invocation import CliContext, pass_context
from celery_taskq.cli.params import TASK_ID, SecondsParamType
from celery_taskq.cli.task_text import progress_bar
from celery_taskq.core.models import FAILED_RUN_STATUSES, OPEN_RUN_STATUSES, RunStatus
from celery_taskq.core.snapshots import RunSnapshot, TaskSnapshot
from celery_taskq.reports.terminal import escape_controls

POLL_SECONDS = 0.25
"""How often the task is read while it waits for a run (a retry's or its first)."""


class Ending(enum.IntEnum):
    """How a watched task ended, as ``watch``'s exit code."""

    SUCCESS = 0
    ERROR = 1
    TIMEOUT = 3
    CANCELLED = 4
    UNFINISHED = 5
    """``--timeout`` passed first: the task may still run."""


def ending_of(task: TaskSnapshot) -> Ending | None:
    """How ``task`` ended, or ``None`` while a run is open, due or still to come (a retry)."""
    if task.runs and task.runs[-1].status in OPEN_RUN_STATUSES:
        return None
    if task.last_status is RunStatus.SUCCESS:
        return Ending.SUCCESS
    if task.cancel_requested_on is not None:
        return Ending.CANCELLED
    if task.last_status in FAILED_RUN_STATUSES and task.task_runs_failed >= task.max_retries:
        return Ending.TIMEOUT if task.last_status is RunStatus.TIMEOUT else Ending.ERROR
    return None


def _run_end(run: RunSnapshot) -> str:
    text = f"run {run.id} ended {run.status.value}"
    if run.error_code or run.error_message:
        text += f": [{run.error_code or '-'}] {run.error_message or ''}"
    return text


def _waiting(task: TaskSnapshot) -> str:
    if not task.runs:
        return f"task {task.id}: waiting for its first run"
    return (
        f"task {task.id}: {_run_end(task.runs[-1])}; waiting for its retry "
        f"(failed runs {task.task_runs_failed}/{task.max_retries})"
    )


@click.command()
@click.argument("task_id", type=TASK_ID)
@click.option("--timeout", type=SecondsParamType(), help="Give up after S seconds (exit 5).")
@pass_context
def watch(context: CliContext, task_id: int, timeout: float | None) -> None:
    """Show a live progress bar of a task's runs until the task is finished.

    A failed run with retries left is followed by its retry, a resumable task from run to run.
    Exit 0 on success, 1 when it failed for good (error), 3 (timeout), 4 when cancelled, 5 when
    --timeout passed first.
    """
    service = context.service
    deadline = None if timeout is None else time.monotonic() + timeout
    said = ""
    shown_run = 0
    while (ending := ending_of(task := service.get_task(task_id))) is None:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            ending = Ending.UNFINISHED
            break
        if task.runs and task.runs[-1].status in OPEN_RUN_STATUSES:
            shown_run = task.runs[-1].id
            for run in service.watch_run(shown_run, timeout=remaining):
                click.echo("\r" + progress_bar(run), nl=False)
            click.echo("")
            said = ""
            continue
        if (waiting := _waiting(task)) != said:
            click.echo(escape_controls(waiting))
            said = waiting
        time.sleep(POLL_SECONDS if remaining is None else min(POLL_SECONDS, remaining))
    if task.runs and task.runs[-1].id != shown_run and ending is not Ending.UNFINISHED:
        click.echo(progress_bar(task.runs[-1]))  # it ran between two reads
    _report(task, ending)


def _report(task: TaskSnapshot, ending: Ending) -> None:
    """Say how the task ended unless it succeeded, and exit with its code."""
    last = f"{_run_end(task.runs[-1])}; " if task.runs else ""
    if ending is Ending.CANCELLED:
        click.echo(error_line(f"{last}task {task.id} was cancelled"), err=True)
    elif ending is Ending.UNFINISHED:
        state = task.runs[-1].status.value if task.runs else "not run yet"
        click.echo(
            error_line(f"task {task.id} is not finished ({state}): --timeout passed"), err=True
        )
    elif ending is not Ending.SUCCESS:
        click.echo(
            error_line(
                f"{last}task {task.id} failed for good "
                f"(failed runs {task.task_runs_failed}/{task.max_retries})"
            ),
            err=True,
        )
    raise click.exceptions.Exit(int(ending))
