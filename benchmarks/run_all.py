"""Every benchmark of celery_taskq against plain Celery, in one run, and the targets they meet.

    .venv/bin/python benchmarks/run_all.py                    # 5000 jobs, 3 repetitions
    .venv/bin/python benchmarks/run_all.py --quick            # 1000 jobs, 1 repetition, small tick

Writes ``benchmarks/RESULTS.md``: the machine and versions, then medians of ``--repeat``
repetitions of

* the drain of ``--tasks`` no-op jobs and the enqueue rate, for plain Celery + Redis, audited
  native Celery tasks (the same app with celery_taskq installed), handler runs on PostgreSQL +
  Redis and handler runs on the embedded default (SQLite + kombu's SQL broker), each measured
  by benchmarks/bench_drain.py's functions;
* enqueue -> start latency p50/p99 on the idle worker of each;
* ``enqueue_many()`` in batches of 1,000 on PostgreSQL and SQLite;
* the OnProcess tick (beat-tick claim + ``process_queue()``) with 10,000 / 100,000 / 1,000,000
  ``TaskQueue`` rows of which 1,000 are due;
* the resident memory of a runner: the Celery pool process that ran the jobs, and a standalone
  ``celery-taskq runner``;
* what ``install()`` costs a Celery app's own tasks: a burst of 2-second tasks on a ``-c 4``
  worker of the app with and without celery_taskq, and beside due handler work; and handler
  runs dispatched by runner tasks or by one message per run (benchmarks/bench_capacity.py);
* the native audit's cost (benchmarks/bench_native_audit.py): plain Celery vs the same tasks
  audited, with and without install()'s Flower defaults, drain and ``.delay()``, on a durable
  and a no-durability PostgreSQL (``--no-native-audit`` leaves it out);
* the handler drain while ``celery-taskq prune`` deletes a history of ``--prune-old-tasks``
  finished tasks (3 runs each) on PostgreSQL, against the drain without pruning
  (benchmarks/bench_prune.py; ``--no-prune`` leaves it out);

and a table of the targets with the ratio measured in this run. Nothing here is a test.
"""

# ruff: noqa: E402 - the project root must be on sys.path before its packages are imported

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import psutil
from sqlalchemy import text

from benchmarks import (
    bench_capacity,
    bench_drain,
    bench_native_audit,
    bench_prune,
    native_audit_report,
)
from benchmarks.bench_drain import (
    HANDLER,
    BenchmarkError,
    Children,
    Config,
    PostgresServer,
    RedisServer,
    Sample,
    child_env,
    machine,
    percentile,
    postgres_server,
    postgres_target,
    rate,
    run_plain,
    run_taskq,
    sqlite_target,
    start_redis,
    versions,
    wait_until,
)
from benchmarks.native_audit_report import report as render_native_audit
from celery_taskq import api
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import upgrade_database

SYSTEMS = ("plain", "native", "native-flower", "postgresql", "sqlite")
TITLES = {
    "plain": "plain Celery + Redis (no-op task, prefork, no result backend)",
    "native": "audited native Celery tasks (same app and Celery settings + celery_taskq, "
    "PostgreSQL + Redis)",
    "native-flower": "audited native Celery tasks with install()'s Flower defaults "
    "(task events on)",
    "postgresql": "celery_taskq handler runs, PostgreSQL + Redis",
    "sqlite": "celery_taskq handler runs, embedded default (SQLite + kombu SQL broker)",
}
ENQUEUE_MANY_BATCH = 1000
TICK_REPEAT = 7

LOAD_TICK_ROWS = """
INSERT INTO "TaskQueue" ("Id", "TaskHandlerClass", "TaskData", "ScheduledOn", "QueuedOn",
    "LastStatus", "MaxRetries", "TaskRunsFailed")
SELECT g, 'benchmarks.handlers.Noop', '{}'::jsonb,
       CASE WHEN g > :size THEN now() + interval '1 day' ELSE now() - interval '1 hour' END,
       now() - interval '1 hour',
       CASE WHEN g > :size - :due THEN NULL ELSE 'success' END,
       5, 0
FROM generate_series(1, :size + :future) AS g
"""
"""``size`` tasks of which the last ``due`` never ran and are due, the rest succeeded, plus
``future`` tasks scheduled a day ahead (not due)."""


@dataclass
class Results:
    """Everything one run measured."""

    drains: dict[str, list[Sample]] = field(default_factory=dict)
    enqueue_many: dict[str, list[float]] = field(default_factory=dict)
    ticks: dict[int, list[float]] = field(default_factory=dict)
    standalone_rss_mb: list[float] = field(default_factory=list)
    capacity: bench_capacity.CapacityResults | None = None
    capacity_config: bench_capacity.CapacityConfig | None = None


def enqueue_many_rate(database_url: str, tasks: int) -> float:
    """Tasks/s of ``enqueue_many()`` in batches of ENQUEUE_MANY_BATCH."""
    batch = [{"handler": HANDLER}] * ENQUEUE_MANY_BATCH
    api.enqueue_many(batch[:10], database_url=database_url)  # warm-up: engine, handler import
    done = 0
    started = time.perf_counter()
    while done < tasks:
        size = min(ENQUEUE_MANY_BATCH, tasks - done)
        api.enqueue_many(batch[:size], database_url=database_url)
        done += size
    return rate(done, time.perf_counter() - started)


def tick_milliseconds(postgres: PostgresServer, size: int, due: int, repeat: int) -> list[float]:
    """Milliseconds of the OnProcess tick over ``size`` TaskQueue rows with ``due`` due."""
    dbname = f"tick_{size}_{os.getpid()}"
    postgres.execute(f"CREATE DATABASE {dbname} TEMPLATE bench_template")
    url = postgres.url(dbname)
    database = Database(url)
    try:
        with database.transaction() as connection:
            connection.execute(text(LOAD_TICK_ROWS), {"size": size, "due": due, "future": due})
            connection.execute(
                text(
                    """SELECT setval(pg_get_serial_sequence('"TaskQueue"', 'Id'),
                    (SELECT max("Id") FROM "TaskQueue"))"""
                )
            )
        with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("VACUUM ANALYZE"))
        settings = Settings(database_url=url, pubsub_url="none", process_interval=0.001)
        service = TaskQueueService(database, settings)
        samples = []
        for index in range(repeat + 1):
            with database.transaction() as connection:
                connection.execute(text('DELETE FROM "TaskRuns"'))
                connection.execute(
                    text(
                        """UPDATE "TaskQueue" SET "LastStatus" = NULL
                        WHERE "Id" > :size - :due AND "Id" <= :size"""
                    ),
                    {"size": size, "due": due},
                )
            time.sleep(0.01)  # a new beat slot for the tick claim
            started = time.perf_counter()
            service.claim_beat_tick("process", settings.process_interval)
            report = service.process_queue()
            elapsed = (time.perf_counter() - started) * 1000
            if report.tasks_given_runs != due:
                raise BenchmarkError(f"tick at {size}: {report.tasks_given_runs} runs, not {due}")
            if index:  # the first tick warms the caches
                samples.append(elapsed)
        return samples
    finally:
        database.close()
        postgres.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def standalone_runner_rss(
    children: Children, target: bench_drain.TaskqTarget, directory: Path, tasks: int
) -> float:
    """MiB of a standalone ``celery-taskq runner`` after it has run ``tasks`` no-op jobs."""
    try:
        api.enqueue_many([{"handler": HANDLER}] * tasks, database_url=target.database_url)
        log = directory / "standalone-runner.log"
        process = children.start(
            [sys.executable, "-m", "celery_taskq", "runner"],
            env=child_env(
                TASKQ_DATABASE_URL=target.database_url, TASKQ_BROKER_URL=target.broker_url
            ),
            log=log,
        )
        database = Database(target.database_url)
        try:
            wait_until(
                lambda: bench_drain.successes(database) >= tasks or None,
                timeout=120 + tasks / 5,
                what="the standalone runner to drain",
                alive=process,
                log=log,
            )
            return float(psutil.Process(process.pid).memory_info().rss / 2**20)
        finally:
            database.close()
            children.stop(process)
    finally:
        api.close_all()
        target.cleanup()


def run_native(
    config: Config,
    children: Children,
    redis_server: RedisServer,
    postgres: PostgresServer,
    rep: int,
    *,
    flower: bool = False,
) -> Sample:
    """Audited native Celery tasks: benchmarks/native_app.py drained by a plain worker (with
    ``flower``, the worker has install()'s defaults for Flower)."""
    target = postgres_target(postgres, redis_server, 100 + rep)
    os.environ["TASKQ_DATABASE_URL"] = target.database_url
    from benchmarks import native_app

    state = native_app.app.taskq
    state.settings = replace(state.settings, database_url=target.database_url)
    state._service = None  # the publisher's audit writes go to this repetition's database
    try:
        return run_plain(
            config,
            children,
            redis_server,
            rep,
            app_module=native_app,
            label="native-flower" if flower else "native",
            extra_env={
                "TASKQ_DATABASE_URL": target.database_url,
                "BENCH_NATIVE_FLOWER": "1" if flower else "",
            },
        )
    finally:
        if state._service is not None:
            state._service.database.close()
            state._service = None
        target.cleanup()


def median(values: list[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True)
class Target:
    """One target of the issue: what is measured, its bound and the value of this run."""

    name: str
    measured: str
    bound: str
    met: bool | None
    profile: str
    """The section of benchmarks/PROFILES.md that shows where this target's time goes."""


def targets(results: Results) -> list[Target]:
    """The targets, each with its measured ratio or figure."""

    def drain(system: str) -> float:
        return median([s.drain_rate for s in results.drains.get(system, [])])

    def enqueue(system: str) -> float:
        return median([s.enqueue_rate for s in results.drains.get(system, [])])

    def p50(system: str) -> float:
        pooled = [v for s in results.drains.get(system, []) for v in s.latencies]
        return percentile(pooled, 0.5) * 1000

    def rss(system: str) -> float:
        values = [s.runner_rss_mb for s in results.drains.get(system, []) if s.runner_rss_mb]
        return median(values)

    plain_drain, plain_enqueue = drain("plain"), enqueue("plain")
    pg_ratio = drain("postgresql") / plain_drain
    native_ratio = drain("native") / plain_drain
    flower_ratio = drain("native-flower") / plain_drain
    enqueue_ratio = enqueue("postgresql") / plain_enqueue
    many = median(results.enqueue_many.get("postgresql", []))
    biggest = max(results.ticks) if results.ticks else 0
    tick = median(results.ticks.get(biggest, []))
    runner_rss = max(rss("postgresql"), median(results.standalone_rss_mb))
    return [
        *capacity_targets(results),
        Target(
            "handler runs on PostgreSQL drain vs plain Celery + Redis",
            f"{pg_ratio:.2f}x ({drain('postgresql'):,.0f} vs {plain_drain:,.0f} jobs/s)",
            ">= 2x",
            check(pg_ratio, lambda v: v >= 2),
            "After: a runner's drain on PostgreSQL",
        ),
        Target(
            "audited native Celery tasks drain vs plain Celery",
            f"{native_ratio:.2f}x ({drain('native'):,.0f} vs {plain_drain:,.0f} jobs/s); "
            f"with install()'s Flower defaults {flower_ratio:.2f}x "
            f"({drain('native-flower'):,.0f} jobs/s)",
            ">= 0.8x",
            check(native_ratio, lambda v: v >= 0.8),
            "Target not met: audited native Celery tasks",
        ),
        Target(
            "`enqueue()` (PostgreSQL) vs `.delay()` (Redis)",
            f"{enqueue_ratio:.2f}x ({enqueue('postgresql'):,.0f} vs {plain_enqueue:,.0f} /s)",
            ">= 2x",
            check(enqueue_ratio, lambda v: v >= 2),
            "After: `enqueue()` on PostgreSQL",
        ),
        Target(
            f"`enqueue_many()` on PostgreSQL (batches of {ENQUEUE_MANY_BATCH:,})",
            f"{many:,.0f} tasks/s",
            ">= 20,000 tasks/s",
            check(many, lambda v: v >= 20_000),
            "After: `enqueue()` on PostgreSQL",
        ),
        Target(
            "latency p50, PostgreSQL + Redis",
            f"{p50('postgresql'):.1f} ms (plain Celery {p50('plain'):.1f} ms)",
            "<= 10 ms",
            check(p50("postgresql"), lambda v: v <= 10),
            "-",
        ),
        Target(
            "latency p50, embedded default",
            f"{p50('sqlite'):.1f} ms",
            "<= 100 ms",
            check(p50("sqlite"), lambda v: v <= 100),
            "-",
        ),
        Target(
            f"OnProcess tick at {biggest:,} rows, 1,000 due",
            f"{tick:.1f} ms",
            "<= 50 ms",
            check(tick, lambda v: v <= 50),
            "Target not met: the OnProcess tick",
        ),
        Target(
            "runner RSS (largest of Celery pool runner and standalone runner)",
            f"{runner_rss:.1f} MB (plain Celery pool process {rss('plain'):.1f} MB)",
            "<= 60 MB",
            check(runner_rss, lambda v: v <= 60),
            "Target not met: runner RSS",
        ),
    ]


def capacity_targets(results: Results) -> list[Target]:
    """The targets of the app's capacity with celery_taskq installed (if measured)."""
    capacity, config = results.capacity, results.capacity_config
    if capacity is None or config is None:
        return []
    walls = {case: median([s.wall for s in samples]) for case, samples in capacity.bursts.items()}
    ratio = bench_capacity.idle_ratio(capacity)
    fewest = bench_capacity.fewest_processes_beside_handlers(capacity)
    return [
        Target(
            f"`-c {config.concurrency}` worker, no handler work: a burst of the app's 2 s tasks "
            "with install() vs without",
            f"{ratio:.2f}x ({walls['installed']:.2f} vs {walls['plain']:.2f} s)",
            "<= 1.10x",
            check(ratio, lambda v: v <= 1.10),
            "-",
        ),
        Target(
            "handler work due: pool processes the app's tasks still get",
            f"at least {fewest} (burst wall {walls['handler-work']:.2f} s)",
            ">= 1",
            fewest >= 1,
            "-",
        ),
    ]


def check(value: float, ok: Callable[[float], bool]) -> bool | None:
    """Whether ``value`` meets its bound; ``None`` when it was not measured (NaN)."""
    return None if value != value else ok(value)


def report(
    args: argparse.Namespace,
    config: Config,
    results: Results,
    facts: dict[str, str],
    started_at: datetime,
    elapsed: float,
) -> str:
    """RESULTS.md."""
    command = "benchmarks/run_all.py" + (" --quick" if args.quick else "")
    if not args.quick:
        command += f" --tasks {config.tasks} --repeat {config.repeat}"
    lines = [
        "# celery_taskq vs plain Celery",
        "",
        f"Generated by `{command}` on {started_at:%Y-%m-%d %H:%M} UTC ({elapsed / 60:.1f} min), "
        "every figure measured in this run. See benchmarks/README.md for what is measured and "
        "how, and benchmarks/PROFILES.md for the hot-path profiles.",
        "",
        "## Targets",
        "",
        "| target | measured | bound | met | where the time goes (PROFILES.md) |",
        "|---|---|---|---|---|",
    ]
    for target in targets(results):
        met = "n/a" if target.met is None else ("yes" if target.met else "**no**")
        where = "" if target.met else target.profile
        lines.append(f"| {target.name} | {target.measured} | {target.bound} | {met} | {where} |")
    lines += [
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in facts.items()),
        "",
        "## Setup",
        "",
        f"- {config.tasks} no-op jobs per drain, {config.repeat} repetition(s), medians; each "
        "repetition runs every system once, in turn, on a fresh database and broker.",
        f"- Workers: prefork `-c {config.concurrency}`. celery_taskq keeps one pool process free "
        f"for its event tasks, so handler runs go through {config.runner_limit} runner(s); plain "
        "Celery and the audited native tasks use every pool process.",
        "- PostgreSQL with the test suite's no-durability settings; Redis without persistence; "
        "SQLite in WAL mode with synchronous=NORMAL.",
        "- Enqueue: one call at a time, no worker running (`.delay()`, audited `.delay()`, "
        "`enqueue()`). Latency: sequential jobs on the idle worker; plain and native: the "
        "task's clock minus the time before `.delay()`; celery_taskq: `StartedOn - QueuedOn`.",
        "",
        "## Drain, enqueue, latency",
        "",
        "| system | enqueue (/s) | drain (jobs/s) | vs plain drain | latency p50 (ms) "
        "| p99 (ms) | runner RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    plain_drain = median([s.drain_rate for s in results.drains.get("plain", [])])
    for system, samples in results.drains.items():
        if not samples:
            continue
        pooled = [v for s in samples for v in s.latencies]
        drain = median([s.drain_rate for s in samples])
        rss_values = [s.runner_rss_mb for s in samples if s.runner_rss_mb]
        lines.append(
            f"| {TITLES[system]} | {median([s.enqueue_rate for s in samples]):,.0f} "
            f"| {drain:,.0f} | {drain / plain_drain:.2f}x "
            f"| {percentile(pooled, 0.5) * 1000:.1f} | {percentile(pooled, 0.99) * 1000:.1f} "
            f"| {median(rss_values):.1f} |"
        )
    lines += [
        "",
        f"Standalone `celery-taskq runner` RSS after a drain: "
        f"{median(results.standalone_rss_mb):.1f} MB.",
        "",
        "## enqueue_many()",
        "",
        "| database | tasks/s |",
        "|---|---:|",
        *(f"| {name} | {median(values):,.0f} |" for name, values in results.enqueue_many.items()),
        "",
        "## OnProcess tick (PostgreSQL)",
        "",
        f"Beat-tick claim + `process_queue()`: time out dead runners, create the due runs. "
        f"Median of {TICK_REPEAT} ticks after a warm-up, each with the due runs reset.",
        "",
        "| TaskQueue rows | due | tick median (ms) | worst (ms) |",
        "|---:|---:|---:|---:|",
        *(
            f"| {size:,} | {args.tick_due:,} | {median(values):.1f} | {max(values):.1f} |"
            for size, values in results.ticks.items()
        ),
        "",
        *capacity_section(results),
        "## Every repetition",
        "",
        "| system | rep | enqueue (/s) | drain (jobs/s) | p50 (ms) | p99 (ms) | RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for system, samples in results.drains.items():
        for rep, s in enumerate(samples, 1):
            lines.append(
                f"| {system} | {rep} | {s.enqueue_rate:,.0f} | {s.drain_rate:,.0f} "
                f"| {percentile(s.latencies, 0.5) * 1000:.1f} "
                f"| {percentile(s.latencies, 0.99) * 1000:.1f} "
                f"| {s.runner_rss_mb or float('nan'):.1f} |"
            )
    lines += capacity_repetitions(results)
    return "\n".join(lines) + "\n"


def capacity_section(results: Results) -> list[str]:
    """The capacity and dispatch sections of bench_capacity.py, with a blank line after."""
    if results.capacity is None or results.capacity_config is None:
        return []
    lines = bench_capacity.report_lines(results.capacity_config, results.capacity)
    # Its per-repetition tables join this file's "Every repetition" section.
    cut = lines.index("### Every repetition")
    return [*lines[:cut]]


def capacity_repetitions(results: Results) -> list[str]:
    """bench_capacity.py's per-repetition tables."""
    if results.capacity is None or results.capacity_config is None:
        return []
    lines = bench_capacity.report_lines(results.capacity_config, results.capacity)
    return ["", *lines[lines.index("### Every repetition") + 2 :]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=5000, help="jobs per drain (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker -c (default 2)")
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--enqueue-many-tasks", type=int, default=20_000)
    parser.add_argument("--tick-sizes", default="10000,100000,1000000")
    parser.add_argument("--tick-due", type=int, default=1000)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--no-capacity",
        action="store_true",
        help="leave out the app-capacity and dispatch measurements (bench_capacity.py)",
    )
    parser.add_argument(
        "--no-native-audit",
        action="store_true",
        help="leave out the native audit's cost on a durable and a no-durability PostgreSQL "
        "(bench_native_audit.py)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1000 jobs, 1 repetition, tick up to 100,000 rows"
    )
    parser.add_argument(
        "--no-prune", action="store_true", help="leave out pruning while runners work"
    )
    parser.add_argument(
        "--prune-old-tasks",
        type=int,
        default=1_000_000,
        help="finished tasks bench_prune.py seeds (default 1,000,000)",
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.prune_old_tasks = 100_000
        args.tasks, args.repeat, args.latency_samples = 1000, 1, 20
        args.enqueue_many_tasks, args.tick_sizes = 5000, "10000,100000"
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    if set(args.systems) - set(SYSTEMS):
        parser.error(f"--systems: choose from {','.join(SYSTEMS)}")
    args.tick_sizes = [int(size) for size in args.tick_sizes.split(",") if size.strip()]
    return args


def native_audit_section(
    args: argparse.Namespace, directory: Path, say: Callable[[str], None]
) -> str:
    """bench_native_audit.py's measurements with this run's repetitions (at most 3,000 tasks a
    drain), as its section of RESULTS.md; a failure is reported in the section."""
    started_at, clock = datetime.now(UTC), time.monotonic()
    options = argparse.Namespace(
        tasks=min(args.tasks, 3000),
        repeat=args.repeat,
        concurrency=args.concurrency,
        variants=list(native_audit_report.DEFAULT_VARIANTS),
        durabilities=list(native_audit_report.DURABILITIES),
        profile=None,
    )
    work = directory / "native-audit"
    work.mkdir(exist_ok=True)
    try:
        measured, facts, settings_seen = bench_native_audit.run(options, work, say)
    except BenchmarkError as exc:
        return f"## The native audit's cost\n\nNot measured: {exc}\n"
    command = (
        f"benchmarks/run_all.py (bench_native_audit.py --tasks {options.tasks} "
        f"--repeat {options.repeat})"
    )
    return render_native_audit(
        measured, facts, settings_seen, command, started_at, time.monotonic() - clock
    )


def prune_section(args: argparse.Namespace, directory: Path, say: Callable[[str], None]) -> str:
    """bench_prune.py's measurements with this run's repetitions, on a durable and a
    no-durability PostgreSQL, as its sections of RESULTS.md; a failure is reported there."""
    sections = []
    for durability in bench_prune.DURABILITIES:
        started_at = datetime.now(UTC)
        options = argparse.Namespace(
            old_tasks=args.prune_old_tasks,
            tasks=max(args.tasks * 4, 4000),
            runners=max(args.concurrency, 1),
            repeat=args.repeat,
            durability=durability,
            command_pause=0.0,
        )
        work = directory / f"prune-{durability}"
        work.mkdir(exist_ok=True)
        try:
            measured = bench_prune.run(options, work, say)
        except BenchmarkError as exc:
            sections.append(
                f"## Pruning while runners work ({durability} PostgreSQL)\n\nNot measured: {exc}\n"
            )
            continue
        sections.append(bench_prune.section(options, measured, started_at))
    return "\n".join(sections)


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run everything, write the results; return the exit status."""
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_system_exit)
    directory = Path(tempfile.mkdtemp(prefix="taskq-bench-all-"))
    config = Config(
        tasks=args.tasks,
        repeat=args.repeat,
        concurrency=args.concurrency,
        latency_samples=args.latency_samples,
        durable=False,
        directory=directory,
    )
    children = Children(directory)
    started_at = datetime.now(UTC)
    clock = time.monotonic()
    results = Results(drains={system: [] for system in args.systems})

    def say(message: str) -> None:
        print(f"[{time.monotonic() - clock:6.0f}s] {message}", flush=True)

    say(f"work directory (logs): {directory}")
    try:
        with contextlib.ExitStack() as stack:
            redis_server = start_redis(children, directory)
            os.environ["BENCH_REDIS_URL"] = redis_server.url(bench_drain.PLAIN_REDIS_DB)
            postgres = stack.enter_context(postgres_server(directory, durable=False))
            postgres.execute("CREATE DATABASE bench_template")
            upgrade_database(postgres.url("bench_template"))
            sqlite_template = directory / "sqlite-template.db"
            upgrade_database(f"sqlite:///{sqlite_template}")
            facts = {**machine(), **versions(redis_server, postgres)}
            for rep in range(1, config.repeat + 1):
                for system in args.systems:
                    say(f"{system}-{rep} ...")
                    if system == "plain":
                        sample = run_plain(config, children, redis_server, rep)
                    elif system in ("native", "native-flower"):
                        sample = run_native(
                            config,
                            children,
                            redis_server,
                            postgres,
                            rep,
                            flower=system == "native-flower",
                        )
                    elif system == "postgresql":
                        target = postgres_target(postgres, redis_server, rep)
                        sample = run_taskq(config, children, target, f"postgresql-{rep}")
                    else:
                        target = sqlite_target(directory, sqlite_template, rep)
                        sample = run_taskq(config, children, target, f"sqlite-{rep}")
                    results.drains[system].append(sample)
                    say(
                        f"  enqueue {sample.enqueue_rate:,.0f}/s, drain "
                        f"{sample.drain_rate:,.0f}/s, p50 "
                        f"{percentile(sample.latencies, 0.5) * 1000:.1f} ms, rss "
                        f"{sample.runner_rss_mb or float('nan'):.1f} MB"
                    )
                for name in ("postgresql", "sqlite"):
                    if name == "postgresql":
                        target = postgres_target(postgres, redis_server, 200 + rep)
                    else:
                        target = sqlite_target(directory, sqlite_template, 200 + rep)
                    try:
                        value = enqueue_many_rate(target.database_url, args.enqueue_many_tasks)
                    finally:
                        api.close_all()
                        target.cleanup()
                    results.enqueue_many.setdefault(name, []).append(value)
                    say(f"enqueue_many {name}: {value:,.0f}/s")
                target = postgres_target(postgres, redis_server, 300 + rep)
                rss = standalone_runner_rss(children, target, directory, 500)
                results.standalone_rss_mb.append(rss)
                say(f"standalone runner rss {rss:.1f} MB")
            if not args.no_capacity:
                results.capacity_config = bench_capacity.CapacityConfig(repeat=config.repeat)
                servers = bench_capacity.Servers(
                    children, redis_server, postgres, directory, results.capacity_config
                )
                results.capacity = bench_capacity.measure(servers, say)
            for size in args.tick_sizes:
                say(f"tick at {size:,} rows ...")
                results.ticks[size] = tick_milliseconds(postgres, size, args.tick_due, TICK_REPEAT)
                say(f"  median {median(results.ticks[size]):.1f} ms")
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        print(f"logs kept in {directory}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        api.close_all()
    text_ = report(args, config, results, facts, started_at, time.monotonic() - clock)
    if not args.no_native_audit:
        text_ += "\n" + native_audit_section(args, directory, say)
    if not args.no_prune:
        text_ += "\n" + prune_section(args, directory, say)
    args.output.write_text(text_)
    print(text_)
    print(f"written to {args.output}")
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
