"""What installing celery_taskq costs a Celery app's own tasks, and how handler runs are dispatched.

    .venv/bin/python benchmarks/bench_capacity.py [--repeat R] [--concurrency C]

Measured side by side in one run, each repetition running every case once, in turn, each on a
fresh worker (``celery -A benchmarks.capacity_app worker -B -c C``), database and broker:

**Capacity.** A burst of ``--burst`` (8) of the app's own tasks, each working 2 s, is sent to
the idle worker once its beat has ticked for ``--settle`` seconds (past an OnCreateTaskRunners
tick), and timed from the first send to the last task's end:

``plain``
    the app without celery_taskq;
``installed``
    the same app with ``install(app, audit_celery_tasks=True)`` and no handler work;
``handler-work``
    the installed app while handler runs are due: ``--backlog`` handler tasks of 1 s each
    queued before the worker starts; the burst is sent once runners are busy with them.

**Dispatch.** Two ways to give handler runs to a worker's pool processes (``-c C``, no beat):

``runner tasks``
    what celery_taskq does: ``concurrency - 1`` runner tasks, each working the queue until it
    is empty;
``one message per run``
    ``bench.execute_run`` (benchmarks/capacity_app.py), one Celery message per run, which
    registers a runner, claims one run, runs it and leaves.

For each: the drain rate of ``--runs`` no-op runs, and the wait of the app's short tasks sent
while ``--fair-runs`` handler runs of 20 ms are queued (how fairly the two share the worker).

Writes ``benchmarks/RESULTS-capacity.md`` (``--output``); ``benchmarks/run_all.py`` runs the same
measurements and puts them in ``RESULTS.md``. It starts its own redis-server and PostgreSQL
(benchmarks/bench_drain.py's way) on 127.0.0.1 and stops them, and every worker, at the end.
"""

# ruff: noqa: E402 - the project root must be on sys.path before its packages are imported

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import redis
from sqlalchemy import text

from benchmarks import capacity_app
from benchmarks.bench_drain import (
    PLAIN_REDIS_DB,
    BenchmarkError,
    Children,
    PostgresServer,
    RedisServer,
    child_env,
    machine,
    percentile,
    postgres_server,
    start_redis,
    versions,
    wait_until,
)
from celery_taskq import api
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import upgrade_database

CAPACITY_CASES = ("plain", "installed", "handler-work")
DISPATCH_MODES = ("runner tasks", "one message per run")
TASK_SECONDS = 2.0
"""How long each of the app's tasks in the burst works."""
HANDLER_SECONDS = 1.0
"""How long each handler run of the ``handler-work`` backlog works."""
FAIR_RUN_SECONDS = 0.02
"""How long each handler run of the fairness backlog works."""
FAIR_APP_TASKS = 10
"""The app's short tasks sent, one every 0.1 s, while the fairness backlog is worked."""


@dataclass(frozen=True)
class CapacityConfig:
    """What one run measures."""

    repeat: int = 3
    concurrency: int = 4
    burst: int = 8
    settle: float = 7.0
    backlog: int = 40
    runs: int = 1000
    fair_runs: int = 300


@dataclass
class BurstSample:
    """One burst of the app's tasks."""

    wall: float
    processes: int
    """Pool processes that ran the app's tasks."""
    most_at_once: int
    """Most of the app's tasks working at the same moment."""
    handler_runs_meanwhile: int = 0
    """Handler runs that finished between the first send and the last app task's end."""
    runners_registered: int = 0
    """Runner rows the worker registered (each held a pool process a while)."""


@dataclass
class DispatchSample:
    """One dispatch mode: drain of no-op runs, and the app's waits beside a backlog."""

    drain_rate: float
    app_waits: list[float]


@dataclass
class CapacityResults:
    """Everything one run measured."""

    bursts: dict[str, list[BurstSample]] = field(default_factory=dict)
    dispatch: dict[str, list[DispatchSample]] = field(default_factory=dict)


@dataclass
class Servers:
    """The servers the measurements run against, where logs go, and what is measured."""

    children: Children
    redis: RedisServer
    postgres: PostgresServer
    directory: Path
    config: CapacityConfig
    database_seq: list[int] = field(default_factory=lambda: [0])

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database at the schema's head; dropped afterwards."""
        self.database_seq[0] += 1
        name = f"capacity_{self.database_seq[0]}_{os.getpid()}"
        self.postgres.execute(f"CREATE DATABASE {name}")
        url = self.postgres.url(name)
        try:
            upgrade_database(url)
            yield url
        finally:
            api.close_all()
            self.postgres.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def start_worker(
    servers: Servers, label: str, database_url: str, *, installed: bool, beat: bool = True
) -> tuple[Any, Path]:
    """A ``-c C`` worker of benchmarks/capacity_app.py; returns it, once ready, and its log."""
    log = servers.directory / f"{label}.log"
    args = [sys.executable, "-m", "celery", "-A", "benchmarks.capacity_app", "worker"]
    args += [
        "-c",
        str(servers.config.concurrency),
        "--loglevel",
        "INFO",
        "--hostname",
        f"{label}@%h",
    ]
    if beat:
        args += ["-B", "--schedule", str(servers.directory / f"{label}-schedule")]
    worker = servers.children.start(
        args,
        env=child_env(
            BENCH_REDIS_URL=servers.redis.url(PLAIN_REDIS_DB),
            BENCH_INSTALL="1" if installed else "",
            TASKQ_DATABASE_URL=database_url,
        ),
        log=log,
    )
    wait_until(
        lambda: "ready." in log.read_text(errors="replace"),
        timeout=60,
        what=f"{label} to start",
        alive=worker,
        log=log,
    )
    return worker, log


def send_burst(count: int, seconds: float, first_index: int = 0) -> float:
    """Send ``count`` of the app's tasks; the time the first was sent."""
    started = time.time()
    for index in range(first_index, first_index + count):
        capacity_app.work.delay(index, seconds, time.time())
    return started


def recorded(client: redis.Redis, count: int) -> list[dict[str, float]] | None:
    """The records of the app's tasks, once ``count`` of them have ended."""
    raw = client.lrange(capacity_app.RUNS_KEY, 0, -1)
    return [json.loads(item) for item in raw] if len(raw) >= count else None


def most_at_once(records: list[dict[str, float]]) -> int:
    """Most intervals [start, end] overlapping at one moment."""
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    working = most = 0
    for _, change in events:
        working += change
        most = max(most, working)
    return most


def handler_runs_finished(database_url: str, since: float, until: float) -> tuple[int, int]:
    """Handler runs that finished between two times, and the runners that were registered."""
    database = Database(database_url)
    try:
        with database.transaction(read_only=True) as connection:
            finished = connection.execute(
                text(
                    """SELECT count(*) FROM "TaskRuns" r
                    JOIN "TaskQueue" q ON q."Id" = r."TaskQueueId"
                    WHERE r."Status" = 'success' AND r."FinishedOn" BETWEEN :since AND :until
                    AND q."TaskHandlerClass" NOT LIKE 'celery:%'"""
                ),
                {
                    "since": datetime.fromtimestamp(since, UTC),
                    "until": datetime.fromtimestamp(until, UTC),
                },
            ).scalar_one()
            registered = connection.execute(
                text("""SELECT count(*) FROM "TaskRunners" WHERE "Role" = 'runner'""")
            ).scalar_one()
        return int(finished), int(registered)
    finally:
        database.close()


def busy_runners(database_url: str) -> int:
    """Handler runs ``running`` now."""
    database = Database(database_url)
    try:
        with database.transaction(read_only=True) as connection:
            return int(
                connection.execute(
                    text("""SELECT count(*) FROM "TaskRuns" WHERE "Status" = 'running'""")
                ).scalar_one()
            )
    finally:
        database.close()


def run_burst(servers: Servers, case: str, rep: int) -> BurstSample:
    """One capacity case: the burst of the app's 2-second tasks on a fresh worker."""
    config = servers.config
    client = redis.Redis.from_url(servers.redis.url(PLAIN_REDIS_DB))
    servers.redis.flush()
    capacity_app.app.conf.broker_url = servers.redis.url(PLAIN_REDIS_DB)
    try:
        with servers.database() as database_url:
            if case == "handler-work":
                api.enqueue_many(
                    [{"handler": "benchmarks.handlers.Sleep", "data": {"seconds": HANDLER_SECONDS}}]
                    * config.backlog,
                    database_url=database_url,
                )
            label = f"capacity-{case}-{rep}"
            worker, log = start_worker(servers, label, database_url, installed=case != "plain")
            try:
                if case == "handler-work":
                    wait_until(
                        lambda: busy_runners(database_url) >= 1 or None,
                        timeout=60,
                        what="runners to work the handler backlog",
                        alive=worker,
                        log=log,
                    )
                else:
                    time.sleep(config.settle)  # beat ticks meanwhile (OnCreateTaskRunners: 5 s)
                started = send_burst(config.burst, TASK_SECONDS)
                records = wait_until(
                    lambda: recorded(client, config.burst),
                    timeout=120,
                    what=f"{label}: the burst to end",
                    alive=worker,
                    log=log,
                )
                ended = max(r["end"] for r in records)
                meanwhile, registered = handler_runs_finished(database_url, started, ended)
                return BurstSample(
                    wall=ended - started,
                    processes=len({r["pid"] for r in records}),
                    most_at_once=most_at_once(records),
                    handler_runs_meanwhile=meanwhile,
                    runners_registered=registered,
                )
            finally:
                servers.children.stop(worker)
    finally:
        client.close()


def run_dispatch(servers: Servers, mode: str, rep: int) -> DispatchSample:
    """One dispatch mode: drain ``--runs`` no-op runs, then the app's waits beside a backlog."""
    config = servers.config
    client = redis.Redis.from_url(servers.redis.url(PLAIN_REDIS_DB))
    servers.redis.flush()
    capacity_app.app.conf.broker_url = servers.redis.url(PLAIN_REDIS_DB)
    label = f"dispatch-{'runners' if mode == 'runner tasks' else 'messages'}-{rep}"
    try:
        with servers.database() as database_url:
            worker, log = start_worker(servers, label, database_url, installed=True, beat=False)
            database = Database(database_url)
            try:
                # Drain: N no-op runs queued, then dispatched
                api.enqueue_many(
                    [{"handler": "benchmarks.handlers.Noop"}] * config.runs,
                    database_url=database_url,
                )
                dispatch(mode, config.runs, config.concurrency)
                wait_until(
                    lambda: successes(database) >= config.runs or None,
                    timeout=120 + config.runs / 5,
                    what=f"{label}: the drain",
                    alive=worker,
                    log=log,
                    interval=0.1,
                )
                with database.transaction(read_only=True) as connection:
                    first, last = connection.execute(
                        text("""SELECT min("StartedOn"), max("FinishedOn") FROM "TaskRuns" """)
                    ).one()
                drain_rate = config.runs / max((last - first).total_seconds(), 1e-9)
                # Fairness: the app's short tasks sent while a backlog of handler runs is worked
                time.sleep(1.5)  # idle runners have left
                api.enqueue_many(
                    [
                        {
                            "handler": "benchmarks.handlers.Sleep",
                            "data": {"seconds": FAIR_RUN_SECONDS},
                        }
                    ]
                    * config.fair_runs,
                    database_url=database_url,
                )
                dispatch(mode, config.fair_runs, config.concurrency)
                time.sleep(0.2)
                for index in range(FAIR_APP_TASKS):
                    capacity_app.work.delay(index, 0.0, time.time())
                    time.sleep(0.1)
                records = wait_until(
                    lambda: recorded(client, FAIR_APP_TASKS),
                    timeout=120,
                    what=f"{label}: the app's tasks",
                    alive=worker,
                    log=log,
                )
                waits = [r["start"] - r["sent"] for r in records]
                return DispatchSample(drain_rate, waits)
            finally:
                database.close()
                servers.children.stop(worker)
    finally:
        client.close()


def dispatch(mode: str, runs: int, concurrency: int) -> None:
    """Give ``runs`` scheduled runs to a ``-c concurrency`` worker the way ``mode`` says."""
    if mode == "runner tasks":
        for _ in range(max(concurrency - 1, 1)):
            capacity_app.app.send_task("taskq.runner")
    else:
        for _ in range(runs):
            capacity_app.execute_run.delay()


def successes(database: Database) -> int:
    with database.transaction(read_only=True) as connection:
        return int(
            connection.execute(
                text("""SELECT count(*) FROM "TaskRuns" WHERE "Status" = 'success'""")
            ).scalar_one()
        )


def measure(servers: Servers, say: Any = print) -> CapacityResults:
    """Every case and mode, ``config.repeat`` times, interleaved."""
    config = servers.config
    results = CapacityResults(
        bursts={case: [] for case in CAPACITY_CASES},
        dispatch={mode: [] for mode in DISPATCH_MODES},
    )
    for rep in range(1, config.repeat + 1):
        for case in CAPACITY_CASES:
            say(f"capacity {case}-{rep} ...")
            sample = run_burst(servers, case, rep)
            results.bursts[case].append(sample)
            say(
                f"  wall {sample.wall:.2f} s, {sample.processes} processes, "
                f"{sample.most_at_once} at once, "
                f"handler runs meanwhile {sample.handler_runs_meanwhile}, "
                f"runners {sample.runners_registered}"
            )
        for mode in DISPATCH_MODES:
            say(f"dispatch {mode}-{rep} ...")
            dispatched = run_dispatch(servers, mode, rep)
            results.dispatch[mode].append(dispatched)
            say(
                f"  drain {dispatched.drain_rate:,.0f} runs/s, app wait p50 "
                f"{percentile(dispatched.app_waits, 0.5) * 1000:.0f} ms"
            )
    return results


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def idle_ratio(results: CapacityResults) -> float:
    """Median wall of the installed app's burst over the plain app's."""
    return median([s.wall for s in results.bursts["installed"]]) / median(
        [s.wall for s in results.bursts["plain"]]
    )


def fewest_processes_beside_handlers(results: CapacityResults) -> int:
    """The fewest pool processes the app's burst had while handler work was due."""
    return min((s.processes for s in results.bursts["handler-work"]), default=0)


def report_lines(config: CapacityConfig, results: CapacityResults) -> list[str]:
    """The capacity and dispatch sections of a results file."""
    lines = [
        "## The app's capacity with celery_taskq installed",
        "",
        f"A burst of {config.burst} of the app's own tasks, {TASK_SECONDS:.0f} s each, on a "
        f"`-c {config.concurrency}` worker with embedded beat "
        "(`celery -A benchmarks.capacity_app worker -B`), timed from the first send to the last "
        f"end; medians of {config.repeat} repetition(s), each on a fresh worker. Ideal: "
        f"{config.burst * TASK_SECONDS / config.concurrency:.1f} s. `plain` and `installed` "
        f"send the burst after {config.settle:.0f} s of beat ticks with no handler work; "
        f"`handler-work` has {config.backlog} handler runs of {HANDLER_SECONDS:.0f} s due and "
        "sends the burst once runners work them.",
        "",
        "| case | wall (s) | vs plain | pool processes that ran the app's tasks | most at once "
        "| handler runs finished meanwhile | runners registered |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    plain = median([s.wall for s in results.bursts.get("plain", [])])
    for case, samples in results.bursts.items():
        wall = median([s.wall for s in samples])
        lines.append(
            f"| {case} | {wall:.2f} | {wall / plain:.2f}x "
            f"| {min(s.processes for s in samples)}-{max(s.processes for s in samples)} "
            f"| {min(s.most_at_once for s in samples)}-{max(s.most_at_once for s in samples)} "
            f"| {median([float(s.handler_runs_meanwhile) for s in samples]):.0f} "
            f"| {median([float(s.runners_registered) for s in samples]):.0f} |"
        )
    lines += [
        "",
        "## Dispatching handler runs: runner tasks or one message per run",
        "",
        f"A `-c {config.concurrency}` worker of the installed app, no beat. Drain: "
        f"{config.runs:,} no-op runs queued, then dispatched; runs/s from the first start to the "
        f"last finish. Beside a backlog: {config.fair_runs} handler runs of "
        f"{FAIR_RUN_SECONDS * 1000:.0f} ms dispatched, then {FAIR_APP_TASKS} of the app's "
        "no-op tasks sent 0.1 s apart; their wait is start minus send (all repetitions pooled).",
        "",
        "| dispatch | drain (runs/s) | app task wait p50 (ms) | max (ms) |",
        "|---|---:|---:|---:|",
    ]
    for mode, dispatched in results.dispatch.items():
        waits = [wait for d in dispatched for wait in d.app_waits]
        longest = max(waits, default=float("nan"))
        lines.append(
            f"| {mode} | {median([d.drain_rate for d in dispatched]):,.0f} "
            f"| {percentile(waits, 0.5) * 1000:.0f} | {longest * 1000:.0f} |"
        )
    lines += ["", "### Every repetition", ""]
    lines += [
        "| case | rep | wall (s) | processes | most at once | handler runs meanwhile "
        "| runners registered |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case, samples in results.bursts.items():
        for rep, s in enumerate(samples, 1):
            lines.append(
                f"| {case} | {rep} | {s.wall:.2f} | {s.processes} | {s.most_at_once} "
                f"| {s.handler_runs_meanwhile} | {s.runners_registered} |"
            )
    lines += ["", "| dispatch | rep | drain (runs/s) | app wait p50 (ms) |", "|---|---:|---:|---:|"]
    for mode, dispatched in results.dispatch.items():
        for rep, d in enumerate(dispatched, 1):
            lines.append(
                f"| {mode} | {rep} | {d.drain_rate:,.0f} "
                f"| {percentile(d.app_waits, 0.5) * 1000:.0f} |"
            )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--settle", type=float, default=7.0)
    parser.add_argument("--backlog", type=int, default=40)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--fair-runs", type=int, default=300)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).with_name("RESULTS-capacity.md")
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    return parser.parse_args(argv)


def config_of(args: argparse.Namespace) -> CapacityConfig:
    """The measurement configuration of parsed options."""
    return CapacityConfig(
        repeat=args.repeat,
        concurrency=args.concurrency,
        burst=args.burst,
        settle=args.settle,
        backlog=args.backlog,
        runs=args.runs,
        fair_runs=args.fair_runs,
    )


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run every measurement, write the results; return the exit status."""
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_system_exit)
    directory = Path(tempfile.mkdtemp(prefix="taskq-bench-capacity-"))
    children = Children(directory)
    started_at = datetime.now(UTC)
    clock = time.monotonic()
    print(f"work directory (logs): {directory}", flush=True)
    try:
        redis_server = start_redis(children, directory)
        with postgres_server(directory, durable=False) as postgres:
            facts = {**machine(), **versions(redis_server, postgres)}
            config = config_of(args)
            servers = Servers(children, redis_server, postgres, directory, config)
            results = measure(servers, lambda message: print(message, flush=True))
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        print(f"logs kept in {directory}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        api.close_all()
    elapsed = (time.monotonic() - clock) / 60
    lines = [
        "# The app's capacity with celery_taskq, and handler run dispatch",
        "",
        f"Generated by `benchmarks/bench_capacity.py --repeat {config.repeat}` on "
        f"{started_at:%Y-%m-%d %H:%M} UTC ({elapsed:.1f} min).",
        "",
        *report_lines(config, results),
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in facts.items()),
    ]
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {args.output}")
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
