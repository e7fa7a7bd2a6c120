"""The task commands: ``enqueue``, ``show``, ``list``, ``watch``, ``cancel``, ``retry`` and
``resend``."""

from __future__ import annotations

import getpass
import time
from datetime import datetime
from typing import Any

import click

from celery_taskq.cli.invocation import CliContext, pass_context
from celery_taskq.cli.params import TASK_ID, AwareDateTimeParamType, JsonParamType, SecondsParamType
from celery_taskq.cli.task_text import (
    progress_bar,
    render_page,
    render_page_json,
    render_task,
    render_task_json,
)
from celery_taskq.core.listing import (
    MAX_PAGE_SIZE,
    TaskFilter,
    list_tasks,
    parse_status,
    related_tasks,
)
from celery_taskq.core.models import OPEN_RUN_STATUSES, RunStatus
from celery_taskq.reports.redact import redacted_page, redacted_task
from celery_taskq.reports.shown import shown_page, shown_relations, shown_task


@click.command()
@click.argument("handler")
@click.argument("data", required=False, type=JsonParamType())
@click.option(
    "--at",
    "scheduled_on",
    type=AwareDateTimeParamType(),
    help="When the task is due (default: now).",
)
@click.option("--max-retries", type=int, help="Failed runs before giving up [default: 5].")
@click.option("--queued-by", help="Who queued the task (QueuedById).")
@click.option("--title", help="A human-readable title.")
@click.option(
    "--unique-key",
    help="While a task with this key is unfinished, print its id instead of queuing another.",
)
@click.option(
    "--queue",
    help="The named queue its runs go to, served by `runner --queues` [default: default].",
)
@click.option(
    "--priority",
    type=int,
    help="Higher priorities are claimed first, then FIFO (-1000 to 1000) [default: 0].",
)
@pass_context
def enqueue(
    context: CliContext,
    handler: str,
    data: Any,
    scheduled_on: datetime | None,
    max_retries: int | None,
    queued_by: str | None,
    title: str | None,
    unique_key: str | None,
    queue: str | None,
    priority: int | None,
) -> None:
    """Queue a task for HANDLER (a registered name or dotted path) with DATA (JSON); print the
    task id. A task due now gets its first run at once, ready for the next runner."""
    task_id = context.service.add_task(
        handler,
        data,
        scheduled_on=scheduled_on,
        max_retries=max_retries,
        queued_by=queued_by,
        title=title,
        unique_key=unique_key,
        queue=queue,
        priority=priority,
        create_run=True,
    )
    click.echo(task_id)


@click.command()
@click.argument("task_id", type=TASK_ID)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@pass_context
def show(context: CliContext, task_id: int, as_json: bool) -> None:
    """Print a task, its Celery relations (native tasks) and every one of its runs."""
    snapshot = context.service.get_task(task_id)
    relations = shown_relations(related_tasks(context.service.database, snapshot))
    shown = shown_task(redacted_task(snapshot, context.settings.redact_patterns))
    click.echo(render_task_json(shown, relations) if as_json else render_task(shown, relations))


@click.command("list")
@click.option(
    "--status", type=click.Choice([status.value for status in RunStatus]), help="Last status."
)
@click.option("--handler", help="Exact TaskHandlerClass.")
@click.option("--queued-by", help="QueuedById.")
@click.option("--since", type=AwareDateTimeParamType(), help="Queued at or after (ISO 8601).")
@click.option("--until", type=AwareDateTimeParamType(), help="Queued before (ISO 8601).")
@click.option("--celery-root", help="A Celery workflow: tasks whose CeleryRootId is this.")
@click.option("--celery-group", help="A Celery group's members: tasks whose CeleryGroupId is this.")
@click.option("--limit", type=click.IntRange(1, MAX_PAGE_SIZE), default=50, show_default=True)
@click.option("--before", "before_id", type=TASK_ID, help="Page cursor: tasks older than this id.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@pass_context
def list_command(
    context: CliContext,
    status: str | None,
    handler: str | None,
    queued_by: str | None,
    since: datetime | None,
    until: datetime | None,
    celery_root: str | None,
    celery_group: str | None,
    limit: int,
    before_id: int | None,
    as_json: bool,
) -> None:
    """List tasks, newest first."""
    task_filter = TaskFilter(
        status=parse_status(status),
        handler=handler,
        queued_by=queued_by,
        queued_since=since,
        queued_until=until,
        celery_root_id=celery_root,
        celery_group_id=celery_group,
    )
    page = list_tasks(context.service.database, task_filter, limit=limit, before_id=before_id)
    page = shown_page(redacted_page(page, context.settings.redact_patterns))
    click.echo(render_page_json(page) if as_json else render_page(page))


@click.command()
@click.argument("task_id", type=TASK_ID)
@click.option("--timeout", type=SecondsParamType(), help="Give up after S seconds.")
@pass_context
def watch(context: CliContext, task_id: int, timeout: float | None) -> None:
    """Show a live progress bar of a task's current run until it ends (exit 1 unless success).

    A resumable task's next run, or a retry already scheduled, is followed in turn.
    """
    service = context.service
    deadline = None if timeout is None else time.monotonic() + timeout
    while not (runs := service.get_task(task_id).runs):
        if deadline is not None and time.monotonic() >= deadline:
            raise click.ClickException(f"task {task_id} has no run yet")
        time.sleep(0.25)
    last = runs[-1]
    while True:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        watched = last.id
        for last in service.watch_run(watched, timeout=remaining):
            click.echo("\r" + progress_bar(last), nl=False)
        following = service.get_task(task_id).runs[-1]
        if following.id == last.id or following.status not in OPEN_RUN_STATUSES:
            break
        click.echo("")
        last = following
    click.echo("")
    if last.status is not RunStatus.SUCCESS:
        message = (
            f"run {last.id} ended {last.status.value}"
            if last.status not in (RunStatus.SCHEDULED, RunStatus.RUNNING)
            else f"run {last.id} is still {last.status.value}"
        )
        if last.error_code or last.error_message:
            message += f": [{last.error_code or '-'}] {last.error_message or ''}"
        raise click.ClickException(message)


@click.command()
@click.argument("task_id", type=TASK_ID)
@pass_context
def cancel(context: CliContext, task_id: int) -> None:
    """Cancel a task: a queued one never runs; a running one is asked to stop."""
    still_running = context.service.cancel_task(task_id)
    click.echo(
        f"task {task_id} cancelled"
        + ("; its running run is asked to stop" if still_running else "")
    )


@click.command()
@click.argument("task_id", type=TASK_ID)
@pass_context
def retry(context: CliContext, task_id: int) -> None:
    """Give a finished task one more run now, even past its retries; print the run id."""
    click.echo(context.service.retry_task(task_id))


@click.command()
@click.argument("task_id", type=TASK_ID)
@click.option(
    "--queued-by",
    help="Who asks: the re-send's QueuedById [default: cli:<your login name>].",
)
@pass_context
def resend(context: CliContext, task_id: int, queued_by: str | None) -> None:
    """Publish a native Celery task again with its stored name, args and kwargs, as a new task
    linked to it (ResentFromId); print the new task id.

    Only a task that failed for good (no retry left) or is possibly lost (never started,
    TASKQ_NATIVE_LOST_AFTER seconds past due) is re-sent. The message goes through the Celery
    app given with --app (TASKQ_APP), routed as the app routes that task.
    """
    from celery_taskq.celery.resend import resend_task  # Celery only for this command

    resent = resend_task(
        context.service, context.celery_app, task_id, queued_by=queued_by or _login_name()
    )
    click.echo(resent.task_id)


def _login_name() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in this environment
        return "cli"
