"""How a failed command is told: exit codes, and one ``error:`` line with the chain of causes.

Every error line starts ``error:``, click's usage errors too (click itself writes ``Error:``):
:func:`show_click_error` writes them, and :class:`TaskqGroup` uses it when the command runs in
click's standalone mode (``cli()``, click's test runner) as :func:`~celery_taskq.cli.main` does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

import click
from sqlalchemy.exc import DBAPIError

from celery_taskq.core.exceptions import TaskqError
from celery_taskq.reports.terminal import escape_controls

ERROR_PREFIX = "error: "
"""How every error line of the command starts."""

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
        message = one_line(_text_of(cause))
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


def one_line(text: str) -> str:
    """``text`` on one line: every run of whitespace becomes one space."""
    return " ".join(text.split())


def error_line(message: str) -> str:
    """``message`` as the command's one error line: prefixed, on one line, controls escaped."""
    return ERROR_PREFIX + escape_controls(one_line(message))


def show_click_error(exc: click.ClickException) -> int:
    """Write a click error to stderr and return its exit code.

    A usage error (exit 2) keeps click's usage line and help hint above the error line.
    """
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        context = exc.ctx
        help_names = context.command.get_help_option_names(context)
        hint = ""
        if context.command.get_help_option(context) is not None and help_names:
            hint = f"Try '{context.command_path} {max(help_names, key=len)}' for help.\n"
        click.echo(f"{context.get_usage()}\n{hint}", err=True)
    click.echo(error_line(exc.format_message()), err=True)
    return exc.exit_code


class TaskqGroup(click.Group):
    """The command group; in click's standalone mode its errors are shown as ``main`` shows
    them (one ``error:`` line); any other exception propagates as click lets it."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            code = show_click_error(exc)
        except click.Abort:
            click.echo(error_line("aborted"), err=True)
            code = EXIT_FAILURE
        sys.exit(code if isinstance(code, int) else EXIT_OK)
