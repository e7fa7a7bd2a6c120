"""The runner commands: ``process`` (OnProcess), ``create-runners`` (OnCreateTaskRunners),
``debug`` (OnDebug), ``runner`` (a runner loop) and ``worker`` (a Celery worker).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import click

from celery_taskq.cli.app_loading import APP_ENV
from celery_taskq.cli.invocation import CliContext, pass_context
from celery_taskq.cli.params import SecondsParamType
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.limits import apply_declared_limits
from celery_taskq.core.overseer import on_create_task_runners, on_debug, on_process
from celery_taskq.core.queues import parse_queue_list
from celery_taskq.core.runner.lease import leave_namespace_init


@click.command()
@pass_context
def process(context: CliContext) -> None:
    """OnProcess: time out dead runners, then create runs for due tasks."""
    report = on_process(context.service)
    click.echo(
        f"timed out runners: {len(report.timed_out_runners)}; "
        f"tasks given a run: {report.tasks_given_runs}"
    )


def runner_options(function: Any) -> Any:
    """The loop-exit options shared by ``runner`` and ``create-runners``."""
    options = [
        click.option("--burst", is_flag=True, help="Leave when no run is waiting."),
        click.option("--max-runs", type=click.IntRange(min=1), help="Leave after N runs."),
        click.option(
            "--max-idle", type=SecondsParamType(), help="Leave after S seconds without work."
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _runner_args(burst: bool, max_runs: int | None, max_idle: float | None) -> list[str]:
    args = ["--burst"] if burst else []
    if max_runs is not None:
        args += ["--max-runs", str(max_runs)]
    if max_idle is not None:
        args += ["--max-idle", str(max_idle)]
    return args


@click.command("create-runners")
@runner_options
@pass_context
def create_runners(
    context: CliContext, burst: bool, max_runs: int | None, max_idle: float | None
) -> None:
    """OnCreateTaskRunners: start TaskRunnerLimit minus live runners as detached processes.

    With --app the runners read the same app's config.
    """
    with _app_in_environment(context.app_name):
        started = on_create_task_runners(context.service, _runner_args(burst, max_runs, max_idle))
    click.echo(f"runners started: {started}")


@contextmanager
def _app_in_environment(app_name: str | None) -> Iterator[None]:
    # The runners are started with this process's environment: with the app in it, they
    # resolve the settings this process resolved, not the variables alone.
    if app_name is None:
        yield
        return
    previous = os.environ.get(APP_ENV)
    os.environ[APP_ENV] = app_name
    try:
        yield
    finally:
        if previous is None:
            del os.environ[APP_ENV]
        else:
            os.environ[APP_ENV] = previous


@click.command()
@pass_context
def debug(context: CliContext) -> None:
    """OnDebug: run one runner iteration in this process."""
    ran = on_debug(context.service)
    click.echo("ran one iteration" if ran else "TaskRunnerLimit reached: nothing ran")


def _queue_list(
    _context: click.Context, _param: click.Parameter, value: str | None
) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        return parse_queue_list(value)
    except InvalidArgumentError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@runner_options
@click.option(
    "--queues",
    callback=_queue_list,
    help="Serve only these queues (comma-separated, e.g. reports,mail) [default: every queue].",
)
@click.option(
    "--memory-limit",
    type=click.IntRange(min=1),
    help="Leave when resident memory exceeds this many MiB "
    "[env TASKQ_RUNNER_MEMORY_LIMIT_MB; default: 100].",
)
@pass_context
def runner(
    context: CliContext,
    burst: bool,
    max_runs: int | None,
    max_idle: float | None,
    queues: tuple[str, ...] | None,
    memory_limit: int | None,
) -> None:
    """Work the queue until a signal, the memory limit, or an exit option.

    Runs are claimed highest priority first, then first in first out, from the queues served.
    """
    leave_namespace_init()  # as a container's PID 1, the kernel could not fence its lease
    if memory_limit is not None:
        context.settings = replace(context.settings, runner_memory_limit_mb=memory_limit)
    scope = context.service.claim_scope(queues)
    task_runner = context.service.get_task_runner(claim_scope=scope)
    if task_runner is None:
        raise click.ClickException(
            f"TaskRunnerLimit ({context.settings.task_runner_limit}) runners are already running"
        )
    if scope.limited:
        apply_declared_limits(context.service.database, context.settings)
    reason = task_runner.run(
        burst=burst, max_runs=max_runs, max_idle=max_idle, install_signal_handlers=True
    )
    runner_id, runs = task_runner.task_runner_id, task_runner.runs_done
    click.echo(f"runner {runner_id} stopped: {reason.value}; runs: {runs}")


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--beat", is_flag=True, help="Embed Celery beat (the periodic events).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_context
def worker(context: CliContext, beat: bool, celery_args: tuple[str, ...]) -> None:
    """A Celery worker serving celery_taskq's queues; extra arguments go to `celery worker`.

    With --app it is that app's worker (the app must have called celery_taskq.celery.install).
    """
    from celery_taskq.celery import TaskqCelery, create_app, worker_queues

    if context.celery_app is None:
        app = create_app(context.settings)
    elif isinstance(getattr(context.celery_app, "taskq", None), TaskqCelery):
        app = context.celery_app
    else:
        raise click.ClickException(
            f"the Celery app {context.app_name!r} has not installed celery_taskq: "
            "call celery_taskq.celery.install(app) where the app is made"
        )
    argv = ["worker", "-Q", worker_queues(app), *(["--beat"] if beat else []), *celery_args]
    app.worker_main(argv)
