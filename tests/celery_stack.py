"""A Celery stack for tests: database, broker, and real worker and beat processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

RUNNER_LIMIT = 2


@dataclass
class CeleryStack:
    """A database, a broker, and the Celery processes a test starts on them."""

    database_url: str
    broker_url: str
    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    unset_env: set[str] = field(default_factory=set)
    """Variables the processes started from now on do not get (a test's own defaults)."""

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "TASKQ_DATABASE_URL": self.database_url,
            "TASKQ_BROKER_URL": self.broker_url,
            "TASKQ_TASK_RUNNER_LIMIT": str(RUNNER_LIMIT),
            "TASKQ_PROCESS_INTERVAL": "0.5",
            "TASKQ_CREATE_RUNNERS_INTERVAL": "1",
            "TASKQ_RUNNER_MAX_IDLE": "3",
            "TASKQ_POLL_INTERVAL": "0.1",
            "TASKQ_HEARTBEAT_INTERVAL": "0.5",
            **self.extra_env,
        }
        return {name: value for name, value in env.items() if name not in self.unset_env}

    def start(self, *args: str, log_name: str) -> subprocess.Popen[bytes]:
        log = (self.directory / log_name).open("wb")
        process = subprocess.Popen(
            [sys.executable, *args], env=self.env, cwd=self.directory, stdout=log, stderr=log
        )
        log.close()
        self.processes.append(process)
        return process

    def start_worker(
        self, *, beat: bool = True, name: str = "worker", loglevel: str = "INFO"
    ) -> subprocess.Popen[bytes]:
        return self.start(
            "-m",
            "celery_taskq",
            "worker",
            *(["--beat"] if beat else []),
            "--concurrency",
            "3",
            "--loglevel",
            loglevel,
            "--hostname",
            f"{name}@%h",
            "--schedule",
            str(self.directory / f"{name}-schedule"),
            log_name=f"{name}.log",
        )

    def start_beat(self, name: str) -> subprocess.Popen[bytes]:
        return self.start(
            "-m",
            "celery",
            "-A",
            "celery_taskq",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(self.directory / f"{name}-schedule"),
            log_name=f"{name}.log",
        )

    def log(self, name: str) -> str:
        return (self.directory / name).read_text(errors="replace")

    def log_tails(self, chars: int = 6000) -> list[tuple[str, str]]:
        """The end of each process's log (shown with a failed test's report)."""
        return [
            (path.name, path.read_text(errors="replace")[-chars:])
            for path in sorted(self.directory.glob("*.log"))
        ]

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture(params=["embedded", pytest.param("postgresql-redis", marks=pytest.mark.postgresql)])
def stack(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[CeleryStack]:
    """A fresh stack; every process it started is stopped at the end of the test."""
    if request.param == "embedded":
        database_path = tmp_path / "taskq.db"
        database_path.write_bytes(sqlite_template.read_bytes())
        stack = CeleryStack(
            f"sqlite:///{database_path}", f"sqla+sqlite:///{tmp_path / 'broker.db'}", tmp_path
        )
    else:
        stack = CeleryStack(
            str(request.getfixturevalue("postgresql_schema_url")),
            str(request.getfixturevalue("redis_url")),
            tmp_path,
        )
    yield stack
    stack.stop_all()
