"""Stored text cannot rewrite the operator's terminal: the CLI shows its controls escaped.

A handler stores escape sequences, carriage returns, backspaces, C1 controls and bidi overrides
in every field a run writes; a row written by hand (as a user's SQL could) puts them in the
handler name. ``show``, ``list``, ``report`` and ``watch`` print them escaped; multi-line
output keeps its lines; the JSON outputs keep every value exact.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_taskq.cli import main
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.terminal import escape_controls
from tests.helpers import cli, drive, insert_task_row, runs_of

HOSTILE = (
    "x\x1b[2J\x1b[1;1H\x1b]0;pwned\x07\r\b\u202e\u2066\x9b\x7f\x0b\x0c\u2028\ttab\nsecond line"
)
"""Clear screen, cursor home, window title, carriage return, backspace, bidi overrides, a C1
CSI, DEL, vertical tab, form feed, a line separator, a tab and a line feed."""

HOSTILE_HANDLER = "celery:evil\x1b[2J\u202egnp.exe"
HOSTILE_BY = "user\x1b]0;pwned\x07\r"


def terminal_controls(text: str, *, allowed: str = "\n") -> set[str]:
    """Characters in ``text`` that a terminal acts on or reorders, other than ``allowed``."""
    return {
        character
        for character in text
        if unicodedata.category(character) in ("Cc", "Cf", "Zl", "Zp", "Cs")
        and character not in allowed
    }


@pytest.fixture
def hostile_task(service: TaskQueueService, database: Database) -> int:
    """A task whose only run ended ``error`` with hostile text in every field it wrote."""
    task_id = service.add_task(
        "tests.hostile_handlers.StoreHostileText",
        {"text": HOSTILE},
        queued_by=HOSTILE_BY,
        max_retries=1,
    )
    drive(service)
    (run,) = runs_of(database, task_id)
    assert run.error_message == f"msg:{HOSTILE}"  # stored exactly as written
    return task_id


def test_show_and_list_print_stored_controls_escaped(
    hostile_task: int, database: Database, subprocess_env: dict[str, str]
) -> None:
    # Given a run that stored hostile text, and a handler name written by hand
    insert_task_row(database, HOSTILE_HANDLER, datetime.now(UTC))
    # When `show` and `list` print them in real processes
    shown = cli(subprocess_env, "show", str(hostile_task))
    listed = cli(subprocess_env, "list")
    # Then nothing a terminal would act on reaches it, and each value is there, escaped
    assert (shown.returncode, shown.stderr) == (0, "")
    assert terminal_controls(shown.stdout) == set()
    escaped = escape_controls(HOSTILE)
    assert f"error: [E{escape_controls(HOSTILE[:40])}] msg:{escaped}" in shown.stdout
    assert f"progress: step 1/2  {escaped}" in shown.stdout
    # the run's output keeps its lines (tabs laid out as spaces); other controls are escaped
    out_line = HOSTILE.split("\n")[0]
    block = f"      out:{escape_controls(out_line.expandtabs())}\n      second line\n"
    assert block in shown.stdout
    assert (listed.returncode, listed.stderr) == (0, "")
    assert terminal_controls(listed.stdout) == set()
    assert escape_controls(HOSTILE_HANDLER) in listed.stdout
    assert escape_controls(HOSTILE_BY) in listed.stdout
    assert len(listed.stdout.splitlines()) == 3  # header and two rows: no row was forged


def test_report_watch_and_json_outputs(
    hostile_task: int, database: Database, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_task_row(database, HOSTILE_HANDLER, datetime.now(UTC))

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--database-url", database_url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    # The text report and the CSV escape stored text; the CSV keeps line feeds and tabs
    window = ("--since", "2000-01-01T00:00:00Z")  # the run ended on the tests' fake clock
    code, report, _ = run("report", *window)
    assert code == 0
    assert terminal_controls(report) == set()
    assert escape_controls(HOSTILE_HANDLER) in report
    code, report_csv, _ = run("report", "--csv", *window)
    assert code == 0
    assert terminal_controls(report_csv, allowed="\n\t") == set()
    messages = [row[-1] for row in csv.reader(io.StringIO(report_csv)) if len(row) == 7]
    assert f"msg:{escape_controls(HOSTILE, multiline=True)}" in messages
    # `watch` shows the run's progress escaped (its own \r redraws the bar) and the error line
    code, watched, error = run("watch", str(hostile_task), "--timeout", "5")
    assert code == 1
    assert terminal_controls(watched.replace("\r[", "["), allowed="\n") == set()
    assert escape_controls(HOSTILE[:200]) in watched
    assert terminal_controls(error, allowed="\n") == set()
    assert error.count("\n") == 1
    assert error.startswith(f"error: run {runs_of(database, hostile_task)[0].id} ended error")
    # The JSON documents keep the exact values, JSON-escaped
    code, listed, _ = run("list", "--json")
    assert code == 0
    assert terminal_controls(listed) == set()
    tasks = json.loads(listed)["tasks"]
    assert {task["handler"] for task in tasks} >= {HOSTILE_HANDLER}
    assert HOSTILE_BY in {task["queued_by"] for task in tasks}
    code, report_json, _ = run("report", "--json", *window)
    assert code == 0
    assert terminal_controls(report_json) == set()
    assert f"msg:{HOSTILE}" in strings(json.loads(report_json))


def strings(value: object) -> set[str]:
    """Every string in a JSON document."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(strings(item) for item in value.values()), set())
    if isinstance(value, list):
        return set().union(*(strings(item) for item in value), set())
    return set()


BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
characters = st.one_of(
    st.characters(max_codepoint=0xA0),
    st.sampled_from(BIDI + "\u2028\u2029"),
    st.characters(exclude_categories=()),  # lone surrogates too
)


def must_escape(character: str) -> bool:
    """What escape_controls promises to escape: controls, separators, surrogates, bidi."""
    return unicodedata.category(character) in ("Cc", "Zl", "Zp", "Cs") or character in BIDI


@given(st.text(characters, max_size=40))
@settings(max_examples=300, deadline=None)
def test_escaped_text_holds_no_control_and_plain_text_is_untouched(text: str) -> None:
    one_line = escape_controls(text)
    assert not any(must_escape(character) for character in one_line)
    multi_line = escape_controls(text, multiline=True)
    assert not any(must_escape(character) for character in multi_line if character not in "\n\t")
    assert multi_line.split("\n") == [
        escape_controls(line, multiline=True) for line in text.split("\n")
    ]
    plain = "".join(character for character in text if not must_escape(character))
    assert escape_controls(plain) == plain
