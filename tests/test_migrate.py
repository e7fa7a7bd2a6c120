"""`celery-taskq db upgrade`: atomic, serialised between processes, clear about revisions.

On a fresh SQLite file and on a fresh PostgreSQL database; the upgrades under test run the
real command in child processes, or in this process where a child would add nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from celery_taskq.cli import main
from celery_taskq.core.models import Base
from celery_taskq.core.storage.migrate import alembic_config, current_revision, upgrade_database
from tests.conftest import CLI

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
MIDWAY = "0002"
"""A revision to start from: the upgrade to head then runs several migrations."""

BLOCKER = "ix_TaskRuns_TaskRunnerId"
"""A name revision 0006 gives an index: a table of that name makes 0006 fail half-way."""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a database with nothing in it (a SQLite file that does not exist yet)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return str(request.getfixturevalue("postgresql_empty_url"))


def upgrade_command(url: str, *args: str) -> list[str]:
    """The command line of `celery-taskq db upgrade` against ``url``."""
    return [*CLI, "--database-url", url, "db", "upgrade", *args]


def child_env() -> dict[str, str]:
    """The environment of the test, without a database URL of its own."""
    return {key: value for key, value in os.environ.items() if key != "TASKQ_DATABASE_URL"}


def upgrade(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `celery-taskq db upgrade` in a child process to its end."""
    return subprocess.run(
        upgrade_command(url, *args), env=child_env(), capture_output=True, text=True, timeout=120
    )


def schema(url: str) -> dict[str, Any]:
    """Every table with its columns and indexes, and the recorded revisions."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            tables = sorted(inspector.get_table_names())
            shape = {
                table: (
                    [column["name"] for column in inspector.get_columns(table)],
                    sorted(str(index["name"]) for index in inspector.get_indexes(table)),
                )
                for table in tables
            }
            versions = (
                sorted(
                    connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
                )
                if "alembic_version" in tables
                else []
            )
            return {"tables": shape, "versions": versions}
    finally:
        engine.dispose()


def execute(url: str, statement: str) -> None:
    """Run one statement in its own committed transaction."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def assert_at_head_exactly(url: str) -> None:
    """The schema is the models' and nothing else: no leftover or half-made table."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            tables = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    assert tables == {*Base.metadata.tables, "alembic_version"}
    assert schema(url)["versions"] == [HEAD]


def test_a_failed_upgrade_keeps_the_previous_revision_and_a_retry_succeeds(
    fresh_url: str,
) -> None:
    # Given a database at an older revision, and an object that makes a later migration fail
    upgrade_database(fresh_url, MIDWAY)
    execute(fresh_url, f'CREATE TABLE "{BLOCKER}" (x INTEGER)')
    before = schema(fresh_url)
    # When the upgrade to head runs into it, after several migrations have done their work
    failed = upgrade(fresh_url)
    # Then it says so on one line, and the database is exactly as it was
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.count("\n") == 1, failed.stderr
    assert failed.stderr.startswith("error: the upgrade to revision 'head' failed and was rolled")
    assert f"still at revision {MIDWAY}" in failed.stderr
    assert schema(fresh_url) == before
    # And once the fault is gone, the same command brings it to head
    execute(fresh_url, f'DROP TABLE "{BLOCKER}"')
    retried = upgrade(fresh_url)
    assert (retried.returncode, retried.stderr) == (0, "")
    assert_at_head_exactly(fresh_url)


def test_a_failed_first_upgrade_leaves_no_table(
    fresh_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    execute(fresh_url, f'CREATE TABLE "{BLOCKER}" (x INTEGER)')
    assert main(["--database-url", fresh_url, "db", "upgrade"]) == 1
    assert "still at revision none (empty)" in capsys.readouterr().err
    assert schema(fresh_url) == {"tables": {BLOCKER: (["x"], [])}, "versions": []}


def test_concurrent_upgrades_of_a_fresh_database_are_serialised(fresh_url: str) -> None:
    # Given six upgrades of one fresh database started at once
    children = [
        subprocess.Popen(
            upgrade_command(fresh_url),
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outcomes = [(*child.communicate(timeout=120), child.returncode) for child in children]
    # Then every one succeeds and finds the schema at head, which is whole and has no leftovers
    assert outcomes == [(f"database at revision {HEAD}\n", "", 0)] * 6
    assert_at_head_exactly(fresh_url)


def test_an_unknown_revision_is_one_line_and_touches_nothing(
    fresh_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--database-url", fresh_url, "db", "upgrade", "--revision", "nonsense"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: unknown revision 'nonsense': use head or one of 0001")
    assert err.count("\n") == 1
    if fresh_url.startswith("sqlite"):
        assert not Path(fresh_url.removeprefix("sqlite:///")).exists()
    assert current_revision(fresh_url) is None
