"""``celery-taskq prune``: delete finished tasks, their runs, finished runners and beat ticks
older than an age, in bounded batches (:mod:`celery_taskq.core.retention_pruner`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from celery_taskq.cli.invocation import CliContext, pass_context
from celery_taskq.cli.params import SecondsParamType
from celery_taskq.core.models import RunStatus
from celery_taskq.core.retention import FINISHED_STATUSES, RetentionPolicy, parse_age
from celery_taskq.core.retention_pruner import DEFAULT_BUSY_SHARE, MIN_BUSY_SHARE, Pruner


class AgeParamType(click.ParamType):  # type: ignore[type-arg]
    """An age such as ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``."""

    name = "age"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_age(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command()
@click.option(
    "--older-than",
    "older_than",
    type=AgeParamType(),
    required=True,
    help="Prune what finished longer ago than this: 45s, 90m, 12h, 30d, 2w.",
)
@click.option(
    "--status",
    "statuses",
    type=click.Choice([status.value for status in FINISHED_STATUSES], case_sensitive=False),
    multiple=True,
    help="Only tasks whose LastStatus is this (repeatable). Without it: every finished task, "
    "finished runner rows and beat-tick rows.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be pruned; delete nothing.")
@click.option(
    "--pause",
    type=SecondsParamType(),
    default=0.0,
    show_default=True,
    help="Seconds to wait at least after each batch that deleted rows.",
)
@click.option(
    "--busy-share",
    type=click.FloatRange(MIN_BUSY_SHARE, 1.0),
    default=DEFAULT_BUSY_SHARE,
    show_default=True,
    help="The share of its time the prune spends deleting: after a batch that took t "
    "seconds it waits t × (1 − share) / share, leaving the database to the runners. "
    "1 prunes flat out.",
)
@pass_context
def prune(
    context: CliContext,
    older_than: timedelta,
    statuses: tuple[str, ...],
    dry_run: bool,
    pause: float,
    busy_share: float,
) -> None:
    """Delete finished tasks (with their runs), finished runners and beat ticks older than
    --older-than, at most TASKQ_RETENTION_BATCH_SIZE rows a statement.

    A task that may still run (never run, retries left, a scheduled or running run) is never
    touched, nor any of its runs.
    """
    chosen = tuple(RunStatus(status.lower()) for status in statuses)
    policy = RetentionPolicy.everything_older_than(older_than, chosen)
    service = context.service
    batch_size = context.settings.retention_batch_size
    pruner = Pruner(service.database, service.clock, batch_size, pause=pause, busy_share=busy_share)
    report = pruner.prune(policy, dry_run=dry_run)
    click.echo(f"{'would prune' if dry_run else 'pruned'}: {report.summary()}")
