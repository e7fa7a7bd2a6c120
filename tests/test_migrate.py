"""`celery-taskq db upgrade`: atomic, serialised between processes, clear about revisions, and
at home beside an app's own Alembic.

On a fresh SQLite file and on a fresh PostgreSQL database; the upgrades under test run the
real command in child processes, or in this process where a child would add nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from celery_taskq.cli import main
from celery_taskq.core.models import Base
from celery_taskq.core.storage.migrate import (
    alembic_config,
    current_revision,
    schema_differences,
    upgrade_database,
)
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
    """Every table with its columns and indexes, and the revisions in celery_taskq's version
    table (``versions``) and in an ``alembic_version`` (``app_versions``)."""
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
            versions = {
                key: sorted(
                    connection.execute(text(f"SELECT version_num FROM {table}")).scalars()  # noqa: S608 - a fixed name
                )
                if table in tables
                else []
                for key, table in (
                    ("versions", "taskq_alembic_version"),
                    ("app_versions", "alembic_version"),
                )
            }
            return {"tables": shape, **versions}
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


def assert_at_head_exactly(url: str, *, beside: frozenset[str] = frozenset()) -> None:
    """The schema is the models' and nothing else (but the tables ``beside``): no leftover or
    half-made table."""
    assert schema_differences(url) == []
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    assert tables == {*Base.metadata.tables, "taskq_alembic_version", *beside}
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
    assert schema(fresh_url) == {
        "tables": {BLOCKER: (["x"], [])},
        "versions": [],
        "app_versions": [],
    }


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


# -- beside an app's own Alembic ----------------------------------------------------------------

APP_ENV_PY = """
from alembic import context
from sqlalchemy import create_engine, pool

engine = create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
"""

APP_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def upgrade():
    op.create_table({table!r}, sa.Column("id", sa.Integer, primary_key=True))
"""

APP_REVISIONS = {"0001": "app_users", "0002": "app_orders"}
"""The app's own revisions: ids like celery_taskq's, so an id alone must not tell them apart."""


def app_alembic(tmp_path: Path, url: str) -> Config:
    """A real Alembic environment of an app of its own, with the default alembic_version."""
    location = tmp_path / "app_migrations"
    (location / "versions").mkdir(parents=True)
    (location / "env.py").write_text(APP_ENV_PY)
    down = None
    for revision, table in APP_REVISIONS.items():
        source = APP_REVISION.format(revision=revision, down_revision=down, table=table)
        (location / "versions" / f"{revision}_{table}.py").write_text(source)
        down = revision
    config = Config()
    config.set_main_option("script_location", str(location))
    config.set_main_option("sqlalchemy.url", url)
    return config


def test_upgrade_beside_an_apps_own_alembic_leaves_the_apps_revision_alone(
    fresh_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an app whose own Alembic keeps its revision 0001 in alembic_version
    app = app_alembic(tmp_path, fresh_url)
    command.upgrade(app, "0001")
    # When celery_taskq's tables are made in the same database
    assert main(["--database-url", fresh_url, "db", "upgrade"]) == 0
    assert capsys.readouterr() == (f"database at revision {HEAD}\n", "")
    # Then the app's revision row and table are untouched, and celery_taskq's is its own
    assert_at_head_exactly(fresh_url, beside=frozenset({"alembic_version", "app_users"}))
    assert schema(fresh_url)["app_versions"] == ["0001"]
    # And the app's Alembic goes on upgrading its own schema, which changes nothing of ours
    command.upgrade(app, "head")
    assert main(["--database-url", fresh_url, "db", "upgrade"]) == 0
    assert capsys.readouterr().err == ""
    beside = frozenset({"alembic_version", *APP_REVISIONS.values()})
    assert_at_head_exactly(fresh_url, beside=beside)
    assert schema(fresh_url)["app_versions"] == ["0002"]


OLD_VERSION_TABLE_SQL = (
    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
    "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
)
"""The version table as earlier versions of celery_taskq had Alembic make it."""


def make_old(url: str, *rows: str) -> None:
    """Keep the revision as earlier versions did: in alembic_version (with ``rows`` in it)."""
    execute(url, "DROP TABLE taskq_alembic_version")
    execute(url, OLD_VERSION_TABLE_SQL)
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for row in rows:
                connection.execute(
                    text("INSERT INTO alembic_version (version_num) VALUES (:row)"), {"row": row}
                )
    finally:
        engine.dispose()


def test_the_old_version_table_is_carried_over_in_the_upgrade_s_transaction(
    fresh_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a database made by an earlier version: at revision 0002, kept in alembic_version,
    # with a task in it; and an object that makes a later migration fail
    upgrade_database(fresh_url, MIDWAY)
    execute(
        fresh_url,
        'INSERT INTO "TaskQueue" ("TaskHandlerClass", "TaskData", "ScheduledOn", "QueuedOn", '
        "\"MaxRetries\", \"TaskRunsFailed\") VALUES ('tests.handlers.Succeed', '{}', "
        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 5, 0)",
    )
    make_old(fresh_url, MIDWAY)
    execute(fresh_url, f'CREATE TABLE "{BLOCKER}" (x INTEGER)')
    assert current_revision(fresh_url) == MIDWAY
    # When the upgrade fails, Then the carry-over is rolled back with it
    assert main(["--database-url", fresh_url, "db", "upgrade"]) == 1
    assert f"still at revision {MIDWAY}" in capsys.readouterr().err
    assert (schema(fresh_url)["versions"], schema(fresh_url)["app_versions"]) == ([], [MIDWAY])
    # When it runs again without the fault
    execute(fresh_url, f'DROP TABLE "{BLOCKER}"')
    assert main(["--database-url", fresh_url, "db", "upgrade"]) == 0
    # Then the revision moved to taskq_alembic_version, the old table is gone, the task is kept
    assert capsys.readouterr() == (
        f"revision {MIDWAY} moved from alembic_version to taskq_alembic_version\n"
        f"database at revision {HEAD}\n",
        "",
    )
    assert_at_head_exactly(fresh_url)
    engine = create_engine(fresh_url)
    try:
        with engine.connect() as connection:
            handlers = connection.execute(text('SELECT "TaskHandlerClass" FROM "TaskQueue"'))
            assert handlers.scalars().all() == ["tests.handlers.Succeed"]
    finally:
        engine.dispose()


def test_an_old_version_table_holding_anything_else_is_left_alone(
    fresh_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given celery_taskq's tables, and an alembic_version holding an app's revision besides
    upgrade_database(fresh_url, MIDWAY)
    make_old(fresh_url, MIDWAY, "a1b2c3d4e5f6")
    before = schema(fresh_url)
    # When an upgrade runs, Then it refuses in one line and changes nothing at all
    assert main(["--database-url", fresh_url, "db", "upgrade"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("error: the database has a TaskQueue table but no celery_taskq revision")
    assert "alembic_version holds '0002', 'a1b2c3d4e5f6'" in err
    assert schema(fresh_url) == before
