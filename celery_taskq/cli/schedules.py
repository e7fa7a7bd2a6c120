"""The ``schedules`` command group: list, show, add, edit, remove, pause, resume, run-now.

Every command is one call of :class:`~celery_taskq.core.schedules.ScheduleService`; a running
beat picks a change up at its next OnProcess tick.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from celery_taskq.cli.invocation import CliContext, pass_context
from celery_taskq.cli.params import JsonParamType, WholeSecondsParamType
from celery_taskq.core.schedule_models import MisfirePolicy
from celery_taskq.core.schedules import (
    ScheduleService,
    ScheduleSnapshot,
    slot_json,
)
from celery_taskq.core.schedules_spec import ScheduleSpec
from celery_taskq.reports.schedules import shown_schedule
from celery_taskq.reports.terminal import escape_controls

POLICIES = click.Choice([policy.value for policy in MisfirePolicy])


def _service(context: CliContext) -> ScheduleService:
    return ScheduleService(context.service.database, context.settings)


def _json(context: CliContext, snapshot: ScheduleSnapshot) -> dict[str, Any]:
    """The schedule as JSON, its data with secrets redacted (as ``show`` redacts a task's)."""
    return shown_schedule(snapshot, context.settings.redact_patterns)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _line(snapshot: ScheduleSnapshot) -> str:
    return "  ".join(
        [
            escape_controls(snapshot.name),
            escape_controls(snapshot.timing),
            snapshot.misfire_policy,
            "paused" if snapshot.paused else "active",
            f"next {_when(snapshot.next_run_on) if not snapshot.paused else '-'}",
            f"last {_when(snapshot.last_run_on)}",
            f"status {snapshot.last_status or '-'}",
            f"task {snapshot.last_task_id or '-'}",
        ]
    )


@click.group("schedules")
def schedules_group() -> None:
    """Periodic handler tasks: fired by OnProcess, once per slot however many beats run."""


@schedules_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def list_command(context: CliContext, as_json: bool) -> None:
    """Each schedule with its next run, last run and last status."""
    snapshots = _service(context).list_schedules()
    if as_json:
        click.echo(json.dumps([_json(context, snapshot) for snapshot in snapshots], indent=2))
        return
    if not snapshots:
        click.echo("no schedules")
    for snapshot in snapshots:
        click.echo(_line(snapshot))


@schedules_group.command("show")
@click.argument("name")
@click.option("--slots", "slot_count", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def show(context: CliContext, name: str, slot_count: int, as_json: bool) -> None:
    """One schedule and its latest slots (with the slots each missed, and the policy applied)."""
    service = _service(context)
    snapshot = service.get(name)
    slots = service.slots(name, slot_count)
    if as_json:
        document = {**_json(context, snapshot), "slots": [slot_json(slot) for slot in slots]}
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(_line(snapshot))
    click.echo(f"handler {escape_controls(snapshot.handler)}  source {snapshot.source}")
    for slot in slots:
        missed = (
            f"  missed {slot.missed_slots} since {_when(slot.first_missed_on)}: "
            f"{slot.policy_applied}"
            if slot.missed_slots
            else ""
        )
        click.echo(f"  slot {_when(slot.slot_on)}  task {slot.task_id or '-'}{missed}")


def _timing_options(function: Any) -> Any:
    options = [
        click.option(
            "--every",
            "interval",
            type=WholeSecondsParamType(),
            help="Seconds apart, or a duration (90s, 5m, 1h).",
        ),
        click.option("--cron", "crontab", help="Five crontab fields, e.g. '30 2 * * mon-fri'."),
        click.option("--timezone", help="IANA zone of a crontab [default: UTC]."),
        click.option("--misfire-policy", type=POLICIES, help="After missed slots."),
        click.option("--title", help="The title of the tasks it creates."),
        click.option("--max-retries", type=int, help="MaxRetries of the tasks it creates."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@schedules_group.command("add")
@click.argument("name")
@click.argument("handler")
@click.argument("data", required=False, type=JsonParamType())
@_timing_options
@click.option("--paused", is_flag=True, help="Add it paused.")
@pass_context
def add(
    context: CliContext,
    name: str,
    handler: str,
    data: Any,
    interval: int | None,
    crontab: str | None,
    timezone: str | None,
    misfire_policy: str | None,
    title: str | None,
    max_retries: int | None,
    paused: bool,
) -> None:
    """Add schedule NAME for HANDLER with DATA (JSON), --every N seconds or on a --cron."""
    spec = ScheduleSpec(
        name,
        handler,
        data,
        interval=interval,
        crontab=crontab,
        timezone=timezone or "UTC",
        misfire_policy=misfire_policy or MisfirePolicy.CATCH_UP_ONCE.value,
        title=title,
        max_retries=max_retries,
    )
    click.echo(_line(_service(context).add(spec, paused=paused)))


@schedules_group.command("edit")
@click.argument("name")
@click.option("--handler", help="The handler of the tasks it creates.")
@click.option("--data", type=JsonParamType(), help="The task data (JSON).")
@_timing_options
@pass_context
def edit(context: CliContext, /, name: str, **changes: Any) -> None:
    """Change parts of schedule NAME; a running beat uses them from its next tick."""
    given = {key: value for key, value in changes.items() if value is not None}
    if not given:
        raise click.UsageError("give at least one part to change")
    click.echo(_line(_service(context).edit(name, given)))


@schedules_group.command("remove")
@click.argument("name")
@pass_context
def remove(context: CliContext, name: str) -> None:
    """Remove schedule NAME (the tasks it created stay)."""
    _service(context).remove(name)
    click.echo(f"removed {escape_controls(name)}")


@schedules_group.command("pause")
@click.argument("name")
@pass_context
def pause(context: CliContext, name: str) -> None:
    """Stop NAME firing until it is resumed."""
    click.echo(_line(_service(context).pause(name)))


@schedules_group.command("resume")
@click.argument("name")
@pass_context
def resume(context: CliContext, name: str) -> None:
    """Let NAME fire again, from its next slot."""
    click.echo(_line(_service(context).resume(name)))


@schedules_group.command("run-now")
@click.argument("name")
@pass_context
def run_now(context: CliContext, name: str) -> None:
    """Queue NAME's task now, outside its slots; print the task id."""
    click.echo(_service(context).run_now(name))
