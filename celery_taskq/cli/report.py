"""``celery-taskq report``: every report section as tables, JSON or CSV (the reports are imported
only here, out of runners' memory).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import click

from celery_taskq.cli.invocation import CliContext, pass_context
from celery_taskq.cli.params import SINCE
from celery_taskq.reports.limits import DEFAULT_LIMIT, MAX_LIMIT


@click.command("report")
@click.option(
    "--since",
    type=SINCE,
    default="24h",
    show_default=True,
    help="Start of the window: ISO 8601 with an offset, or a duration back from now "
    "(90s, 30m, 24h, 7d, 2w, 1h30m).",
)
@click.option(
    "--until",
    type=SINCE,
    help="End of the window, excluded; same forms [default: open].",
)
@click.option("--handler", help="Exact TaskHandlerClass (every section but runners).")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIMIT),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Rows of slowest runs, recent failures, dead letters and runners.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of tables.")
@click.option(
    "--csv",
    "as_csv",
    is_flag=True,
    help="CSV instead of tables: per section a '# <section>' line (the JSON key), "
    "a header row, the rows and an empty line.",
)
@pass_context
def report_command(
    context: CliContext,
    since: datetime | timedelta,
    until: datetime | timedelta | None,
    handler: str | None,
    limit: int,
    as_json: bool,
    as_csv: bool,
) -> None:
    """Totals, failure rates, durations, slowest runs, failures, dead letters, runners, due work
    and possibly lost native tasks.

    Tasks fall in the window by when they were queued; runs by when they ended (running runs:
    started; scheduled runs: became due); dead letters by when their last run ended; runners
    by their lifetime. Due work, heartbeat ages and possibly lost native tasks (never started
    TASKQ_NATIVE_LOST_AFTER seconds past due) are as of now.
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv cannot be combined: choose one")
    # Reports and their rendering only here: they stay out of runners' memory.
    from celery_taskq import reports
    from celery_taskq.reports.text import render_report, render_report_csv, render_report_json

    now = reports.utc_now()
    report = reports.build_report(
        context.service.database,
        since=SINCE.resolve(since, now),
        until=SINCE.resolve(until, now),
        handler=handler,
        now=now,
        limit=limit,
        lost_after=context.settings.native_lost_after,
    )
    if as_json:
        click.echo(render_report_json(report))
    elif as_csv:
        click.echo(render_report_csv(report), nl=False)
    else:
        click.echo(render_report(report))
