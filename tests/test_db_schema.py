"""TASKQ_DB_SCHEMA: on PostgreSQL the tables live in a schema of their own, reached by every
statement; SQLite, which has no schemas, refuses one in one line and writes nothing.

The PostgreSQL databases here hold an app's own table named ``TaskQueue`` in ``public``: a
statement that missed the schema would land on it, so the tests would see it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from celery_taskq import api
from celery_taskq.cli import main
from celery_taskq.core.exceptions import ConfigurationError
from celery_taskq.core.models import Base
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import (
    current_revision,
    schema_differences,
    upgrade_database,
)
from tests.conftest import CLI, PROJECT_ROOT
from tests.test_schema import HEAD_REVISION

SCHEMA = "taskq_jobs"

APP_TABLE = 'CREATE TABLE "TaskQueue" ("AppColumn" INTEGER)'
"""An app's own table in ``public`` that happens to share a name with celery_taskq's."""


def execute(url: str, statement: str) -> None:
    """Run one statement in its own committed transaction."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def tables_by_schema(url: str) -> dict[str, set[str]]:
    """The tables of the ``public`` schema and of :data:`SCHEMA`."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            return {
                schema: set(inspector.get_table_names(schema=schema))
                for schema in ("public", SCHEMA)
            }
    finally:
        engine.dispose()


def app_rows(url: str) -> int:
    """Rows in the app's own ``public."TaskQueue"``."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            count = connection.execute(text('SELECT count(*) FROM public."TaskQueue"')).scalar_one()
            return int(count)
    finally:
        engine.dispose()


def test_the_upgrade_makes_the_schema_and_keeps_everything_in_it(postgresql_empty_url: str) -> None:
    url = postgresql_empty_url
    # Given an app's table named TaskQueue in public
    execute(url, APP_TABLE)
    # When the tables are made with a schema, twice
    upgrade_database(url, schema=SCHEMA)
    upgrade_database(url, schema=SCHEMA)
    # Then the schema was created and holds the tables and the version table, and only it
    assert tables_by_schema(url) == {
        "public": {"TaskQueue"},
        SCHEMA: {*Base.metadata.tables, "taskq_alembic_version"},
    }
    assert schema_differences(url, schema=SCHEMA) == []
    assert current_revision(url, schema=SCHEMA) == HEAD_REVISION
    assert current_revision(url) is None


def test_a_schema_end_to_end_enqueue_runner_and_reports(postgresql_empty_url: str) -> None:
    url = postgresql_empty_url
    execute(url, APP_TABLE)
    env = {
        **os.environ,
        "TASKQ_DATABASE_URL": url,
        "TASKQ_DB_SCHEMA": SCHEMA,
        "TASKQ_POLL_INTERVAL": "0.05",
        "PYTHONPATH": str(PROJECT_ROOT),
    }

    def cli(*args: str) -> str:
        done = subprocess.run(
            [*CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert (done.returncode, done.stderr) == (0, ""), done
        return done.stdout

    # Given the tables made in the schema by the command line
    assert cli("db", "upgrade") == f"database at revision {HEAD_REVISION} (schema {SCHEMA})\n"
    # When tasks are queued by the command line (the one-statement insert) and by enqueue()
    talk = int(cli("enqueue", "tests.handlers.Talk"))
    succeed = int(cli("enqueue", "tests.handlers.Succeed", '{"n": 1}'))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TASKQ_DB_SCHEMA", SCHEMA)
        from_python = api.enqueue("tests.handlers.Succeed", {"n": 2}, database_url=url)
    # And a runner process works them (the claim, and the finish that claims the next)
    assert cli("runner", "--burst").strip().endswith("runs: 3")
    # Then every read finds them: show, list, the report
    shown = cli("show", str(talk))
    assert "run 1: success" in shown
    assert "python says hi" in shown
    listed = json.loads(cli("list", "--json"))
    assert [(task["id"], task["last_status"]) for task in listed["tasks"]] == [
        (from_python, "success"),
        (succeed, "success"),
        (talk, "success"),
    ]
    report = json.loads(cli("report", "--json"))
    assert report["totals"]["runs"]["success"] == 3
    assert report["due_work"]["due_scheduled_runs"] == 0
    assert [runner["runs"] for runner in report["runners"]] == [3]
    # And the app's own table was never reached
    assert app_rows(url) == 0
    database = Database(url, schema=SCHEMA)
    try:
        with database.transaction(read_only=True) as connection:
            assert connection.execute(text("SELECT current_schema()")).scalar() == SCHEMA
        assert database.engine.dialect.default_schema_name == SCHEMA
    finally:
        database.close()


def test_sqlite_refuses_a_schema_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "taskq.db"
    monkeypatch.setenv("TASKQ_DB_SCHEMA", SCHEMA)
    for command in (["db", "upgrade"], ["enqueue", "tests.handlers.Succeed"]):
        assert main(["--database-url", f"sqlite:///{path}", *command]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (
            f"error: db_schema '{SCHEMA}' (TASKQ_DB_SCHEMA, taskq_db_schema) is for PostgreSQL "
            "only: sqlite has no schemas; leave it empty\n"
        )
        assert not path.exists()


@pytest.mark.parametrize("name", ['a"b', "1jobs", "pg_jobs", "x" * 64, "jobs; DROP"])
def test_a_schema_name_that_is_not_a_plain_identifier_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a schema name celery_taskq uses"):
        Database("postgresql+psycopg://user@localhost/taskq", schema=name)
