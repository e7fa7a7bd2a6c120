"""``celery-taskq health``: the health checks of :mod:`celery_taskq.reports.health`, for probes,
cron and alerts (exit 0: every check passed; 1: at least one failed)."""

from __future__ import annotations

import json

import click

from celery_taskq.cli.invocation import CliContext, pass_context
from celery_taskq.cli.params import SecondsParamType
from celery_taskq.reports.limits import MAX_LIMIT
from celery_taskq.reports.terminal import escape_controls

# The same values as celery_taskq.reports.health's, which is imported only when the command
# runs (it loads Alembic); tests/test_health_cli.py checks that they agree.
SKIPPABLE = ("beat", "runners", "due", "dead_letters")
DEFAULT_MAX_DUE_AGE = 300.0
DEFAULT_MAX_DEAD_LETTERS = 10


@click.command("health")
@click.option("--json", "as_json", is_flag=True, help="One JSON document listing every check.")
@click.option(
    "--max-tick-age",
    type=SecondsParamType(0, min_open=True),
    help="Seconds (or a duration: 2m) the last OnProcess tick may be old "
    "[default: 10 x TASKQ_PROCESS_INTERVAL, at least 30].",
)
@click.option(
    "--max-due-age",
    type=SecondsParamType(0, min_open=True),
    default=DEFAULT_MAX_DUE_AGE,
    show_default=True,
    help="Seconds (or a duration: 5m) the oldest due run may wait.",
)
@click.option(
    "--max-dead-letters",
    type=click.IntRange(0, MAX_LIMIT - 1),
    default=DEFAULT_MAX_DEAD_LETTERS,
    show_default=True,
    help="Tasks that may run out of retries in the last hour.",
)
@click.option(
    "--skip",
    type=click.Choice(SKIPPABLE),
    multiple=True,
    help="A check not to run (repeatable), e.g. beat where OnProcess runs from cron.",
)
@pass_context
def health(
    context: CliContext,
    as_json: bool,
    max_tick_age: float | None,
    max_due_age: float,
    max_dead_letters: int,
    skip: tuple[str, ...],
) -> None:
    """Check the database, its schema, beat, the runners, due work and dead letters.

    Prints one line per failed check with its reason (with --json: every check with its
    figures) and exits 1 if any failed, 0 otherwise. A check that cannot run because the
    database or its schema failed is skipped, not failed.
    """
    from celery_taskq.reports.health import HealthThresholds, check_health

    thresholds = HealthThresholds.of(
        context.settings,
        max_tick_age=max_tick_age,
        max_due_age=max_due_age,
        max_dead_letters=max_dead_letters,
    )
    report = check_health(context.service.database, thresholds, skip=skip)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    elif report.ok:
        passed = [check.name for check in report.checks if check.state == "ok"]
        click.echo(f"ok: {', '.join(passed)}")
    else:
        for check in report.failures:
            click.echo(escape_controls(f"{check.name}: {check.reason}"))
    if not report.ok:
        raise click.exceptions.Exit(1)
