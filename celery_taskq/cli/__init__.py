"""The ``celery-taskq`` command: thin drivers over the queue service, one module per command group.

Errors are handled in one place, :func:`main`:

- a usage error (a bad option or argument, an id out of range, data that is not JSON) is
  click's usage line and one ``error:`` line, exit 2;
- a refusal or a failure is one ``error:`` line, exit 1: a library error
  (:class:`~celery_taskq.core.exceptions.TaskqError`), and what a hostile or impossible input can
  provoke from Python or the driver (``ValueError``, ``OverflowError`` and other
  ``ArithmeticError``, ``RecursionError``, ``MemoryError``, ``OSError``, a database error).
  The line gives the message and its chain of causes; ``-vv`` logs the traceback too;
- anything else is a bug: the traceback, a line saying so, exit 70.

Text from the database is printed with control characters escaped
(:mod:`celery_taskq.reports.terminal`), and so is every error line.

Settings: with ``--app`` (``-A``, ``TASKQ_APP``) the command reads the Celery app's config as its
workers do (``TASKQ_*`` variables, then the app's ``taskq_*`` keys, then the defaults); without
it, the variables and the defaults. ``--database-url`` wins over both. The current directory is
on the import path, as with ``celery -A`` (:mod:`~celery_taskq.cli.app_loading`).

The commands, by group: :mod:`~celery_taskq.cli.tasks` (enqueue, show, list, cancel, retry,
resend), :mod:`~celery_taskq.cli.watch`, :mod:`~celery_taskq.cli.runners` (process,
create-runners, debug, runner, worker),
:mod:`~celery_taskq.cli.report`, :mod:`~celery_taskq.cli.top`, :mod:`~celery_taskq.cli.health`,
:mod:`~celery_taskq.cli.prune`,
:mod:`~celery_taskq.cli.db`,
:mod:`~celery_taskq.cli.dashboard` and :mod:`~celery_taskq.cli.demo`; shared by them:
:mod:`~celery_taskq.cli.invocation`, :mod:`~celery_taskq.cli.params`,
:mod:`~celery_taskq.cli.errors` and :mod:`~celery_taskq.cli.task_text`.

Each command's module is imported only when the command is used
(:mod:`~celery_taskq.cli.commands`), so a runner loads none of the others.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import replace

import click

from celery_taskq import __version__
from celery_taskq.cli.app_loading import (
    APP_ENV,
    load_celery_app,
    put_working_directory_on_path,
    settings_of_app,
)
from celery_taskq.cli.commands import LazyGroup
from celery_taskq.cli.errors import (
    EXIT_BUG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    FAILURES,
    error_line,
    failure_message,
    show_click_error,
)
from celery_taskq.cli.invocation import CliContext
from celery_taskq.core.settings import Settings

logger = logging.getLogger(__name__)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A",
    "--app",
    "app_name",
    envvar=APP_ENV,
    show_envvar=True,
    help="The Celery app whose config to read, as `celery -A` takes it (module or "
    "module:attribute); its taskq_* keys apply below the TASKQ_* variables.",
)
@click.option(
    "--database-url",
    envvar="TASKQ_DATABASE_URL",
    show_envvar=True,
    help="SQLAlchemy URL of the database [default: sqlite:///celery_taskq.db].",
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(__version__, prog_name="celery-taskq")
@click.pass_context
def cli(ctx: click.Context, app_name: str | None, database_url: str | None, verbose: int) -> None:
    """celery_taskq: an audited task queue over the TaskQueue, TaskRuns and TaskRunners tables."""
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    put_working_directory_on_path()
    celery_app = load_celery_app(app_name) if app_name else None
    settings = Settings.resolve() if celery_app is None else settings_of_app(celery_app)
    if database_url:
        settings = replace(settings, database_url=database_url)
    ctx.obj = CliContext(settings, app_name=app_name or None, celery_app=celery_app)
    ctx.call_on_close(ctx.obj.close)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command; every error ends as an exit code (see the module)."""
    try:
        # A command that raises click's Exit (e.g. ``health``: 1) has its code returned here.
        code = cli.main(args=argv, prog_name="celery-taskq", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:  # a usage error exits 2, another refusal 1
        return show_click_error(exc)
    except click.Abort:
        click.echo(error_line("aborted"), err=True)
        return EXIT_FAILURE
    except FAILURES as exc:
        logger.debug("the command failed", exc_info=exc)
        click.echo(error_line(failure_message(exc)), err=True)
        return EXIT_FAILURE
    except Exception as exc:
        traceback.print_exc()
        click.echo(
            error_line(
                f"unexpected {type(exc).__name__}: a bug in celery-taskq {__version__}; "
                "please report it with the traceback above"
            ),
            err=True,
        )
        return EXIT_BUG
    return code if isinstance(code, int) else EXIT_OK


__all__ = ["EXIT_BUG", "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "cli", "failure_message", "main"]
