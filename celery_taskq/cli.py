"""The ``celery-taskq`` command: thin drivers over the queue service.

Errors are handled in one place, :func:`main`:

- a usage error (a bad option or argument, an id out of range, data that is not JSON) is
  click's: the usage line and one ``Error:`` line, exit 2;
- a refusal or a failure is one ``error:`` line, exit 1: a library error
  (:class:`~celery_taskq.core.exceptions.TaskqError`), and what a hostile or impossible input can
  provoke from Python or the driver (``ValueError``, ``OverflowError`` and other
  ``ArithmeticError``, ``RecursionError``, ``MemoryError``, ``OSError``, a database error).
  The line gives the message and its chain of causes; ``-vv`` logs the traceback too;
- anything else is a bug: the traceback, a line saying so, exit 70.

Text from the database is printed with control characters escaped
(:mod:`celery_taskq.reports.terminal`), and so is every error line.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from sqlalchemy.exc import DBAPIError

from celery_taskq import __version__
from celery_taskq.core.exceptions import TaskqError
from celery_taskq.core.listing import MAX_PAGE_SIZE, TaskFilter, list_tasks, parse_status
from celery_taskq.core.models import FAILED_RUN_STATUSES, OPEN_RUN_STATUSES, RunStatus
from celery_taskq.core.overseer import on_create_task_runners, on_debug, on_process
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.runner.lease import leave_namespace_init
from celery_taskq.core.settings import Settings
from celery_taskq.core.snapshots import TaskSnapshot
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.decoding import loads_json
from celery_taskq.render import progress_bar, render_page, render_page_json, render_task
from celery_taskq.reports.limits import DEFAULT_LIMIT, MAX_LIMIT
from celery_taskq.reports.redact import redacted_page, redacted_task
from celery_taskq.reports.shown import shown_page, shown_task
from celery_taskq.reports.terminal import escape_controls

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BUG = 70
"""An unexpected exception (``EX_SOFTWARE`` of sysexits.h): a bug, shown with its traceback."""

FAILURES = (
    TaskqError,
    DBAPIError,
    ValueError,
    ArithmeticError,
    RecursionError,
    MemoryError,
    OSError,
)
"""Exceptions shown as one ``error:`` line: refusals, and what bad input or an unreachable
database can raise anywhere. Every other exception is a bug."""

MAX_MESSAGE_CHARS = 1000
"""Characters of one message in an error line; a longer one is cut, with a marker."""

MAX_ID = 2**63 - 1
"""The largest id a database stores (a signed 64-bit integer)."""

TASK_ID = click.IntRange(1, MAX_ID)
"""A TaskQueue id: an integer that can be one."""


class JsonParamType(click.ParamType):  # type: ignore[type-arg]
    """A JSON document given as text."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return loads_json(value)
        except ValueError as exc:
            self.fail(f"{value!r} is not valid JSON: {exc}", param, ctx)
        except RecursionError:
            self.fail("the JSON document is nested too deeply", param, ctx)


class AwareDateTimeParamType(click.ParamType):  # type: ignore[type-arg]
    """An ISO 8601 date and time with a UTC offset, e.g. ``2026-01-31T08:00:00Z``."""

    name = "iso8601"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 date and time", param, ctx)
        if parsed.tzinfo is None:
            self.fail(
                f"{value!r} has no UTC offset: write it like 2026-01-31T08:00:00Z or +02:00",
                param,
                ctx,
            )
        try:
            parsed.astimezone(UTC)
        except OverflowError:
            self.fail(f"{value!r} is out of range in UTC", param, ctx)
        return parsed


class SecondsParamType(click.FloatRange):
    """A finite number of seconds, at least ``minimum`` (``nan`` and ``inf`` are refused)."""

    name = "seconds"

    def __init__(self, minimum: float = 0) -> None:
        super().__init__(min=minimum)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


@dataclass
class CliContext:
    """Settings resolved once for the invocation, and the service built from them."""

    settings: Settings
    _service: TaskQueueService | None = None

    @property
    def service(self) -> TaskQueueService:
        """The queue service in CLI mode (runners are started as detached processes)."""
        if self._service is None:
            self._service = TaskQueueService(
                Database(self.settings.database_url), self.settings, cli_mode=True
            )
        return self._service

    def close(self) -> None:
        """Release the database connections."""
        if self._service is not None:
            self._service.database.close()


pass_context = click.make_pass_decorator(CliContext)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar="TASKQ_DATABASE_URL",
    show_envvar=True,
    help="SQLAlchemy URL of the database [default: sqlite:///celery_taskq.db].",
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(__version__, prog_name="celery-taskq")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, verbose: int) -> None:
    """celery_taskq: an audited task queue over the TaskQueue, TaskRuns and TaskRunners tables."""
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = Settings.resolve()
    if database_url:
        settings = replace(settings, database_url=database_url)
    ctx.obj = CliContext(settings)
    ctx.call_on_close(ctx.obj.close)


@cli.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_context
def db_upgrade(context: CliContext, revision: str) -> None:
    """Create or upgrade the tables with Alembic."""
    from celery_taskq.core.storage import (
        migrate,  # Alembic only here: it stays out of runners' memory
    )

    migrate.upgrade_database(context.settings.database_url, revision)
    click.echo(f"database at revision {migrate.current_revision(context.settings.database_url)}")


@cli.command()
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
        create_run=True,
    )
    click.echo(task_id)


@cli.command()
@click.argument("task_id", type=TASK_ID)
@pass_context
def show(context: CliContext, task_id: int) -> None:
    """Print a task and every one of its runs."""
    snapshot = context.service.get_task(task_id)
    click.echo(render_task(shown_task(redacted_task(snapshot, context.settings.redact_patterns))))


@cli.command("list")
@click.option(
    "--status", type=click.Choice([status.value for status in RunStatus]), help="Last status."
)
@click.option("--handler", help="Exact TaskHandlerClass.")
@click.option("--queued-by", help="QueuedById.")
@click.option("--since", type=AwareDateTimeParamType(), help="Queued at or after (ISO 8601).")
@click.option("--until", type=AwareDateTimeParamType(), help="Queued before (ISO 8601).")
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
    )
    page = list_tasks(context.service.database, task_filter, limit=limit, before_id=before_id)
    page = shown_page(redacted_page(page, context.settings.redact_patterns))
    click.echo(render_page_json(page) if as_json else render_page(page))


class ReportTimeParamType(click.ParamType):  # type: ignore[type-arg]
    """An ISO 8601 time with a UTC offset, or a duration back from now (``24h``, ``1h30m``)."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime | timedelta:
        if isinstance(value, datetime | timedelta):
            return value
        from celery_taskq import reports  # only for `report`: it stays out of runners' memory

        try:
            moment = reports.parse_moment(str(value))
            # A duration reaching back before year 1 only overflows later, when resolved.
            reports.resolve_moment(moment, reports.utc_now())
        except TaskqError as exc:
            self.fail(str(exc), param, ctx)
        except (OverflowError, ValueError):
            self.fail(f"{value!r} is out of range", param, ctx)
        return moment


@cli.command("report")
@click.option(
    "--since",
    type=ReportTimeParamType(),
    default="24h",
    show_default=True,
    help="Start of the window: ISO 8601 with an offset, or a duration back from now "
    "(90s, 30m, 24h, 7d, 2w, 1h30m).",
)
@click.option(
    "--until",
    type=ReportTimeParamType(),
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
    """Totals, failure rates, durations, slowest runs, failures, dead letters, runners, due work.

    Tasks fall in the window by when they were queued; runs by when they ended (running runs:
    started; scheduled runs: became due); dead letters by when their last run ended; runners
    by their lifetime. Due work and heartbeat ages are as of now.
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv cannot be combined: choose one")
    # Reports and their rendering only here: they stay out of runners' memory.
    from celery_taskq import reports
    from celery_taskq.reports.text import render_report, render_report_csv, render_report_json

    now = reports.utc_now()
    report = reports.build_report(
        context.service.database,
        since=reports.resolve_moment(since, now),
        until=reports.resolve_moment(until, now),
        handler=handler,
        now=now,
        limit=limit,
    )
    if as_json:
        click.echo(render_report_json(report))
    elif as_csv:
        click.echo(render_report_csv(report), nl=False)
    else:
        click.echo(render_report(report))


@cli.command()
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


@cli.command()
@click.argument("task_id", type=TASK_ID)
@pass_context
def cancel(context: CliContext, task_id: int) -> None:
    """Cancel a task: a queued one never runs; a running one is asked to stop."""
    still_running = context.service.cancel_task(task_id)
    click.echo(
        f"task {task_id} cancelled"
        + ("; its running run is asked to stop" if still_running else "")
    )


@cli.command()
@click.argument("task_id", type=TASK_ID)
@pass_context
def retry(context: CliContext, task_id: int) -> None:
    """Give a finished task one more run now, even past its retries; print the run id."""
    click.echo(context.service.retry_task(task_id))


@cli.command()
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


@cli.command("create-runners")
@runner_options
@pass_context
def create_runners(
    context: CliContext, burst: bool, max_runs: int | None, max_idle: float | None
) -> None:
    """OnCreateTaskRunners: start TaskRunnerLimit minus live runners as detached processes."""
    started = on_create_task_runners(context.service, _runner_args(burst, max_runs, max_idle))
    click.echo(f"runners started: {started}")


@cli.command()
@pass_context
def debug(context: CliContext) -> None:
    """OnDebug: run one runner iteration in this process."""
    ran = on_debug(context.service)
    click.echo("ran one iteration" if ran else "TaskRunnerLimit reached: nothing ran")


@cli.command()
@runner_options
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
    memory_limit: int | None,
) -> None:
    """Work the queue until a signal, the memory limit, or an exit option."""
    leave_namespace_init()  # as a container's PID 1, the kernel could not fence its lease
    if memory_limit is not None:
        context.settings = replace(context.settings, runner_memory_limit_mb=memory_limit)
    task_runner = context.service.get_task_runner()
    if task_runner is None:
        raise click.ClickException(
            f"TaskRunnerLimit ({context.settings.task_runner_limit}) runners are already running"
        )
    reason = task_runner.run(
        burst=burst, max_runs=max_runs, max_idle=max_idle, install_signal_handlers=True
    )
    runner_id, runs = task_runner.task_runner_id, task_runner.runs_done
    click.echo(f"runner {runner_id} stopped: {reason.value}; runs: {runs}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--beat", is_flag=True, help="Embed Celery beat (the periodic events).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_context
def worker(context: CliContext, beat: bool, celery_args: tuple[str, ...]) -> None:
    """A Celery worker serving celery_taskq's queues; extra arguments go to `celery worker`."""
    from celery_taskq.celery import create_app, worker_queues

    app = create_app(context.settings)
    argv = ["worker", "-Q", worker_queues(app), *(["--beat"] if beat else []), *celery_args]
    app.worker_main(argv)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port."
)
@pass_context
def dashboard(context: CliContext, host: str, port: int) -> None:
    """The web dashboard, the HTTP API (/api/v1) and Prometheus metrics (/metrics).

    Read-only unless TASKQ_DASHBOARD_TOKEN is set; TASKQ_FLOWER_URL adds links to Flower.
    """
    from celery_taskq.web.server import serve  # FastAPI and uvicorn only when serving

    serve(context.settings, host=host, port=port)


@cli.command()
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

    migrate.upgrade_database(context.settings.database_url)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command; every error ends as an exit code (see the module)."""
    try:
        cli.main(args=argv, prog_name="celery-taskq", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        click.echo(f"error: {escape_controls(_one_line(exc.format_message()))}", err=True)
        return EXIT_FAILURE
    except click.Abort:
        click.echo("aborted", err=True)
        return EXIT_FAILURE
    except FAILURES as exc:
        logger.debug("the command failed", exc_info=exc)
        click.echo(f"error: {escape_controls(failure_message(exc))}", err=True)
        return EXIT_FAILURE
    except Exception as exc:
        traceback.print_exc()
        click.echo(
            f"error: unexpected {type(exc).__name__}: a bug in celery-taskq {__version__}; "
            "please report it with the traceback above",
            err=True,
        )
        return EXIT_BUG
    return EXIT_OK


def failure_message(exc: BaseException) -> str:
    """The message of ``exc`` and of each of its causes, on one line, repeats left out.

    A library error speaks for itself; another exception is named by its type (``OverflowError:
    Python int too large...``). SQLAlchemy's wrapper of a driver error is skipped for the driver
    error it wraps, which is its cause. Each message is cut at :data:`MAX_MESSAGE_CHARS`.
    """
    parts: list[str] = []
    for cause in _causes(exc):
        if isinstance(cause, DBAPIError) and cause.__cause__ is not None:
            continue  # the driver's error, its cause, says the same without the SQL
        message = _one_line(_text_of(cause))
        if parts and message.lower() in ": ".join(parts).lower():
            continue
        if not isinstance(cause, TaskqError):
            message = f"{type(cause).__name__}: {message}" if message else type(cause).__name__
        parts.append(message if len(message) <= MAX_MESSAGE_CHARS else _cut(message))
    return ": ".join(parts)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the chain of exceptions that caused it, as a traceback shows them."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )


def _cut(message: str) -> str:
    return f"{message[:MAX_MESSAGE_CHARS]}… ({len(message)} characters)"


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # an exception whose __str__ fails still gets its type named
        return ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
