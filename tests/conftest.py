"""Shared fixtures: every service test runs once on SQLite and once on a real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import upgrade_database
from tests.scheduling import SuiteScheduling, make_scheduler

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.redis", "tests.celery_stack"]


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> SuiteScheduling:
    """Run the tests that start processes one at a time, the rest beside them
    (:mod:`tests.scheduling`)."""
    return make_scheduler(config, log)


PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEST_HOST = "test-host"


class FakeClock:
    """A clock the test moves by hand: services never read the wall clock in tests."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += timedelta(seconds=seconds)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report ends with the logs of the processes its fixtures started (any
    fixture value with a ``log_tails()`` method), so that a failure in CI can be read."""
    report = yield
    if report.when == "call" and report.failed:
        for value in getattr(item, "funcargs", {}).values():
            log_tails = getattr(value, "log_tails", None)
            if callable(log_tails):
                for name, tail in log_tails():
                    report.sections.append((f"log {name} (end)", tail))
    return report


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session; tests get copies."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """URL of a migrated, empty database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "taskq.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite:///{path}"
    return str(request.getfixturevalue("postgresql_schema_url"))


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for one test: quick polling, a fixed host name."""
    return Settings(
        database_url=database_url,
        hostname=TEST_HOST,
        poll_interval=0.05,
        heartbeat_interval=0.2,
        heartbeat_timeout=60.0,
        # The test process itself outgrows the 100 MiB default; only the memory test lowers it.
        runner_memory_limit_mb=4096,
        retry_backoff_base=0.0,  # retries due at once; the backoff tests set their own
    )


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    """The engine for the test's database."""
    database = Database(settings.database_url)
    yield database
    database.close()


@pytest.fixture
def clock() -> FakeClock:
    """A hand-moved clock."""
    return FakeClock()


@pytest.fixture
def service(database: Database, settings: Settings, clock: FakeClock) -> TaskQueueService:
    """The queue service on the test database, with the fake clock."""
    return TaskQueueService(database, settings, clock=clock)


@pytest.fixture
def subprocess_env(database_url: str) -> dict[str, str]:
    """Environment for child processes: the test database and the tests package importable."""
    python_path = os.pathsep.join(
        [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return {
        **os.environ,
        "TASKQ_DATABASE_URL": database_url,
        "TASKQ_POLL_INTERVAL": "0.05",
        "TASKQ_HEARTBEAT_INTERVAL": "0.5",
        "PYTHONPATH": python_path,
    }


CLI = (sys.executable, "-m", "celery_taskq")
"""The command line, run as a child process."""


@pytest.fixture
def live(database: Database, settings: Settings) -> TaskQueueService:
    """The service on the wall clock and the real host name, as child processes see it."""
    return TaskQueueService(database, Settings(database_url=settings.database_url))


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    """Children started by a test; killed and reaped at its end whatever happened."""
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(autouse=True)
def _isolate_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Per test: no enqueue hooks left by an earlier install(), and no engines kept after."""
    from celery_taskq import api

    monkeypatch.setattr(api, "_enqueue_hooks", [])
    yield
    api.close_all()
