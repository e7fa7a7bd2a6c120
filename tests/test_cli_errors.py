"""Hostile arguments on every CLI path: one error line and a non-zero exit, never a traceback;
and a genuine bug still shows its traceback, with a line saying it is one.

The table runs in this process through the entry point (a child process would add only its
start-up time); a batch of its cases also runs as real `celery-taskq` processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from celery_taskq.cli import EXIT_BUG, EXIT_FAILURE, EXIT_USAGE, cli, main
from celery_taskq.core.exceptions import StorageError, TaskqError
from celery_taskq.core.models import TaskQueue
from celery_taskq.core.storage.database import Database
from tests.conftest import CLI, PROJECT_ROOT
from tests.helpers import count

SUCCEED = "tests.handlers.Succeed"
BIG = str(2**63)
HUGE = str(10**30)
DEEP = "[" * 2000 + "]" * 2000
NESTED_STEPS = json.dumps(
    {"steps": [{"handler": "taskq.steps", "settings": {"steps": [{"handler": SUCCEED}]}}]}
)

USAGE_CASES = {
    "show id >= 2^63": (["show", BIG], "is not in the range 1<=x<=9223372036854775807"),
    "cancel id >= 2^63": (["cancel", BIG], "is not in the range"),
    "retry id 10^30": (["retry", HUGE], "is not in the range"),
    "watch id >= 2^63": (["watch", BIG], "is not in the range"),
    "list --before >= 2^63": (["list", "--before", BIG], "is not in the range"),
    "list --limit 10^30": (["list", "--limit", HUGE], "is not in the range"),
    "show id 0": (["show", "0"], "is not in the range"),
    "show id 1e3": (["show", "1e3"], "is not a valid integer"),
    "enqueue --at before year 1 in UTC": (
        ["enqueue", SUCCEED, "--at", "0001-01-01T00:00:00+01:00"],
        "is out of range in UTC",
    ),
    "list --since after year 9999 in UTC": (
        ["list", "--since", "9999-12-31T23:59:59-01:00"],
        "is out of range in UTC",
    ),
    "report --since overflowing": (["report", "--since", "99999999999999w"], "'--since'"),
    "watch --timeout nan": (["watch", "1", "--timeout", "nan"], "not a finite number"),
    "runner --max-idle inf": (["runner", "--max-idle", "inf"], "not a finite number"),
}

FAILURE_CASES = {
    # refused by the JSON parameter (usage) or by the task data depth limit (failure)
    "enqueue 2,000-deep JSON": (["enqueue", SUCCEED, DEEP], "nested too deeply"),
    "db upgrade unknown revision": (
        ["db", "upgrade", "--revision", "nonsense"],
        "error: unknown revision 'nonsense': use head or one of 0001",
    ),
    "show the largest id": (["show", str(2**63 - 1)], "error: no task with id 9223372036854775807"),
    "enqueue --max-retries >= 2^63": (
        ["enqueue", SUCCEED, "--max-retries", BIG],
        "error: max_retries must be",
    ),
    "enqueue nested steps": (["enqueue", "taskq.steps", NESTED_STEPS], "multi-step task"),
    "enqueue a handler name with escapes": (["enqueue", "\x1b[2Jevil.Handler"], "evil"),
    "database URL with NUL": (
        ["--database-url", "sqlite:///nul\x00.db", "list"],
        "error: ValueError: embedded null byte",
    ),
    "database URL of another kind": (
        ["--database-url", "nonsense://x", "show", "1"],
        "error: unsupported database 'nonsense'",
    ),
    "database file that cannot exist": (
        ["--database-url", "sqlite:////nonexistent-dir/x.db", "list"],
        "unable to open database file",
    ),
    "list --handler with a lone surrogate": (["list", "--handler", "\ud800"], "error: Unicode"),
}

SUBPROCESS_CASES = [
    "show id >= 2^63",
    "enqueue 2,000-deep JSON",
    "db upgrade unknown revision",
    "enqueue nested steps",
]
"""Cases also run as real processes (arguments a command line can carry)."""


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty SQLite database."""
    path = tmp_path / "taskq.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


def tasks_in(url: str) -> int:
    """Rows of TaskQueue."""
    database = Database(url)
    try:
        return count(database, TaskQueue)
    finally:
        database.close()


def terminal_controls(text: str) -> set[str]:
    """Control characters in ``text`` other than line feeds."""
    return {c for c in text if unicodedata.category(c) in ("Cc", "Cf") and c != "\n"}


def assert_one_error_line(code: int, out: str, err: str, expected_code: int, fragment: str) -> None:
    """A refusal: the exit code, nothing on stdout, one error line and no traceback."""
    if "nested too deeply" in fragment:
        assert code in (EXIT_USAGE, EXIT_FAILURE), err
        expected_code = code
    assert code == expected_code, err
    assert out == ""
    assert "Traceback" not in err
    assert terminal_controls(err) == set()
    error_lines = [line for line in err.splitlines() if line.lower().startswith("error:")]
    assert len(error_lines) == 1, err
    assert fragment in error_lines[0]
    if expected_code == EXIT_FAILURE:
        assert err == error_lines[0] + "\n"  # the line is all there is


CASES = [(name, *case, EXIT_USAGE) for name, case in USAGE_CASES.items()] + [
    (name, *case, EXIT_FAILURE) for name, case in FAILURE_CASES.items()
]


@pytest.mark.parametrize(
    ("args", "fragment", "expected_code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_hostile_arguments_end_in_one_error_line_and_write_nothing(
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    fragment: str,
    expected_code: int,
) -> None:
    code = main(["--database-url", sqlite_url, *args])
    out, err = capsys.readouterr()
    assert_one_error_line(code, out, err, expected_code, fragment)
    assert tasks_in(sqlite_url) == 0


def test_hostile_arguments_in_real_processes(sqlite_url: str, tmp_path: Path) -> None:
    table = {**USAGE_CASES, **FAILURE_CASES}
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}  # the tests' handlers
    children = {
        name: subprocess.Popen(
            [*CLI, "--database-url", sqlite_url, *table[name][0]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        for name in SUBPROCESS_CASES
    }
    # and with -vv, a refusal also logs its traceback before the error line
    verbose = subprocess.run(
        [*CLI, "-vv", "--database-url", sqlite_url, "show", "999"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    for name, child in children.items():
        out, err = child.communicate(timeout=120)
        expected_code = EXIT_USAGE if name in USAGE_CASES else EXIT_FAILURE
        assert_one_error_line(child.returncode, out, err, expected_code, table[name][1])
    assert verbose.returncode == EXIT_FAILURE
    assert "Traceback" in verbose.stderr
    assert verbose.stderr.endswith("\nerror: no task with id 999\n")
    assert tasks_in(sqlite_url) == 0


class UnprintableError(ValueError):
    """An exception whose message cannot be made."""

    def __str__(self) -> str:
        raise RuntimeError("no message")


def _recurse(depth: int) -> int:
    return _recurse(depth + 1) + 1


def _raise(kind: str) -> None:
    if kind == "overflow":
        raise OverflowError("Python int too large to convert to SQLite INTEGER")
    if kind == "recursion":
        _recurse(0)
    if kind == "chain":
        try:
            int("twelve")
        except ValueError as exc:
            raise TaskqError("the count is not a number") from exc
    if kind == "multiline":
        raise StorageError("first line\nsecond line \x1b[2J\u202e")
    if kind == "unprintable":
        raise UnprintableError()
    if kind == "long":
        raise ValueError("x" * 5000)
    if kind == "bug":
        settings: dict[str, str] = {}
        settings["missing"].strip()  # the point: a genuine bug
    raise AssertionError(kind)


@pytest.fixture
def raising_command() -> Iterator[None]:
    """A `raise KIND` command on the real group, for the error policy itself."""

    @click.command("raise")
    @click.argument("kind")
    def raise_command(kind: str) -> None:
        _raise(kind)

    cli.add_command(raise_command)
    yield
    cli.commands.pop("raise")


@pytest.mark.parametrize(
    ("kind", "line"),
    [
        ("overflow", "error: OverflowError: Python int too large to convert to SQLite INTEGER"),
        ("recursion", "error: RecursionError: maximum recursion depth exceeded"),
        (
            "chain",
            "error: the count is not a number: "
            "ValueError: invalid literal for int() with base 10: 'twelve'",
        ),
        ("multiline", "error: first line second line \\x1b[2J\\u202e"),
        ("unprintable", "error: UnprintableError"),
        ("long", "error: ValueError: " + "x" * 988 + "… (5012 characters)"),
    ],
)
def test_failures_are_one_line_with_their_causes(
    raising_command: None, capsys: pytest.CaptureFixture[str], kind: str, line: str
) -> None:
    assert main(["raise", kind]) == EXIT_FAILURE
    out, err = capsys.readouterr()
    assert (out, err) == ("", line + "\n")


def test_a_bug_shows_its_traceback_and_says_it_is_one(
    raising_command: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["raise", "bug"]) == EXIT_BUG
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "KeyError: 'missing'" in err
    assert err.splitlines()[-1].startswith("error: unexpected KeyError: a bug in celery-taskq")
    assert err.endswith("please report it with the traceback above\n")
