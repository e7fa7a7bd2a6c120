"""The task commands: ``enqueue``, ``show``, ``list``, ``cancel``, ``retry`` and ``resend``
(``watch`` is :mod:`~celery_taskq.cli.watch`)."""

from __future__ import annotations

import getpass
from datetime import datetime, timedelta
from typing import Any

import click

from celery_taskq.cli.invocation import CliContext, pass_context
from celery_taskq.cli.params import DUE, SINCE, TASK_ID, JsonParamType
from celery_taskq.cli.task_text import (
    Links,
    render_page,
    render_page_json,
    render_task,
    render_task_json,
)
from celery_taskq.core.listing import (
    MAX_PAGE_SIZE,
    STATUS_FILTERS,
    TaskFilter,
    TaskPage,
    parse_status,
    related_tasks,
)
from celery_taskq.reports.last_runs import last_runs
from celery_taskq.reports.redact import redacted_page, redacted_task
from celery_taskq.reports.search import TaskQuery, find_tasks
from celery_taskq.reports.shown import shown_page, shown_relations, shown_task
from celery_taskq.reports.window import utc_now


@click.command()
@click.argument("handler")
@click.argument("data", required=False, type=JsonParamType())
@click.option(
    "--at",
    "scheduled_on",
    type=DUE,
    help="When the task is due: ISO 8601 with an offset, or a duration from now "
    "(30m, 2h, 1d) [default: now].",
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
    scheduled_on: datetime | timedelta | None,
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
        scheduled_on=DUE.resolve(scheduled_on, utc_now()),
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
    """Print a task, its Celery task id and relations (native tasks), its dashboard and Flower
    links (TASKQ_DASHBOARD_URL, TASKQ_FLOWER_URL) and every one of its runs."""
    snapshot = context.service.get_task(task_id)
    relations = shown_relations(related_tasks(context.service.database, snapshot))
    shown = shown_task(redacted_task(snapshot, context.settings.redact_patterns))
    links = Links(context.settings.dashboard_url, context.settings.flower_url)
    render = render_task_json if as_json else render_task
    click.echo(render(shown, relations, links))


@click.command("list")
@click.option(
    "--status",
    type=click.Choice(STATUS_FILTERS),
    help="Last status, or cancelled (a cancel was asked) or never-run (no run has started).",
)
@click.option("--handler", help="Exact TaskHandlerClass.")
@click.option("--queued-by", help="QueuedById.")
@click.option(
    "--since",
    type=SINCE,
    help="Queued at or after: ISO 8601 with an offset, or a duration back from now (24h, 7d).",
)
@click.option("--until", type=SINCE, help="Queued before; same forms.")
@click.option("--celery-root", help="A Celery workflow: tasks whose CeleryRootId is this.")
@click.option("--celery-group", help="A Celery group's members: tasks whose CeleryGroupId is this.")
@click.option(
    "--search",
    help="Free text in the title, handler, queued-by, Celery task id or data (case-insensitive).",
)
@click.option("--limit", type=click.IntRange(1, MAX_PAGE_SIZE), default=50, show_default=True)
@click.option("--before", "before_id", type=TASK_ID, help="Page cursor: tasks older than this id.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@pass_context
def list_command(
    context: CliContext,
    status: str | None,
    handler: str | None,
    queued_by: str | None,
    since: datetime | timedelta | None,
    until: datetime | timedelta | None,
    celery_root: str | None,
    celery_group: str | None,
    search: str | None,
    limit: int,
    before_id: int | None,
    as_json: bool,
) -> None:
    """List tasks, newest first."""
    now = utc_now()
    task_filter = TaskFilter(
        status=parse_status(status),
        handler=handler,
        queued_by=queued_by,
        queued_since=SINCE.resolve(since, now),
        queued_until=SINCE.resolve(until, now),
        celery_root_id=celery_root,
        celery_group_id=celery_group,
    )
    query = TaskQuery(task_filter, search=search, limit=limit, before_id=before_id)
    found = find_tasks(context.service.database, query)
    if found.window_size is not None:
        click.echo(
            f"note: the search looked at the newest {found.window_size:,} tasks only", err=True
        )
    page = TaskPage(found.tasks, found.next_before_id)
    last = last_runs(context.service.database, (task.id for task in page.tasks))
    page = shown_page(redacted_page(page, context.settings.redact_patterns))
    render = render_page_json if as_json else render_page
    click.echo(render(page, last, utc_now()))


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
