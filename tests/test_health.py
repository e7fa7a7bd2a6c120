"""Health checks on SQLite and PostgreSQL: each check fails for its own reason, and only that one.

Every fault starts from a healthy database (a fresh OnProcess tick, nothing due, no runner)
and breaks one thing, as a user's SQL or a dead process could; the checks run as of a fixed
``now``. The command line is tested at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, text

from celery_taskq.cli import health as health_cli
from celery_taskq.cli import main
from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import BeatTick, RunnerStatus, RunStatus
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import VERSION_TABLE, alembic_config
from celery_taskq.reports import health
from celery_taskq.reports.health import CHECKS, FAILED, OK, SKIPPED, HealthThresholds
from tests.test_reports import Rows

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def ago(seconds: float) -> datetime:
    """``seconds`` before NOW."""
    return NOW - timedelta(seconds=seconds)


def tick(database: Database, event: str, ticked_on: datetime) -> None:
    """A beat tick row, as OnProcess's claim writes it."""
    with database.transaction() as connection:
        connection.execute(
            insert(BeatTick).values(
                event=event, slot=int(ticked_on.timestamp() // 2), ticked_on=ticked_on
            )
        )


def due_run(rows: Rows, waited: float) -> None:
    """A scheduled run of a task that became due ``waited`` seconds ago."""
    task = rows.task("app.jobs.A", ago(waited + 5), scheduled_on=ago(waited))
    rows.run(task, RunStatus.SCHEDULED)


def dead_letter(rows: Rows) -> None:
    """A task out of retries whose last run failed ten minutes ago."""
    task = rows.task("app.jobs.A", ago(900), max_retries=1)
    rows.run(task, RunStatus.ERROR, started=ago(601), finished=ago(600), code="E")


def old_due_run_with_a_runner(rows: Rows) -> None:
    """A run due ten minutes, while a live runner is busy elsewhere."""
    due_run(rows, 600)
    rows.runner(RunnerStatus.RUNNING, ago(700), heartbeat=ago(1))


def two_dead_letters(rows: Rows) -> None:
    """Two tasks out of retries in the last hour."""
    dead_letter(rows)
    dead_letter(rows)


def behind_head(database: Database) -> None:
    """The recorded revision one migration behind head."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    previous = script.get_revision(health.head_revision()).down_revision
    with database.transaction() as connection:
        update = text(f"UPDATE {VERSION_TABLE} SET version_num = :r")  # noqa: S608 - a constant
        connection.execute(update, {"r": previous})


FAULTS: dict[str, tuple[str, Callable[[Database, Rows], object], str]] = {
    "stale beat tick": ("beat", lambda db, rows: tick(db, "process", ago(120)), "120 s ago"),
    "no beat tick": ("beat", lambda db, rows: None, "no OnProcess tick recorded"),
    "old due run, a runner alive": (
        "due",
        lambda db, rows: old_due_run_with_a_runner(rows),
        "waited 600 s",
    ),
    "due run and no runner": ("runners", lambda db, rows: due_run(rows, 120), "no runner"),
    "runner with a stale heartbeat": (
        "runners",
        lambda db, rows: rows.runner(RunnerStatus.RUNNING, ago(900), heartbeat=ago(300)),
        "stopped sending heartbeats (the oldest 300 s ago)",
    ),
    "dead letters": ("dead_letters", lambda db, rows: two_dead_letters(rows), ""),
    "schema behind head": ("schema", lambda db, rows: behind_head(db), "behind head"),
}


@pytest.fixture
def thresholds(settings: Settings) -> HealthThresholds:
    """The default thresholds, but at most one dead letter an hour."""
    return HealthThresholds.of(settings, max_dead_letters=1)


@pytest.fixture
def rows(database: Database) -> Rows:
    """A writer of rows into the test database."""
    return Rows(database)


def states(report: health.HealthReport) -> dict[str, str]:
    """Each check's state."""
    return {check.name: check.state for check in report.checks}


def test_a_healthy_database_passes_every_check(
    database: Database, rows: Rows, thresholds: HealthThresholds
) -> None:
    tick(database, "process", ago(5))
    rows.runner(RunnerStatus.RUNNING, ago(60), heartbeat=ago(2))  # an idle live runner
    # another host's runner that OnProcess times out at 60 + 10 s, give or take a late tick
    rows.runner(RunnerStatus.RUNNING, ago(600), heartbeat=ago(95), host="host-2")
    due_run(rows, 30)  # due for less than a heartbeat timeout: a runner is on its way
    dead_letter(rows)  # one dead letter an hour is allowed here

    report = health.check_health(database, thresholds, now=NOW)

    assert report.ok, report.failures
    assert states(report) == dict.fromkeys(CHECKS, OK)
    figures = {check.name: dict(check.figures) for check in report.checks}
    assert figures["beat"]["process_tick_age"] == 5.0
    assert figures["beat"]["create_runners_tick_age"] is None
    assert figures["runners"]["live_runners"] == 1
    assert figures["due"]["oldest_due_age"] == 30.0
    assert figures["dead_letters"]["dead_letters_last_hour"] == 1


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_check_fails_for_its_own_reason(
    database: Database, rows: Rows, thresholds: HealthThresholds, fault: str
) -> None:
    failing, make_fault, reason = FAULTS[fault]
    if failing != "beat":
        tick(database, "process", ago(5))
    make_fault(database, rows)

    report = health.check_health(database, thresholds, now=NOW)

    assert [check.name for check in report.failures] == [failing]
    assert reason in report.failures[0].reason
    blocked = failing == "schema"  # the table checks need the schema at head
    assert all(
        check.state == (SKIPPED if blocked else OK)
        for check in report.checks
        if check.name not in ("database", "schema", failing)
    )


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///{tmp}/missing/taskq.db",
        "sqlite:///{tmp}",  # a directory, not a database file
        "postgresql+psycopg://taskq@127.0.0.1:9/taskq?connect_timeout=5",  # nothing listens
    ],
)
def test_an_unreachable_database_fails_the_database_check_only(tmp_path: Path, url: str) -> None:
    database = Database(url.format(tmp=tmp_path))
    try:
        report = health.check_health(database, HealthThresholds(max_tick_age=30), now=NOW)
    finally:
        database.close()

    assert [check.name for check in report.failures] == ["database"]
    assert "\n" not in report.failures[0].reason  # the driver's message, on one line
    assert states(report) == {"database": FAILED, **dict.fromkeys(CHECKS[1:], SKIPPED)}
    assert list(tmp_path.iterdir()) == []  # no SQLite file was created


def test_check_ready_is_the_database_and_schema_checks(database: Database) -> None:
    assert [(check.name, check.state) for check in health.check_ready(database)] == [
        ("database", OK),
        ("schema", OK),
    ]
    behind_head(database)
    schema = health.check_ready(database)[1]
    assert schema.state == FAILED
    assert "run celery-taskq db upgrade" in schema.reason


def test_bad_thresholds_and_skips_are_refused(database: Database, settings: Settings) -> None:
    with pytest.raises(InvalidArgumentError, match="max_due_age must be a positive"):
        HealthThresholds.of(settings, max_due_age=0)
    with pytest.raises(InvalidArgumentError, match="max_dead_letters must be from 0"):
        HealthThresholds.of(settings, max_dead_letters=-1)
    with pytest.raises(InvalidArgumentError, match="cannot skip database"):
        health.check_health(database, HealthThresholds.of(settings), skip=["database"])


def test_the_command_line_defaults_are_the_checks_own(settings: Settings) -> None:
    assert health_cli.SKIPPABLE == health.SKIPPABLE
    defaults = HealthThresholds.of(settings)
    assert (defaults.max_due_age, defaults.max_dead_letters) == (
        health_cli.DEFAULT_MAX_DUE_AGE,
        health_cli.DEFAULT_MAX_DEAD_LETTERS,
    )


# -- the command line (the wall clock: rows are written relative to the current time) --------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``celery-taskq`` in-process; return (code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exit_0_when_every_check_passes(
    database_url: str, database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    tick(database, "process", datetime.now(UTC))

    code, out, err = run_cli(capsys, "--database-url", database_url, "health")

    assert (code, out, err) == (0, "ok: " + ", ".join(CHECKS) + "\n", "")


def test_cli_one_line_per_failed_check_and_exit_1(
    database_url: str, database: Database, rows: Rows, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    rows.runner(RunnerStatus.RUNNING, now - timedelta(hours=1), heartbeat=now - timedelta(hours=1))

    code, out, err = run_cli(capsys, "--database-url", database_url, "health")

    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["beat", "runners"]
    assert (
        lines[0] == "beat: no OnProcess tick recorded: is beat running with celery_taskq's entries?"
    )
    assert "1 running runner(s) stopped sending heartbeats" in lines[1]

    code, out, _ = run_cli(
        capsys, "--database-url", database_url, "health", "--json", "--skip", "beat"
    )
    document = json.loads(out)
    assert code == 1
    assert document["ok"] is False
    assert [(check["name"], check["state"]) for check in document["checks"]] == [
        ("database", OK),
        ("schema", OK),
        ("beat", SKIPPED),
        ("runners", FAILED),
        ("due", OK),
        ("dead_letters", OK),
    ]
    runners = document["checks"][3]
    assert runners["figures"]["stale_runners"] == 1
    assert "stopped sending heartbeats" in runners["reason"]


def test_cli_json_when_healthy_and_thresholds_as_options(
    database_url: str, database: Database, rows: Rows, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    tick(database, "process", now - timedelta(seconds=50))
    base = ("--database-url", database_url, "health")

    assert run_cli(capsys, *base)[0] == 1  # 50 s is past the 30 s default
    code, out, _ = run_cli(capsys, *base, "--json", "--max-tick-age", "90")
    assert code == 0
    document = json.loads(out)
    assert document["ok"] is True
    assert {check["state"] for check in document["checks"]} == {OK}
    assert document["checks"][2]["figures"]["max_tick_age"] == 90.0

    dead_letter_now = rows.task("app.jobs.A", now - timedelta(minutes=5), max_retries=1)
    rows.run(dead_letter_now, RunStatus.ERROR, started=now - timedelta(minutes=2), seconds=1)
    assert run_cli(capsys, *base, "--max-tick-age", "90", "--max-dead-letters", "1")[0] == 0
    code, out, _ = run_cli(capsys, *base, "--max-tick-age", "90", "--max-dead-letters", "0")
    assert (code, out) == (
        1,
        "dead_letters: more than 0 task(s) ran out of retries in the last hour\n",
    )


def test_cli_unreachable_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "taskq.db"

    code, out, err = run_cli(capsys, "--database-url", f"sqlite:///{missing}", "health")

    assert (code, out, err) == (1, f"database: no SQLite database file at {missing}\n", "")
    assert not missing.parent.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-due-age", "0"], "Invalid value for '--max-due-age'"),
        (["--max-dead-letters", "-1"], "Invalid value for '--max-dead-letters'"),
        (["--skip", "schema"], "Invalid value for '--skip'"),
    ],
)
def test_cli_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run_cli(
        capsys, "--database-url", f"sqlite:///{tmp_path}/x.db", "health", *args
    )
    assert (code, out) == (2, "")
    assert message in err
    assert list(tmp_path.iterdir()) == []
