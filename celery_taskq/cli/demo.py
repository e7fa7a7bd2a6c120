"""``celery-taskq demo``: the tables created, sample tasks queued and worked, their record shown."""

from __future__ import annotations

import time

import click

from celery_taskq.cli.invocation import CliContext, pass_context
from celery_taskq.cli.params import SecondsParamType
from celery_taskq.cli.task_text import render_task
from celery_taskq.core.models import FAILED_RUN_STATUSES, RunStatus
from celery_taskq.core.overseer import on_process
from celery_taskq.core.snapshots import TaskSnapshot
from celery_taskq.reports.redact import redacted_task
from celery_taskq.reports.shown import shown_task


@click.command()
@click.option(
    "--timeout",
    type=SecondsParamType(1),
    default=60,
    show_default=True,
    help="Seconds to wait for the sample tasks (the failing one backs off between retries).",
)
@pass_context
def demo(context: CliContext, timeout: float) -> None:
    """Create the tables, queue sample tasks, work them with a runner, and show the record."""
    from celery_taskq.core.storage import (
        migrate,  # Alembic only here: it stays out of runners' memory
    )

    migrate.upgrade_database(context.settings.database_url, schema=context.settings.db_schema)
    service = context.service
    task_ids = [
        service.add_task("celery_taskq.examples.Greet", {"name": "world"}, queued_by="demo"),
        service.add_task(
            "celery_taskq.examples.CheckInbox",
            {"server": "mail.example.invalid"},
            max_retries=2,
            queued_by="demo",
        ),
    ]
    click.echo(f"queued tasks {task_ids} in {context.settings.database_url}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(
        _finished(service.get_task(task_id)) for task_id in task_ids
    ):
        if on_process(service).tasks_given_runs == 0:
            time.sleep(0.2)  # a failed task waits out its retry backoff
            continue
        task_runner = service.get_task_runner()
        if task_runner is None:
            raise click.ClickException("TaskRunnerLimit reached: stop other runners first")
        task_runner.run(burst=True)
    for task_id in task_ids:
        click.echo("")
        click.echo(
            render_task(
                shown_task(
                    redacted_task(service.get_task(task_id), context.settings.redact_patterns)
                )
            )
        )


def _finished(task: TaskSnapshot) -> bool:
    if task.last_status is RunStatus.SUCCESS:
        return True
    return task.last_status in FAILED_RUN_STATUSES and task.task_runs_failed >= task.max_retries
