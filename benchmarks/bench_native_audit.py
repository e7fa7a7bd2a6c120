"""The native audit's cost: plain Celery vs the same tasks audited, on a durable and a
no-durability PostgreSQL, side by side in one run.

    .venv/bin/python benchmarks/bench_native_audit.py [--tasks N] [--repeat R]

Variants, each drained by ``celery worker -P prefork -c C`` on Redis (same C for all):

``plain``
    benchmarks/plain_app.py: a no-op task, no celery_taskq.
``audited``
    benchmarks/native_app.py: the same task with ``install(app, audit_celery_tasks=True)``, whose
    Celery settings install() leaves as they are (task events off, prefetch multiplier 4): the
    audit's own cost, and what an app pays with install()'s defaults.
``audited-flower``
    the same while Flower watches: the worker sends task events, as Flower's ``enable_events``
    command makes it (``benchmarks.plain_app.FLOWER_ATTACHED``).
``plain-flower``
    ``plain`` while Flower watches: what Flower's events cost without the audit, so that
    ``audited-flower`` vs ``plain-flower`` is the audit's own cost under them.
``audited-sync`` (only when asked for with ``--variants``)
    ``audited`` with ``TASKQ_AUDIT_WRITE_BEHIND=false``: every audit write committed before
    the task goes on, to show what writing behind gives.

Each repetition runs every variant once on each PostgreSQL, in a rotating order: ``durable``
(fsync and synchronous_commit on, PostgreSQL's defaults) and ``no-durability`` (fsync,
synchronous_commit and full_page_writes off, as the test suite runs it). For each: the
``.delay()`` rate of N calls in this process with no worker running, how long after the last
call this process's audit writes were all committed, the drain rate of the N tasks (from the
first task's start to the last one's, by the tasks' own clocks) and, after the worker stopped,
whether every task has its audit rows. The section it writes in benchmarks/RESULTS.md (between
its markers, replacing the previous one) holds the medians, the spread and the load average.

``--profile DIR`` writes a cProfile of every audited pool process (``pool-<pid>.prof``) and of
this process's ``.delay()`` loop, and prints the top of each.
"""

# ruff: noqa: E402 - the project root must be on sys.path before its packages are imported

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import redis
from sqlalchemy import text

from benchmarks import plain_app
from benchmarks.bench_drain import (
    PLAIN_REDIS_DB,
    BenchmarkError,
    Children,
    PostgresServer,
    RedisServer,
    child_env,
    machine,
    postgres_server,
    rate,
    start_redis,
    versions,
    wait_until,
)
from benchmarks.native_audit_probes import (
    cpu_seconds,
    cpu_used,
    pool_writer_stats,
    postgres_processes,
    worker_processes,
    writer_stats,
)
from benchmarks.native_audit_report import (
    DEFAULT_VARIANTS,
    DURABILITIES,
    VARIANTS,
    Run,
    Sample,
    WriterStats,
    write_section,
)
from benchmarks.native_audit_report import report as render
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import upgrade_database

FLUSH_TIMEOUT = 120.0


def audit_writer() -> object | None:
    """This process's audit writer of benchmarks/native_app.py, where the audit has one."""
    from benchmarks import native_app

    auditor = native_app.app.taskq.auditor
    return getattr(auditor, "writer", None)


def flush_audit() -> float | None:
    """Seconds until this process's audit writes are committed (``None``: no writer)."""
    writer = audit_writer()
    flush: Callable[[float], bool] | None = getattr(writer, "flush", None)
    if flush is None:
        return None
    started = time.perf_counter()
    if not flush(FLUSH_TIMEOUT):
        raise BenchmarkError(f"the audit writes were not committed within {FLUSH_TIMEOUT:.0f}s")
    return time.perf_counter() - started


@contextlib.contextmanager
def audited_database(url: str, *, write_behind: bool) -> Iterator[None]:
    """Point benchmarks/native_app.py's audit in this process at ``url``."""
    from benchmarks import native_app

    state = native_app.app.taskq
    state.settings = replace(state.settings, database_url=url, audit_write_behind=write_behind)
    state._service = None
    try:
        yield
    finally:
        if state._service is not None:
            state._service.database.close()
            state._service = None


def measure(
    children: Children,
    server: RedisServer,
    postgres: PostgresServer | None,
    database_url: str | None,
    variant: str,
    label: str,
    tasks: int,
    concurrency: int,
    directory: Path,
    profile: Path | None,
) -> Sample:
    """Queue ``tasks`` no-op tasks of ``variant``, then drain them with a fresh worker."""
    from benchmarks import native_app

    audited, flower = variant.startswith("audited"), variant.endswith("flower")
    module = native_app if audited else plain_app
    client = redis.Redis.from_url(server.url(PLAIN_REDIS_DB))
    server.flush()
    use_broker(module.app, server.url(PLAIN_REDIS_DB))
    with contextlib.ExitStack() as stack:
        if audited:
            assert database_url is not None  # noqa: S101
            stack.enter_context(
                audited_database(database_url, write_behind=variant != "audited-sync")
            )
        profiler = cProfile.Profile() if profile is not None and audited else None
        caller_before = writer_stats(audit_writer()) if audited else None
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for _ in range(tasks):
            module.noop.delay()
        if profiler is not None:
            profiler.disable()
        delay_rate = rate(tasks, time.perf_counter() - started)
        flushed = flush_audit() if audited else None
        caller_after = writer_stats(audit_writer()) if audited else None
        caller = None
        if caller_before is not None and caller_after is not None:
            caller = WriterStats(
                caller_after.written - caller_before.written,
                caller_after.transactions - caller_before.transactions,
                caller_after.write_seconds - caller_before.write_seconds,
                caller_after.failures - caller_before.failures,
            )
        if profiler is not None and profile is not None:
            profiler.dump_stats(profile / f"delay-{label}.prof")

        log = directory / f"{label}.log"
        stats_directory = directory / f"{label}-stats"
        stats_directory.mkdir()
        env = child_env(
            BENCH_REDIS_URL=server.url(PLAIN_REDIS_DB),
            BENCH_NATIVE_FLOWER="1" if audited and flower else "",
            BENCH_PLAIN_FLOWER="1" if flower and not audited else "",
            BENCH_PROFILE_DIR=str(profile or ""),
            BENCH_STATS_DIR=str(stats_directory),
            TASKQ_AUDIT_WRITE_BEHIND="false" if variant == "audited-sync" else "true",
            **({"TASKQ_DATABASE_URL": database_url} if database_url else {}),
        )
        worker = children.start(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                module.__name__,
                "worker",
                "-P",
                "prefork",
                "-c",
                str(concurrency),
                "--loglevel",
                "WARNING",
                "--hostname",
                f"{label}@%h",
            ],
            env=env,
            log=log,
        )

        def done() -> int:
            return int(client.get(plain_app.DONE_KEY) or 0)

        try:
            # CPU is read from the first task on, so the worker's start-up is left out.
            done_before = wait_until(
                done,
                timeout=120,
                what=f"{label}: a first task",
                alive=worker,
                log=log,
                interval=0.01,
            )
            worker_before = cpu_seconds(worker_processes(worker))
            postgres_before = cpu_seconds(postgres_processes(postgres))
            wait_until(
                lambda: done() >= tasks or None,
                timeout=120 + tasks / 5,
                what=f"{label}: {tasks} tasks to run",
                alive=worker,
                log=log,
            )
            counted = max(tasks - done_before, 1)
            worker_ms = cpu_used(worker_before, cpu_seconds(worker_processes(worker)))
            postgres_ms = cpu_used(postgres_before, cpu_seconds(postgres_processes(postgres)))
            first = client.zscore(plain_app.TIMES_KEY, "first")
            last = client.zscore(plain_app.TIMES_KEY, "last")
            if first is None or last is None:
                raise BenchmarkError(f"{label}: the tasks recorded no times")
        finally:
            children.stop(worker)
            client.close()
    rows = audit_rows(database_url) if audited and database_url is not None else None
    return Sample(
        delay_rate,
        rate(tasks, last - first),
        flushed,
        rows,
        worker_cpu_ms=worker_ms * 1000 / counted,
        postgres_cpu_ms=postgres_ms * 1000 / counted if postgres is not None else float("nan"),
        caller_writer=caller,
        pool_writer=pool_writer_stats(stats_directory),
    )


def use_broker(app: Any, url: str) -> None:
    """Publish through ``url`` from now on, dropping connections pooled to another Redis (an
    earlier run's, in run_all.py)."""
    if app.conf.broker_url == url:
        return
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None
    app.conf.broker_url = url


def audit_rows(url: str) -> tuple[int, int]:
    """``(native TaskQueue rows, successful runs)`` in the database at ``url``."""
    database = Database(url)
    try:
        with database.transaction(read_only=True) as connection:
            queued = connection.execute(
                text(
                    """SELECT count(*) FROM "TaskQueue" WHERE "TaskHandlerClass" LIKE 'celery:%'"""
                )
            ).scalar_one()
            succeeded = connection.execute(
                text("""SELECT count(*) FROM "TaskRuns" WHERE "Status" = 'success'""")
            ).scalar_one()
    finally:
        database.close()
    return int(queued), int(succeeded)


def fresh_database(postgres: PostgresServer, name: str) -> tuple[str, Callable[[], None]]:
    """A database cloned from the migrated template, and how to drop it."""
    postgres.execute(f"CREATE DATABASE {name} TEMPLATE bench_template")

    def drop() -> None:
        postgres.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    return postgres.url(name), drop


def run(
    args: argparse.Namespace, directory: Path, say: Callable[[str], None]
) -> tuple[Run, dict[str, str], dict[str, str]]:
    """Start the servers and measure every variant ``args.repeat`` times, interleaved."""
    results = Run(args.tasks, args.repeat, args.concurrency)
    children = Children(directory)
    settings_seen: dict[str, str] = {}
    try:
        with contextlib.ExitStack() as stack:
            server = start_redis(children, directory)
            os.environ["BENCH_REDIS_URL"] = server.url(PLAIN_REDIS_DB)
            clusters: dict[str, PostgresServer] = {}
            for durability in args.durabilities:
                postgres = stack.enter_context(
                    postgres_server(directory, durable=durability == "durable")
                )
                postgres.execute("CREATE DATABASE bench_template")
                upgrade_database(postgres.url("bench_template"))
                fsync = postgres.execute("SHOW fsync")[0]
                commit = postgres.execute("SHOW synchronous_commit")[0]
                settings_seen[durability] = f"fsync={fsync}, synchronous_commit={commit}"
                if (fsync == "on") != (durability == "durable"):
                    raise BenchmarkError(f"{durability} PostgreSQL runs with {fsync=}")
                clusters[durability] = postgres
            facts = {**machine(), **versions(server, next(iter(clusters.values()), None))}
            plan = [(d, v) for d in args.durabilities for v in args.variants]
            for rep in range(1, args.repeat + 1):
                results.load.append(os.getloadavg())
                shift = (rep - 1) % len(plan)
                for durability, variant in plan[shift:] + plan[:shift]:
                    label = f"{variant}-{durability}-{rep}"
                    say(f"{label} ...")
                    url, drop = None, None
                    if variant.startswith("audited"):
                        name = f"bench_{variant.replace('-', '_')}_{rep}_{os.getpid()}"
                        url, drop = fresh_database(clusters[durability], name)
                    try:
                        sample = measure(
                            children,
                            server,
                            clusters[durability],
                            url,
                            variant,
                            label,
                            args.tasks,
                            args.concurrency,
                            directory,
                            args.profile,
                        )
                    finally:
                        if drop is not None:
                            drop()
                    results.samples.setdefault((durability, variant), []).append(sample)
                    flushed = (
                        ""
                        if sample.flush_seconds is None
                        else (f", audit committed {sample.flush_seconds:.2f}s after the last call")
                    )
                    say(
                        f"  .delay() {sample.delay_rate:,.0f}/s, drain "
                        f"{sample.drain_rate:,.0f}/s{flushed}, audit rows {sample.audited}"
                    )
            results.load.append(os.getloadavg())
    finally:
        children.stop_all()
    return results, facts, settings_seen


def print_profiles(directory: Path, top: int = 25) -> None:
    """The top of every profile written to ``directory``."""
    for path in sorted(directory.glob("*.prof")):
        print(f"\n=== {path.name} ===")
        pstats.Stats(str(path)).sort_stats("cumulative").print_stats(top)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=3000, help="tasks per drain (default 3000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker -c (default 2)")
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"plain and any of {','.join(VARIANTS[1:])} (default {','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument("--durabilities", default=",".join(DURABILITIES))
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).with_name("RESULTS.md"),
        help="the file whose section this run replaces (default benchmarks/RESULTS.md)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="write cProfiles here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument(
        "--code", default="", help="what code was measured (e.g. a commit), named in the section"
    )
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.durabilities = [d.strip() for d in args.durabilities.split(",") if d.strip()]
    if set(args.variants) - set(VARIANTS) or "plain" not in args.variants:
        parser.error(f"--variants: plain and any of {','.join(VARIANTS)}")
    if not args.durabilities or set(args.durabilities) - set(DURABILITIES):
        parser.error(f"--durabilities: choose from {','.join(DURABILITIES)}")
    if args.tasks < 1 or args.repeat < 1 or args.concurrency < 1:
        parser.error("--tasks, --repeat and --concurrency must be positive")
    return args


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its section; return the exit status."""
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_system_exit)
    directory = Path(tempfile.mkdtemp(prefix="taskq-bench-native-"))
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()
    started_at, clock = datetime.now(UTC), time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - clock:6.0f}s] {message}", flush=True)

    say(f"work directory (logs): {directory}")
    try:
        results, facts, settings_seen = run(args, directory, say)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}\nlogs kept in {directory}", file=sys.stderr)
        return 1
    command = f"benchmarks/bench_native_audit.py --tasks {args.tasks} --repeat {args.repeat}" + (
        f" --concurrency {args.concurrency}" if args.concurrency != 2 else ""
    )
    section = render(
        results, facts, settings_seen, command, started_at, time.monotonic() - clock, args.code
    )
    write_section(args.output, section)
    print(section)
    print(f"written to {args.output}")
    if args.profile is not None:
        print_profiles(args.profile)
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
