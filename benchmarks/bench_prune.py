"""Pruning a large history on PostgreSQL while runners work: the drain rate with and without.

    .venv/bin/python benchmarks/bench_prune.py [--old-tasks 1000000] [--tasks 20000]
                                               [--runners 2] [--repeat 3]
                                               [--durability no-durability|durable]

On a private PostgreSQL (``--durability``: the test suite's no-durability settings, or durable
with fsync and synchronous_commit on), the script seeds
``--old-tasks`` finished tasks queued 60 days ago with three runs each (two failed, one
succeeded; ``INSERT … SELECT generate_series``), then measures, interleaved ``--repeat`` times:

``without``
    the handler drain: ``--tasks`` no-op handler runs due at once, worked by ``--runners``
    ``celery-taskq runner --burst`` processes; runs/s from the first run's start to the last
    run's finish, by the rows' own times.
``on_process``
    the same drain while OnProcess ticks every ``TASKQ_PROCESS_INTERVAL`` (2 s) in another
    process with ``TASKQ_RETENTION=success=30d,error=30d,timeout=30d``, as beat drives it: one
    bounded batch of each kind a tick. This is the policy the target is judged on.
``command``
    the same drain while ``celery-taskq prune --older-than 30d`` deletes batch after batch at
    its default pace (``--busy-share 0.5``: after each batch it waits as long as the batch
    took), in another process.

Pruning starts first (its first batch is done before the runners start) and is stopped when
the drain is over; the rows it pruned meanwhile give its rate under load. The order of the
three drains rotates from one repetition to the next, so drift on a shared machine does not
favour one of them.

Then, at the size seeded: the tables' and indexes' sizes, the time of the report's totals
query over the last 24 hours and over everything, the prune's rate with no runner working,
and the time of one OnProcess pruning step (one batch of each kind). The section it writes in
benchmarks/RESULTS.md (between its markers, replacing the previous one) holds the medians,
every repetition and the load average. The target: the drain with OnProcess pruning is at least
80 % of the drain without, by the median of the repetitions' ratios.
"""

# ruff: noqa: E402 - the project root must be on sys.path before its packages are imported

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from sqlalchemy import text

from benchmarks.bench_drain import (
    HANDLER,
    BenchmarkError,
    Children,
    PostgresServer,
    child_env,
    postgres_server,
    wait_until,
)
from celery_taskq.core.clock import utc_now
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.retention import RetentionPolicy
from celery_taskq.core.retention_pruner import Pruner
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import upgrade_database
from celery_taskq.reports import ReportWindow, totals

DURABILITIES = ("no-durability", "durable")
"""PostgreSQL's configurations: the test suite's (fsync, synchronous_commit and
full_page_writes off), and a durable one (every commit waits for the disk)."""


def markers(durability: str, command_pause: float = 0.0) -> tuple[str, str]:
    """The markers around this benchmark's section of RESULTS.md for ``durability`` (and a
    ``prune --pause`` of the command drain)."""
    suffix = "" if durability == "no-durability" else f" ({durability})"
    if command_pause > 0:
        suffix += f" (prune --pause {command_pause:g})"
    return f"<!-- bench_prune{suffix}: begin -->", f"<!-- bench_prune{suffix}: end -->"


TARGET_RATIO = 0.8
"""The drain while pruning must be at least this fraction of the drain without."""
MODES = ("without", "on_process", "command")
MODE_TITLES = {
    "without": "without pruning",
    "on_process": "with OnProcess pruning (`TASKQ_RETENTION`, one batch a tick)",
    "command": "with `celery-taskq prune` at its default pace (`--busy-share 0.5`)",
}
RETENTION = "success=30d,error=30d,timeout=30d"
PROCESS_INTERVAL = 2.0
"""Seconds between the OnProcess ticks of the ``on_process`` mode (the default interval)."""
STANDALONE_PRUNE_SECONDS = 20.0
"""How long the prune runs alone (no runner) to measure its rate."""

SEED_TASKS = """
INSERT INTO "TaskQueue" ("TaskHandlerClass", "TaskData", "ScheduledOn", "QueuedOn",
                         "LastStatus", "MaxRetries", "TaskRunsFailed")
SELECT 'benchmarks.handlers.Noop', '{"seeded": true}'::jsonb, at, at, 'success', 5, 0
FROM (SELECT now() - interval '60 days' + g * interval '1 millisecond' AS at
      FROM generate_series(1, :count) AS g) AS seeded
"""
SEED_RUNS = """
INSERT INTO "TaskRuns" ("TaskQueueId", "StartedOn", "FinishedOn", "Status",
                        "PercentsCompleted", "ErrorCode", "ErrorMessage")
SELECT q."Id", q."QueuedOn" + attempt * interval '1 second',
       q."QueuedOn" + attempt * interval '1 second' + interval '200 milliseconds',
       CASE WHEN attempt = 3 THEN 'success' ELSE 'error' END,
       100,
       CASE WHEN attempt = 3 THEN NULL ELSE 'E_TEMPORARY' END,
       CASE WHEN attempt = 3 THEN NULL ELSE 'upstream refused, will retry' END
FROM "TaskQueue" AS q CROSS JOIN generate_series(1, 3) AS attempt
WHERE q."TaskData" ? 'seeded'
ORDER BY q."Id", attempt
"""
SIZES = """
SELECT pg_total_relation_size(:name), pg_relation_size(:name), pg_indexes_size(:name)
"""


@dataclass
class Drain:
    """One drain: its rate, and what a concurrent prune deleted meanwhile."""

    runs_per_second: float
    seconds: float
    pruned_rows: int = 0

    @property
    def prune_rate(self) -> float:
        return self.pruned_rows / self.seconds if self.seconds else 0.0


@dataclass
class Measured:
    """Everything the run measured."""

    seed_seconds: float = 0.0
    sizes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    report_ms: dict[str, float] = field(default_factory=dict)
    drains: dict[str, list[Drain]] = field(default_factory=lambda: {mode: [] for mode in MODES})
    standalone_prune_rate: float = 0.0
    step_ms: list[float] = field(default_factory=list)
    step_rows: list[int] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)


def seed(database: Database, count: int) -> float:
    """``count`` finished old tasks with three runs each; return the seconds it took."""
    started = time.perf_counter()
    with database.transaction() as connection:
        connection.execute(text(SEED_TASKS), {"count": count})
        connection.execute(text(SEED_RUNS))
    vacuum(database)
    return time.perf_counter() - started


def vacuum(database: Database) -> None:
    """``VACUUM ANALYZE`` the two tables pruning deletes most from, then a checkpoint."""
    with database.autocommit() as connection:
        connection.execute(text('VACUUM ANALYZE "TaskQueue"'))
        connection.execute(text('VACUUM ANALYZE "TaskRuns"'))
    checkpoint(database)


def checkpoint(database: Database) -> None:
    """Write every dirty page now: a checkpoint the writes before a drain (the seeding's
    millions of rows, the drain before) call for must not fall inside the drain."""
    with database.autocommit() as connection:
        connection.execute(text("CHECKPOINT"))


def pruned_so_far(database: Database) -> int:
    """Rows pruned ever, every kind (``TaskqPrunedRows``)."""
    with database.transaction(read_only=True) as connection:
        total = connection.execute(
            text('SELECT COALESCE(SUM("RowsPruned"), 0) FROM "TaskqPrunedRows"')
        )
        return int(total.scalar_one())


def drain(
    database: Database,
    database_url: str,
    children: Children,
    args: argparse.Namespace,
    directory: Path,
    label: str,
    *,
    mode: str,
) -> Drain:
    """Queue ``args.tasks`` due no-op runs, work them with ``args.runners`` runners, while
    pruning runs as ``mode`` says (:data:`MODES`)."""
    settings = Settings(database_url=database_url, task_runner_limit=args.runners)
    service = TaskQueueService(database, settings)
    ids = service.add_tasks([{"handler": HANDLER}] * args.tasks, create_run=True)
    env = child_env(TASKQ_DATABASE_URL=database_url, TASKQ_TASK_RUNNER_LIMIT=str(args.runners))
    prune = None
    pruned_before = pruned_so_far(database)
    if mode != "without":
        log = directory / f"prune-{label}.log"
        command = (
            [sys.executable, "-m", "celery_taskq", "prune", "--older-than", "30d"]
            + (["--pause", f"{args.command_pause:g}"] if args.command_pause > 0 else [])
            if mode == "command"
            else [sys.executable, str(Path(__file__).resolve()), "--on-process-loop", database_url]
        )
        prune = children.start(command, env=env, log=log)
        # Its first batch, or (when nothing is left to prune) the time a first tick takes.
        give_up = time.monotonic() + 15.0
        wait_until(
            lambda: pruned_so_far(database) > pruned_before or time.monotonic() > give_up or None,
            timeout=120,
            what="the prune's first batch",
            log=log,
        )
        pruned_before = pruned_so_far(database)
    runners = [
        children.start(
            [sys.executable, "-m", "celery_taskq", "runner", "--burst"],
            env=env,
            log=directory / f"runner-{label}-{index}.log",
        )
        for index in range(args.runners)
    ]
    for index, runner in enumerate(runners):
        if runner.wait(timeout=600) != 0:
            raise BenchmarkError(f"runner {index} of {label} exited with {runner.returncode}")
    pruned = pruned_so_far(database) - pruned_before
    if prune is not None:
        children.stop(prune)
    with database.transaction(read_only=True) as connection:
        row = connection.execute(
            text(
                'SELECT count(*), min("StartedOn"), max("FinishedOn") FROM "TaskRuns" '
                'WHERE "TaskQueueId" BETWEEN :first AND :last AND "Status" = \'success\''
            ),
            {"first": min(ids), "last": max(ids)},
        ).one()
    count, first, last = int(row[0]), row[1], row[2]
    if count != args.tasks:
        raise BenchmarkError(f"{label}: {count} of {args.tasks} runs succeeded")
    seconds = (last - first).total_seconds()
    return Drain(count / seconds, seconds, pruned)


def timed_ms(call: Callable[[], object], repeat: int = 3) -> float:
    """Median milliseconds of ``call``."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def measure_at_size(database: Database, measured: Measured) -> None:
    """Table sizes and the report's totals query at the size seeded."""
    with database.transaction(read_only=True) as connection:
        for name in ("TaskQueue", "TaskRuns"):
            row = connection.execute(text(SIZES), {"name": f'"{name}"'}).one()
            measured.sizes[name] = (int(row[0]), int(row[1]), int(row[2]))
    now = datetime.now(UTC)
    day = ReportWindow(since=now - timedelta(days=1))
    measured.report_ms["last 24 hours"] = timed_ms(lambda: totals(database, day))
    measured.report_ms["everything"] = timed_ms(lambda: totals(database, ReportWindow()))


def measure_steps(database: Database, measured: Measured, steps: int = 5) -> None:
    """OnProcess's pruning step (one batch of each kind) at this size."""
    pruner = Pruner(database, utc_now, Settings.resolve().retention_batch_size)
    policy = RetentionPolicy.parse("success=30d,error=30d,timeout=30d")
    for _ in range(steps):
        started = time.perf_counter()
        report = pruner.prune_step(policy)
        measured.step_ms.append((time.perf_counter() - started) * 1000)
        measured.step_rows.append(report.total)


def measure_standalone_prune(
    database: Database, database_url: str, children: Children, directory: Path
) -> float:
    """Rows/s of ``celery-taskq prune`` with no runner working."""
    before = pruned_so_far(database)
    env = child_env(TASKQ_DATABASE_URL=database_url)
    started = time.perf_counter()
    prune = children.start(
        [sys.executable, "-m", "celery_taskq", "prune", "--older-than", "30d"],
        env=env,
        log=directory / "prune-alone.log",
    )
    time.sleep(STANDALONE_PRUNE_SECONDS)
    pruned = pruned_so_far(database) - before
    seconds = time.perf_counter() - started
    children.stop(prune)
    return pruned / seconds


def on_process_loop(database_url: str) -> None:
    """The ``on_process`` mode's child: OnProcess every :data:`PROCESS_INTERVAL` seconds with
    the retention policy, as beat's ticks drive it, until it is stopped."""
    settings = Settings.resolve({"database_url": database_url, "retention": RETENTION})
    service = TaskQueueService(Database(database_url), settings)
    while True:
        started = time.monotonic()
        service.process_queue()
        time.sleep(max(PROCESS_INTERVAL - (time.monotonic() - started), 0.0))


def run(args: argparse.Namespace, directory: Path, say: Callable[[str], None]) -> Measured:
    """Every measurement; servers and children are stopped whatever happens."""
    measured = Measured()
    children = Children(directory)
    with ExitStack() as stack:
        stack.callback(children.stop_all)
        postgres: PostgresServer = stack.enter_context(
            postgres_server(directory, durable=args.durability == "durable")
        )
        postgres.execute("CREATE DATABASE bench_prune")
        url = postgres.url("bench_prune")
        upgrade_database(url)
        database = Database(url)
        stack.callback(database.close)
        say(f"seeding {args.old_tasks:,} finished tasks, {3 * args.old_tasks:,} runs ...")
        measured.seed_seconds = seed(database, args.old_tasks)
        say(f"  {measured.seed_seconds:.0f} s")
        measure_at_size(database, measured)
        measure_steps(database, measured)
        say(f"OnProcess step: median {statistics.median(measured.step_ms):.0f} ms")
        measured.standalone_prune_rate = measure_standalone_prune(
            database, url, children, directory
        )
        say(f"prune alone: {measured.standalone_prune_rate:,.0f} rows/s")
        vacuum(database)  # the rows pruned alone must not weigh on the first drain
        for rep in range(1, args.repeat + 1):
            shift = (rep - 1) % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                checkpoint(database)  # each drain starts clean, whatever the one before wrote
                sample = drain(database, url, children, args, directory, f"{mode}-{rep}", mode=mode)
                measured.drains[mode].append(sample)
                measured.loads.append(os.getloadavg()[0])
                say(
                    f"{mode}-{rep}: {sample.runs_per_second:,.0f} runs/s"
                    + (f", pruned {sample.prune_rate:,.0f} rows/s" if sample.pruned_rows else "")
                )
    return measured


def ratios(measured: Measured, mode: str) -> list[float]:
    """Each repetition's drain with ``mode`` over its drain without pruning."""
    return [
        on.runs_per_second / off.runs_per_second
        for off, on in zip(measured.drains["without"], measured.drains[mode], strict=True)
    ]


def section(args: argparse.Namespace, measured: Measured, started_at: datetime) -> str:
    """The section of RESULTS.md, between its markers."""
    ratio = statistics.median(ratios(measured, "on_process"))
    mb = 1024 * 1024
    begin, end = markers(args.durability, args.command_pause)
    lines = [
        begin,
        f"## Pruning while runners work (`bench_prune.py`, {args.durability} PostgreSQL)",
        "",
        f"Generated by `benchmarks/bench_prune.py --old-tasks {args.old_tasks} --tasks "
        f"{args.tasks} --runners {args.runners} --repeat {args.repeat} --durability "
        f"{args.durability}"
        + (f" --command-pause {args.command_pause:g}" if args.command_pause > 0 else "")
        + f"` on {started_at:%Y-%m-%d %H:%M} UTC; PostgreSQL "
        + (
            "durable (fsync and synchronous_commit on)"
            if args.durability == "durable"
            else "with the test suite's no-durability settings"
        )
        + f". Load average (1 min) during the drains: "
        f"{min(measured.loads):.1f} to {max(measured.loads):.1f} on "
        f"{os.cpu_count()} cores (the benchmark's own runners and PostgreSQL, and whatever else "
        "the machine ran); single figures are noisy, so the drains of a repetition run back to "
        "back in a rotating order, and the ratios are taken within each repetition.",
        "",
        f"Seeded {args.old_tasks:,} finished tasks and {3 * args.old_tasks:,} runs in "
        f"{measured.seed_seconds:.0f} s. Each drain: {args.tasks:,} no-op handler runs, "
        f"{args.runners} `celery-taskq runner --burst` processes. OnProcess pruning: "
        f"`TASKQ_RETENTION={RETENTION}`, a tick every {PROCESS_INTERVAL:g} s, one batch of "
        f"each kind (at most {Settings.resolve().retention_batch_size:,} rows a statement) a "
        "tick. `celery-taskq prune --older-than "
        "30d`: batch after batch.",
        "",
        "| drain | runs/s (median) | vs without (median of the repetitions' ratios) "
        "| pruned meanwhile (rows/s, median) |",
        "|---|---:|---:|---:|",
    ]
    for mode in MODES:
        drains = measured.drains[mode]
        versus = "1.00" if mode == "without" else f"{statistics.median(ratios(measured, mode)):.2f}"
        pruned = (
            "" if mode == "without" else f"{statistics.median(d.prune_rate for d in drains):,.0f}"
        )
        title = MODE_TITLES[mode]
        if mode == "command" and args.command_pause > 0:
            title = f"with `celery-taskq prune --pause {args.command_pause:g}`"
        lines.append(
            f"| {title} | "
            f"{statistics.median(d.runs_per_second for d in drains):,.0f} | {versus} | {pruned} |"
        )
    spread = ratios(measured, "on_process")
    command_spread = ratios(measured, "command")
    lines += [
        "",
        f"Target: with OnProcess pruning ≥ {TARGET_RATIO:.2f} of without: **{ratio:.2f}**, "
        f"{'met' if ratio >= TARGET_RATIO else '**not met**'} by the median; the repetitions' "
        f"ratios range from {min(spread):.2f} to {max(spread):.2f}"
        + (
            ", on both sides of the target: this run alone does not settle it."
            if min(spread) < TARGET_RATIO <= max(spread)
            else "."
        ),
        f"With `celery-taskq prune` (clearing the backlog itself): "
        f"**{statistics.median(command_spread):.2f}** of without"
        + (f" (`--pause {args.command_pause:g}`)" if args.command_pause > 0 else "")
        + f", {'met' if statistics.median(command_spread) >= TARGET_RATIO else '**not met**'} "
        f"by the median; the repetitions' ratios range from {min(command_spread):.2f} to "
        f"{max(command_spread):.2f}.",
        "",
        "| repetition | without (runs/s) | OnProcess pruning (runs/s) | ratio | pruned (rows/s) "
        "| prune command (runs/s) | ratio | pruned (rows/s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = zip(
        measured.drains["without"],
        measured.drains["on_process"],
        measured.drains["command"],
        strict=True,
    )
    for rep, (off, tick, command) in enumerate(rows, 1):
        lines.append(
            f"| {rep} | {off.runs_per_second:,.0f} | {tick.runs_per_second:,.0f} "
            f"| {tick.runs_per_second / off.runs_per_second:.2f} | {tick.prune_rate:,.0f} "
            f"| {command.runs_per_second:,.0f} "
            f"| {command.runs_per_second / off.runs_per_second:.2f} | {command.prune_rate:,.0f} |"
        )
    lines += [
        "",
        f"At {args.old_tasks:,} tasks and {3 * args.old_tasks:,} runs:",
        "",
        "| table | total (MB) | rows (MB) | indexes (MB) |",
        "|---|---:|---:|---:|",
        *(
            f"| `{name}` | {total / mb:,.0f} | {rows_ / mb:,.0f} | {indexes / mb:,.0f} |"
            for name, (total, rows_, indexes) in measured.sizes.items()
        ),
        "",
        *(
            f"- The report's totals query, {window}: {ms:,.0f} ms (median of 3)."
            for window, ms in measured.report_ms.items()
        ),
        f"- `celery-taskq prune` alone (no runner): {measured.standalone_prune_rate:,.0f} rows/s "
        "(tasks and runs).",
        f"- One OnProcess pruning step (one batch of each kind): median "
        f"{statistics.median(measured.step_ms):,.0f} ms, worst {max(measured.step_ms):,.0f} ms, "
        f"{statistics.median(measured.step_rows):,.0f} rows each.",
        end,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text_: str, durability: str, command_pause: float = 0.0) -> None:
    """Replace this benchmark's section of ``path`` for ``durability`` (or add it at the end)."""
    begin, end = markers(durability, command_pause)
    current = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(current):
        updated = pattern.sub(lambda _match: text_, current)
    else:
        updated = current.rstrip("\n") + "\n\n" + text_
    path.write_text(updated)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--old-tasks", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=20_000, help="runs per drain")
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--durability", choices=DURABILITIES, default="no-durability")
    parser.add_argument(
        "--command-pause",
        type=float,
        default=0.0,
        help="seconds the command drain's `prune --pause` waits after each batch (0: flat out)",
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument("--on-process-loop", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.old_tasks, args.tasks, args.runners, args.repeat) < 1:
        parser.error("every count must be positive")
    if args.command_pause < 0:
        parser.error("--command-pause must not be negative")
    return args


@contextmanager
def work_directory(keep: bool) -> Iterator[Path]:
    """A scratch directory for logs, removed at the end unless ``keep``."""
    directory = Path(tempfile.mkdtemp(prefix="taskq-bench-prune-"))
    try:
        yield directory
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Measure, then write the section; return the exit status."""
    args = parse_args(argv)
    if args.on_process_loop:
        on_process_loop(args.on_process_loop)
        return 0
    started_at, clock = datetime.now(UTC), time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - clock:6.0f}s] {message}", flush=True)

    with work_directory(args.keep) as directory:
        try:
            measured = run(args, directory, say)
        except BenchmarkError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    text_ = section(args, measured, started_at)
    write_section(args.output, text_, args.durability, args.command_pause)
    print(text_)
    return 0


if __name__ == "__main__":
    sys.exit(main())
