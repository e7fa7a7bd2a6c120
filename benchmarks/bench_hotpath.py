"""The runner's and enqueue's hot paths in one process, with an optional pyinstrument profile.

    .venv/bin/python benchmarks/bench_hotpath.py [--database sqlite|postgresql] [--tasks N]
        [--profile enqueue|drain]

Queues ``--tasks`` no-op tasks with ``enqueue()`` one at a time, then drains them with one
:class:`~celery_taskq.core.runner.loop.TaskRunner` in this process (``burst``), and prints both
rates. No Celery and no broker: what is left is celery_taskq's own cost per task. With ``--profile``
the chosen phase runs under pyinstrument and its top lines are printed (benchmarks/PROFILES.md keeps
them). PostgreSQL is a private cluster started as benchmarks/bench_drain.py starts one.
"""

# ruff: noqa: E402 - the project root must be on sys.path before its packages are imported

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from benchmarks.bench_drain import HANDLER, postgres_server
from celery_taskq import api
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.migrate import upgrade_database


@contextlib.contextmanager
def database(kind: str, directory: Path) -> Iterator[str]:
    """A migrated, empty database URL of ``kind``."""
    if kind == "sqlite":
        url = f"sqlite:///{directory / 'hotpath.db'}"
        upgrade_database(url)
        yield url
        return
    with postgres_server(directory, durable=False) as server:
        server.execute("CREATE DATABASE hotpath")
        url = server.url("hotpath")
        upgrade_database(url)
        yield url


@contextlib.contextmanager
def profiled(enabled: bool, title: str) -> Iterator[None]:
    """Run the block under pyinstrument when ``enabled`` and print the profile's top lines."""
    if not enabled:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        print(f"--- profile: {title}")
        print(
            profiler.output_text(
                unicode=False,
                color=False,
                show_all=bool(__import__("os").environ.get("HOTPATH_SHOW_ALL")),
            )
        )


def main(argv: list[str] | None = None) -> int:
    """Run the hot-path benchmark; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--profile", choices=("enqueue", "drain"), default=None)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="taskq-hotpath-") as directory,
        database(args.database, Path(directory)) as url,
    ):
        with profiled(args.profile == "enqueue", f"enqueue() x {args.tasks} on {args.database}"):
            started = time.perf_counter()
            for _ in range(args.tasks):
                api.enqueue(HANDLER, database_url=url)
            enqueue_seconds = time.perf_counter() - started
        settings = Settings(
            database_url=url, pubsub_url="none", poll_interval=0.01, runner_memory_limit_mb=4096
        )
        service = TaskQueueService(api.get_service(url).database, settings)
        runner = service.get_task_runner()
        assert runner is not None  # noqa: S101 - a fresh database has no runner yet
        with profiled(args.profile == "drain", f"drain of {args.tasks} on {args.database}"):
            started = time.perf_counter()
            runner.run(burst=True)
            drain_seconds = time.perf_counter() - started
        print(
            f"{args.database}: enqueue {args.tasks / enqueue_seconds:,.0f}/s, "
            f"drain {runner.runs_done / drain_seconds:,.0f}/s ({runner.runs_done} runs)"
        )
        api.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
