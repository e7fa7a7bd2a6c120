"""Every benchmark of celery_taskq against plain Celery and PgQueuer, in one run, and the
targets they meet.

    .venv/bin/python benchmarks/run_all.py                    # 5000 jobs, 3 repetitions
    .venv/bin/python benchmarks/run_all.py --quick            # 1000 jobs, 1 repetition, small tick
    .venv/bin/python benchmarks/run_all.py --quick --no-prune --no-native-audit --no-capacity \
        --output /tmp/RESULTS.md                              # the drains and ticks alone

Writes ``benchmarks/RESULTS.md`` (``--output``): the machine and versions, then medians of
``--repeat`` repetitions of the figures below. Every PostgreSQL figure is measured on two
servers started side by side, a **durable** one (fsync, synchronous_commit and
full_page_writes on, checked with ``SHOW``) and a **no-durability** one (all three off, as the
test suite runs), each labelled:

* the drain of ``--tasks`` no-op jobs and the enqueue rate, for plain Celery + Redis,
  celery_taskq's handler runs on PostgreSQL + Redis (on each PostgreSQL) and on the embedded
  default (SQLite + kombu's SQL broker), and PgQueuer with its own worker on each PostgreSQL
  (benchmarks/bench_pgqueuer.py; skipped, with how to install it, when it is not installed),
  each by benchmarks/bench_drain.py's functions; with ``--batched-env`` (or BATCHED_ENV) the
  handler drain runs in the batched runner mode too, labelled;
* enqueue -> start latency p50/p99 on the idle worker of each;
* ``enqueue_many()`` in batches of 1,000 on each PostgreSQL and on SQLite;
* the OnProcess tick (beat-tick claim + ``process_queue()``) on each PostgreSQL with 10,000 /
  100,000 / 1,000,000 ``TaskQueue`` rows of which 1,000 are due, and at the largest size with
  nothing due;
* the resident memory of a runner: the Celery pool process that ran the jobs, and a standalone
  ``celery-taskq runner``;
* what ``install()`` costs a Celery app's own tasks (benchmarks/bench_capacity.py;
  ``--no-capacity`` leaves it out);
* the native audit's cost (benchmarks/bench_native_audit.py, on both PostgreSQLs;
  ``--no-native-audit`` leaves it out);
* the handler drain while ``celery-taskq prune`` deletes a history of ``--prune-old-tasks``
  finished tasks, on both PostgreSQLs (benchmarks/bench_prune.py; ``--no-prune``);

and a table of the targets with the ratio measured in this run (benchmarks/run_all_targets.py;
the figures go into run_all_results.Results, RESULTS.md's text is run_all_report.py's).
Nothing here is a test.
"""

# ruff: noqa: E402 - the project root must be on sys.path before its packages are imported

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))


from benchmarks import (
    bench_capacity,
    bench_drain,
    bench_native_audit,
    bench_pgqueuer,
    bench_prune,
    native_audit_report,
)
from benchmarks.bench_drain import (
    BenchmarkError,
    Children,
    Config,
    PostgresServer,
    RedisServer,
    Sample,
    machine,
    percentile,
    postgres_server,
    postgres_target,
    run_plain,
    run_taskq,
    sqlite_target,
    start_redis,
    versions,
)
from benchmarks.native_audit_report import Run as NativeAuditRun
from benchmarks.native_audit_report import report as render_native_audit
from benchmarks.run_all_measures import enqueue_many_rate, standalone_runner_rss, tick_milliseconds
from benchmarks.run_all_report import report
from benchmarks.run_all_results import (
    DEFAULT_SYSTEMS,
    DURABILITIES,
    ON_POSTGRESQL,
    SYSTEMS,
    TICK_REPEAT,
    Results,
    key,
    median,
)
from celery_taskq import api
from celery_taskq.core.storage.migrate import upgrade_database

BATCHED_ENV = {"TASKQ_GROUP_COMMIT_MS": "20"}
"""The environment that turns the runners' fast mode on (batched claims and group-committed
successes; strict, ``TASKQ_GROUP_COMMIT_MS=0``, is the default): the handler drain is measured
in both modes. ``--batched-env ''`` measures the default mode alone."""
SERVER_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")
NATIVE_AUDIT_TASKS = 2000
"""Tasks a drain of the native audit's section at most: its 24 drains (4 variants, 2
PostgreSQLs, 3 repetitions) would take a third of the run at 5,000."""
PRUNE_MIN_RUNS = 4000
"""Runs a drain of the pruning section at least (twice ``--tasks`` by default): 9 drains on
each PostgreSQL."""


def run_native(
    config: Config,
    children: Children,
    redis_server: RedisServer,
    postgres: PostgresServer,
    rep: int,
    *,
    label: str,
    flower: bool = False,
) -> Sample:
    """Audited native Celery tasks: benchmarks/native_app.py drained by a plain worker (with
    ``flower``, the worker sends task events as while Flower watches it)."""
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
            label=label,
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


def measure_drain(
    config: Config,
    children: Children,
    redis_server: RedisServer,
    servers: dict[str, PostgresServer],
    sqlite_template: Path,
    system: str,
    durability: str | None,
    rep: int,
    args: argparse.Namespace,
) -> Sample:
    """One repetition of one system (on the PostgreSQL of ``durability``)."""
    label = f"{key(system, durability).replace('/', '-')}-{rep}"
    if system == "plain":
        return run_plain(config, children, redis_server, rep)
    if system == "sqlite":
        target = sqlite_target(config.directory, sqlite_template, rep)
        return run_taskq(config, children, target, label)
    assert durability is not None  # noqa: S101 - every other system runs on PostgreSQL
    postgres = servers[durability]
    if system in ("native", "native-flower"):
        flower = system == "native-flower"
        return run_native(config, children, redis_server, postgres, rep, label=label, flower=flower)
    if system == "pgqueuer":
        return bench_pgqueuer.run_pgqueuer(
            config, children, postgres, label, args.pgqueuer_batch_size
        )
    target = postgres_target(postgres, redis_server, rep)
    extra = args.batched_env if system == "postgresql-batched" else {}
    return run_taskq(config, children, target, label, extra_env=extra)


def start_postgres(
    stack: contextlib.ExitStack, directory: Path, results: Results
) -> dict[str, PostgresServer]:
    """Both PostgreSQL servers, each with the schema in ``bench_template``; what each answers
    to ``SHOW`` goes into ``results``, and a server that is not what its name says stops the
    run."""
    servers = {}
    for durability in DURABILITIES:
        postgres = stack.enter_context(postgres_server(directory, durable=durability == "durable"))
        shown = {name: str(postgres.execute(f"SHOW {name}")[0]) for name in SERVER_SETTINGS}
        wanted = "on" if durability == "durable" else "off"
        if set(shown.values()) != {wanted}:
            raise BenchmarkError(f"the {durability} PostgreSQL runs with {shown}")
        results.server_settings[durability] = ", ".join(f"{n}={v}" for n, v in shown.items())
        postgres.execute("CREATE DATABASE bench_template")
        upgrade_database(postgres.url("bench_template"))
        servers[durability] = postgres
    return servers


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
    parser.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated, from {','.join(SYSTEMS)} (default {','.join(DEFAULT_SYSTEMS)})",
    )
    parser.add_argument(
        "--batched-env",
        default=",".join(f"{name}={value}" for name, value in BATCHED_ENV.items()),
        help="NAME=VALUE[,NAME=VALUE]: the environment of the runners' batched mode; the "
        "handler drain is then measured in both modes (postgresql and postgresql-batched)",
    )
    parser.add_argument(
        "--pgqueuer-batch-size",
        type=int,
        default=bench_pgqueuer.BATCH_SIZE,
        help=f"jobs per PgQueuer dequeue (default {bench_pgqueuer.BATCH_SIZE}, its own)",
    )
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
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).with_name("RESULTS.md"),
        help="where to write the results (default benchmarks/RESULTS.md)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.prune_old_tasks = 100_000
        args.tasks, args.repeat, args.latency_samples = 1000, 1, 20
        args.enqueue_many_tasks, args.tick_sizes = 5000, "10000,100000"
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    if not args.systems or set(args.systems) - set(SYSTEMS):
        parser.error(f"--systems: choose from {','.join(SYSTEMS)}")
    try:
        args.tick_sizes = [int(size) for size in args.tick_sizes.split(",") if size.strip()]
    except ValueError:
        parser.error(f"--tick-sizes: comma-separated numbers, not {args.tick_sizes!r}")
    pairs = [pair.strip() for pair in args.batched_env.split(",") if pair.strip()]
    if any("=" not in pair or not pair.split("=", 1)[0] for pair in pairs):
        parser.error(f"--batched-env: NAME=VALUE[,NAME=VALUE], not {args.batched_env!r}")
    args.batched_env = dict(pair.split("=", 1) for pair in pairs)
    if args.batched_env and "postgresql" in args.systems:
        at = args.systems.index("postgresql") + 1
        args.systems[at:at] = [] if "postgresql-batched" in args.systems else ["postgresql-batched"]
    if "postgresql-batched" in args.systems and not args.batched_env:
        parser.error("--systems postgresql-batched needs --batched-env")
    counts = (args.tasks, args.repeat, args.concurrency, args.latency_samples)
    if min(*counts, args.pgqueuer_batch_size) < 1:
        parser.error(
            "--tasks, --repeat, --concurrency, --latency-samples and --pgqueuer-batch-size "
            "must be positive"
        )
    return args


def native_audit_section(
    args: argparse.Namespace, directory: Path, say: Callable[[str], None]
) -> tuple[NativeAuditRun | None, str]:
    """bench_native_audit.py's measurements with this run's repetitions (at most
    NATIVE_AUDIT_TASKS tasks a drain), and its section of RESULTS.md; a failure is reported
    in the section."""
    started_at, clock = datetime.now(UTC), time.monotonic()
    options = argparse.Namespace(
        tasks=min(args.tasks, NATIVE_AUDIT_TASKS),
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
        return None, f"## The native audit's cost\n\nNot measured: {exc}\n"
    command = (
        f"benchmarks/run_all.py (bench_native_audit.py --tasks {options.tasks} "
        f"--repeat {options.repeat})"
    )
    return measured, render_native_audit(
        measured, facts, settings_seen, command, started_at, time.monotonic() - clock
    )


def prune_section(
    args: argparse.Namespace, directory: Path, say: Callable[[str], None]
) -> tuple[dict[str, bench_prune.Measured], str]:
    """bench_prune.py's measurements with this run's repetitions, on a durable and a
    no-durability PostgreSQL, and its sections of RESULTS.md; a failure is reported there."""
    sections, measured_by = [], {}
    for durability in bench_prune.DURABILITIES:
        started_at = datetime.now(UTC)
        options = argparse.Namespace(
            old_tasks=args.prune_old_tasks,
            tasks=max(args.tasks * 2, PRUNE_MIN_RUNS),
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
        measured_by[durability] = measured
        sections.append(bench_prune.section(options, measured, started_at))
    return measured_by, "\n".join(sections)


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
    results = Results(tick_due=args.tick_due, batched_env=args.batched_env)

    def say(message: str) -> None:
        print(f"[{time.monotonic() - clock:6.0f}s] {message}", flush=True)

    if "pgqueuer" in args.systems:
        results.pgqueuer_skipped = bench_pgqueuer.missing()
        if results.pgqueuer_skipped:
            say(f"PgQueuer skipped: {results.pgqueuer_skipped}")
            args.systems.remove("pgqueuer")
        else:
            results.pgqueuer = bench_pgqueuer.settings(args.pgqueuer_batch_size)
    plan = [
        (system, durability)
        for system in args.systems
        for durability in (DURABILITIES if system in ON_POSTGRESQL else (None,))
    ]
    results.drains = {key(system, durability): [] for system, durability in plan}
    say(f"work directory (logs): {directory}")
    try:
        with contextlib.ExitStack() as stack:
            redis_server = start_redis(children, directory)
            os.environ["BENCH_REDIS_URL"] = redis_server.url(bench_drain.PLAIN_REDIS_DB)
            servers = start_postgres(stack, directory, results)
            sqlite_template = directory / "sqlite-template.db"
            upgrade_database(f"sqlite:///{sqlite_template}")
            facts = {**machine(), **versions(redis_server, servers["durable"])}
            for rep in range(1, config.repeat + 1):
                for system, durability in plan:
                    name = key(system, durability)
                    say(f"{name} {rep} ...")
                    sample = measure_drain(
                        config,
                        children,
                        redis_server,
                        servers,
                        sqlite_template,
                        system,
                        durability,
                        rep,
                        args,
                    )
                    results.drains[name].append(sample)
                    say(
                        f"  enqueue {sample.enqueue_rate:,.0f}/s, drain "
                        f"{sample.drain_rate:,.0f}/s, p50 "
                        f"{percentile(sample.latencies, 0.5) * 1000:.1f} ms, rss "
                        f"{sample.runner_rss_mb or float('nan'):.1f} MB"
                    )
                for durability in (*DURABILITIES, None):
                    if durability is None:
                        target = sqlite_target(directory, sqlite_template, 200 + rep)
                    else:
                        target = postgres_target(servers[durability], redis_server, 200 + rep)
                    try:
                        value = enqueue_many_rate(target.database_url, args.enqueue_many_tasks)
                    finally:
                        api.close_all()
                        target.cleanup()
                    name = "sqlite" if durability is None else key("postgresql", durability)
                    results.enqueue_many.setdefault(name, []).append(value)
                    say(f"enqueue_many {name}: {value:,.0f}/s")
                target = postgres_target(servers["no-durability"], redis_server, 300 + rep)
                rss = standalone_runner_rss(children, target, directory, 500)
                results.standalone_rss_mb.append(rss)
                say(f"standalone runner rss {rss:.1f} MB")
            if not args.no_capacity:
                results.capacity_config = bench_capacity.CapacityConfig(repeat=config.repeat)
                capacity_servers = bench_capacity.Servers(
                    children,
                    redis_server,
                    servers["no-durability"],
                    directory,
                    results.capacity_config,
                )
                results.capacity = bench_capacity.measure(capacity_servers, say)
            for durability, postgres in servers.items():
                results.ticks[durability] = {}
                for size in args.tick_sizes:
                    say(f"tick at {size:,} rows, {durability} ...")
                    busy, idle = tick_milliseconds(
                        postgres,
                        size,
                        args.tick_due,
                        TICK_REPEAT,
                        idle=size == max(args.tick_sizes),
                    )
                    results.ticks[durability][size] = busy
                    if idle:
                        results.idle_ticks[durability] = idle
                    say(
                        f"  median {median(busy):.1f} ms"
                        + (f", nothing due {median(idle):.1f} ms" if idle else "")
                    )
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        print(f"logs kept in {directory}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        api.close_all()
    sections = []
    if not args.no_native_audit:
        results.native_audit, section = native_audit_section(args, directory, say)
        sections.append(section)
    if not args.no_prune:
        results.prune, section = prune_section(args, directory, say)
        sections.append(section)
    text_ = report(args, config, results, facts, started_at, time.monotonic() - clock)
    text_ += "".join("\n" + section for section in sections)
    args.output.write_text(text_)
    print(text_)
    print(f"written to {args.output}")
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
