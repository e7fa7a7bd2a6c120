"""What benchmarks/run_all.py measured, the targets of that run, and RESULTS.md's text."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from benchmarks import bench_capacity, bench_prune
from benchmarks.bench_drain import Config, Sample, percentile
from benchmarks.native_audit_report import Run as NativeAuditRun

DURABILITIES = ("no-durability", "durable")
"""The two PostgreSQL configurations every PostgreSQL figure is measured on."""
DURABILITY_TITLES = {
    "no-durability": "no-durability PostgreSQL (fsync, synchronous_commit, full_page_writes off)",
    "durable": "durable PostgreSQL (fsync, synchronous_commit, full_page_writes on)",
}
SYSTEMS = (
    "plain",
    "postgresql",
    "postgresql-batched",
    "pgqueuer",
    "sqlite",
    "native",
    "native-flower",
)
DEFAULT_SYSTEMS = ("plain", "postgresql", "pgqueuer", "sqlite")
"""The audited native tasks are measured on both PostgreSQLs by the native audit's section
(bench_native_audit.py); ``--systems`` adds them to the drain table too."""
ON_POSTGRESQL = ("postgresql", "postgresql-batched", "pgqueuer", "native", "native-flower")
"""Systems measured once on each PostgreSQL."""
TITLES = {
    "plain": "plain Celery + Redis (no-op task, prefork, no result backend)",
    "native": "audited native Celery tasks (same app and Celery settings + celery_taskq)",
    "native-flower": "audited native Celery tasks with the Flower settings (task events on)",
    "postgresql": "celery_taskq handler runs + Redis",
    "postgresql-batched": "celery_taskq handler runs + Redis, batched runner mode",
    "pgqueuer": "PgQueuer (its own worker, batched dequeue)",
    "sqlite": "celery_taskq handler runs, embedded default (SQLite + kombu SQL broker)",
}
ENQUEUE_MANY_BATCH = 1000
TICK_REPEAT = 7


def key(system: str, durability: str | None = None) -> str:
    """The name a system's figures go under: ``postgresql/durable``, or ``plain``."""
    return system if durability is None else f"{system}/{durability}"


def title(name: str) -> str:
    """The drain table's title of a ``key()``."""
    system, _, durability = name.partition("/")
    return TITLES[system] + (f", {durability} PostgreSQL" if durability else "")


@dataclass
class Results:
    """Everything one run measured."""

    drains: dict[str, list[Sample]] = field(default_factory=dict)
    """By ``key(system, durability)``."""
    enqueue_many: dict[str, list[float]] = field(default_factory=dict)
    """By ``key("postgresql", durability)`` and ``"sqlite"``."""
    ticks: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    """Milliseconds by durability and ``TaskQueue`` rows, with ``tick_due`` due."""
    idle_ticks: dict[str, list[float]] = field(default_factory=dict)
    """Milliseconds by durability at the largest tick size, nothing due."""
    tick_due: int = 1000
    standalone_rss_mb: list[float] = field(default_factory=list)
    capacity: bench_capacity.CapacityResults | None = None
    capacity_config: bench_capacity.CapacityConfig | None = None
    pgqueuer: dict[str, str] = field(default_factory=dict)
    """PgQueuer's version and settings (empty when it was not measured)."""
    pgqueuer_skipped: str | None = None
    batched_env: dict[str, str] = field(default_factory=dict)
    server_settings: dict[str, str] = field(default_factory=dict)
    """What each PostgreSQL answered to ``SHOW``, by durability."""
    native_audit: NativeAuditRun | None = None
    prune: dict[str, bench_prune.Measured] = field(default_factory=dict)


def median(values: list[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def check(value: float, ok: Callable[[float], bool]) -> bool | None:
    """Whether ``value`` meets its bound; ``None`` when it was not measured (NaN)."""
    return None if value != value else ok(value)


@dataclass(frozen=True)
class Target:
    """One target of the issue: what is measured, its bound and the value of this run."""

    name: str
    measured: str
    bound: str
    met: bool | None
    profile: str
    """The section of benchmarks/PROFILES.md that shows where this target's time goes."""


@dataclass
class Figures:
    """Medians of ``Results.drains``, by ``key()``."""

    results: Results

    def samples(self, name: str) -> list[Sample]:
        return self.results.drains.get(name, [])

    def drain(self, name: str) -> float:
        return median([s.drain_rate for s in self.samples(name)])

    def enqueue(self, name: str) -> float:
        return median([s.enqueue_rate for s in self.samples(name)])

    def p50(self, name: str) -> float:
        return percentile([v for s in self.samples(name) for v in s.latencies], 0.5) * 1000

    def rss(self, name: str) -> float:
        return median([s.runner_rss_mb for s in self.samples(name) if s.runner_rss_mb])


def targets(results: Results) -> list[Target]:
    """The targets of issue 19, each with its measured ratio or figure, per PostgreSQL."""
    rows = capacity_targets(results)
    for durability in DURABILITIES:
        rows += durability_targets(results, durability)
    return [*rows, *common_targets(results), *prune_targets(results)]


def durability_targets(results: Results, durability: str) -> list[Target]:
    """The targets measured on one PostgreSQL."""
    f = Figures(results)
    pg, batched = key("postgresql", durability), key("postgresql-batched", durability)
    on = f"{durability} PostgreSQL"
    plain = f.drain("plain")
    handler, mode = f.drain(pg), "strict"
    if f.samples(batched):
        if not f.drain(batched) <= handler:
            handler, mode = f.drain(batched), "batched"
        modes = f"{mode} (strict {f.drain(pg):,.0f}, batched {f.drain(batched):,.0f} jobs/s)"
    else:
        modes = f"{handler:,.0f} jobs/s"
    bound = 3.0 if durability == "no-durability" else 2.0
    rows = [
        Target(
            f"handler drain vs plain Celery + Redis, {on}",
            f"{handler / plain:.2f}x ({modes} vs {plain:,.0f})",
            f">= {bound:.0f}x",
            check(handler / plain, lambda v: v >= bound),
            "After: a runner's drain on PostgreSQL",
        ),
        pgqueuer_target(results, durability, handler, mode),
        *native_targets(results, durability),
        Target(
            f"`enqueue()` vs `.delay()` (Redis), {on}",
            f"{f.enqueue(pg) / f.enqueue('plain'):.2f}x ({f.enqueue(pg):,.0f} vs "
            f"{f.enqueue('plain'):,.0f} /s)",
            ">= 2x",
            check(f.enqueue(pg) / f.enqueue("plain"), lambda v: v >= 2),
            "After: `enqueue()` on PostgreSQL",
        ),
    ]
    many = median(results.enqueue_many.get(pg, []))
    rows.append(
        Target(
            f"`enqueue_many()` (batches of {ENQUEUE_MANY_BATCH:,}), {on}",
            f"{many:,.0f} tasks/s",
            ">= 30,000 tasks/s",
            check(many, lambda v: v >= 30_000),
            "After: `enqueue()` on PostgreSQL",
        )
    )
    rows.append(
        Target(
            f"latency p50, {on} + Redis",
            f"{f.p50(pg):.1f} ms (plain Celery {f.p50('plain'):.1f} ms"
            + (
                f", PgQueuer {f.p50(key('pgqueuer', durability)):.1f} ms)"
                if results.pgqueuer
                else ")"
            ),
            "<= 10 ms",
            check(f.p50(pg), lambda v: v <= 10),
            "-",
        )
    )
    ticks = results.ticks.get(durability, {})
    biggest = max(ticks) if ticks else 0
    busy, idle = median(ticks.get(biggest, [])), median(results.idle_ticks.get(durability, []))
    rows += [
        Target(
            f"OnProcess tick at {biggest:,} rows, {results.tick_due:,} due, {on}",
            f"{busy:.1f} ms",
            "<= 30 ms",
            check(busy, lambda v: v <= 30),
            "Target not met: the OnProcess tick",
        ),
        Target(
            f"OnProcess tick at {biggest:,} rows, nothing due, {on}",
            f"{idle:.1f} ms",
            "<= 5 ms",
            check(idle, lambda v: v <= 5),
            "Target not met: the OnProcess tick",
        ),
    ]
    return rows


def pgqueuer_target(results: Results, durability: str, handler: float, mode: str) -> Target:
    """celery_taskq's handler drain against PgQueuer's on the same PostgreSQL."""
    name = f"handler drain vs PgQueuer, same {durability} PostgreSQL"
    if not results.pgqueuer:
        reason = results.pgqueuer_skipped or "not in --systems"
        return Target(name, f"not measured: {reason}", ">= 1.0x", None, "-")
    peer = Figures(results).drain(key("pgqueuer", durability))
    return Target(
        name,
        f"{handler / peer:.2f}x ({mode} {handler:,.0f} vs {peer:,.0f} jobs/s)",
        ">= 1.0x",
        check(handler / peer, lambda v: v >= 1.0),
        "After: a runner's drain on PostgreSQL",
    )


def native_targets(results: Results, durability: str) -> list[Target]:
    """The audited native tasks' drain against plain Celery: from the native audit's section
    when it ran, else from this run's ``native`` drains."""
    run = results.native_audit
    if run is not None:

        def drain(variant: str) -> float:
            return median([s.drain_rate for s in run.samples.get((durability, variant), [])])

        native, flower = drain("audited") / drain("plain"), drain("audited-flower")
        flower /= drain("plain-flower")
        source = "the native audit's section"
    else:
        f = Figures(results)
        native = f.drain(key("native", durability)) / f.drain("plain")
        flower = f.drain(key("native-flower", durability)) / f.drain("plain")
        source = "the drain table"
    name = f"audited native Celery tasks drain vs plain Celery, {durability} PostgreSQL"
    if native != native:
        why = "not measured (`--no-native-audit`, and no `native` in `--systems`)"
        return [Target(name, why, ">= 0.8x (Flower: >= 0.7x)", None, "-")]
    return [
        Target(
            name,
            f"{native:.2f}x; with the Flower settings {flower:.2f}x ({source})",
            ">= 0.8x (Flower: >= 0.7x)",
            check(native, lambda v: v >= 0.8),
            "Target not met: audited native Celery tasks",
        )
    ]


def common_targets(results: Results) -> list[Target]:
    """The targets that do not depend on PostgreSQL's durability."""
    f = Figures(results)
    standalone = median(results.standalone_rss_mb)
    plain_pool = f.rss("plain")
    pools = [f.rss(key("postgresql", d)) for d in DURABILITIES]
    pool = max([v for v in pools if v == v], default=float("nan"))
    return [
        Target(
            "latency p50, embedded default",
            f"{f.p50('sqlite'):.1f} ms",
            "<= 100 ms",
            check(f.p50("sqlite"), lambda v: v <= 100),
            "-",
        ),
        Target(
            "standalone `celery-taskq runner` RSS after 500 runs",
            f"{standalone:.1f} MB",
            "<= 60 MB",
            check(standalone, lambda v: v <= 60),
            "Target not met: runner RSS",
        ),
        Target(
            "Celery pool process that ran handler runs, RSS vs plain Celery's pool process",
            f"{pool:.1f} MB vs {plain_pool:.1f} MB (+{pool - plain_pool:.1f} MB)",
            "<= plain + 15 MB",
            check(pool - plain_pool, lambda v: v <= 15),
            "Target not met: runner RSS",
        ),
    ]


def prune_targets(results: Results) -> list[Target]:
    """The drain while pruning against the drain without (bench_prune.py), if measured."""
    rows = []
    for durability, measured in results.prune.items():
        on_process = median(bench_prune.ratios(measured, "on_process"))
        command = median(bench_prune.ratios(measured, "command"))
        rows.append(
            Target(
                f"drain with pruning vs without, {durability} PostgreSQL (bench_prune.py)",
                f"OnProcess pruning {on_process:.2f}x; `celery-taskq prune` {command:.2f}x",
                f">= {bench_prune.TARGET_RATIO}x",
                check(min(on_process, command), lambda v: v >= bench_prune.TARGET_RATIO),
                "Pruning while runners work",
            )
        )
    return rows


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


def report(
    args: argparse.Namespace,
    config: Config,
    results: Results,
    facts: dict[str, str],
    started_at: datetime,
    elapsed: float,
) -> str:
    """RESULTS.md up to the native audit's and the prune's sections."""
    command = "benchmarks/run_all.py" + (" --quick" if args.quick else "")
    if not args.quick:
        command += f" --tasks {config.tasks} --repeat {config.repeat}"
    lines = [
        "# celery_taskq vs plain Celery and PgQueuer",
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
        *(f"| {name} | {value} |" for name, value in facts.items()),
        "",
        *setup_lines(config, results),
        *drain_lines(results),
        *enqueue_many_lines(results),
        *tick_lines(results),
        *capacity_section(results),
        *repetition_lines(results),
        *capacity_repetitions(results),
    ]
    return "\n".join(lines) + "\n"


def setup_lines(config: Config, results: Results) -> list[str]:
    """The setup: repetitions, workers, both PostgreSQLs, PgQueuer's version and settings."""
    lines = [
        "## Setup",
        "",
        f"- {config.tasks} no-op jobs per drain, {config.repeat} repetition(s), medians; each "
        "repetition runs every system once, in turn, on a fresh database and broker; each "
        "system on PostgreSQL runs once on each PostgreSQL.",
        f"- Workers: prefork `-c {config.concurrency}`. celery_taskq keeps one pool process free "
        f"for its event tasks, so handler runs go through {config.runner_limit} runner(s); plain "
        "Celery and the audited native tasks use every pool process.",
        "- Two PostgreSQL servers of the same build, started side by side, every PostgreSQL "
        "figure measured on both: "
        + "; ".join(
            f"**{d}** (`SHOW`: {results.server_settings.get(d, '?')})" for d in DURABILITIES
        )
        + ". Redis without persistence; SQLite in WAL mode with synchronous=NORMAL.",
        "- Enqueue: one call at a time, no worker running (`.delay()`, `enqueue()`, PgQueuer's "
        "`enqueue()`). Latency: sequential jobs on the idle worker; plain and native: the task's "
        "clock minus the time before `.delay()`; celery_taskq: `StartedOn - QueuedOn`; "
        "PgQueuer: its log's `picked` minus `queued`.",
    ]
    if results.batched_env:
        env = " ".join(f"`{name}={value}`" for name, value in results.batched_env.items())
        lines.append(
            f"- celery_taskq's handler drain runs in both runner modes: strict (the default) and "
            f"batched ({env})."
        )
    if results.pgqueuer:
        lines.append(
            "- PgQueuer: "
            + "; ".join(f"{name}: {value}" for name, value in results.pgqueuer.items())
            + ". One worker process against celery_taskq's one runner process (plain Celery: "
            "two pool processes)."
        )
    elif results.pgqueuer_skipped:
        lines.append(f"- PgQueuer: not measured ({results.pgqueuer_skipped}).")
    return [*lines, ""]


def drain_lines(results: Results) -> list[str]:
    """The drain, enqueue and latency table."""
    f = Figures(results)
    plain = f.drain("plain")
    lines = [
        "## Drain, enqueue, latency",
        "",
        "| system | enqueue (/s) | drain (jobs/s) | vs plain drain | latency p50 (ms) "
        "| p99 (ms) | runner RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, samples in results.drains.items():
        if not samples:
            continue
        pooled = [v for s in samples for v in s.latencies]
        lines.append(
            f"| {title(name)} | {f.enqueue(name):,.0f} | {f.drain(name):,.0f} "
            f"| {f.drain(name) / plain:.2f}x | {percentile(pooled, 0.5) * 1000:.1f} "
            f"| {percentile(pooled, 0.99) * 1000:.1f} | {f.rss(name):.1f} |"
        )
    return [
        *lines,
        "",
        "Standalone `celery-taskq runner` RSS after 500 runs (no-durability PostgreSQL): "
        f"{median(results.standalone_rss_mb):.1f} MB.",
        "",
    ]


def enqueue_many_lines(results: Results) -> list[str]:
    """The ``enqueue_many()`` table."""
    return [
        "## enqueue_many()",
        "",
        f"Batches of {ENQUEUE_MANY_BATCH:,}.",
        "",
        "| database | tasks/s |",
        "|---|---:|",
        *(
            f"| {name.replace('/', ', ')} | {median(values):,.0f} |"
            for name, values in results.enqueue_many.items()
        ),
        "",
    ]


def tick_lines(results: Results) -> list[str]:
    """The OnProcess tick table, both PostgreSQLs, busy and idle."""
    lines = [
        "## OnProcess tick",
        "",
        "Beat-tick claim + `process_queue()`: time out dead runners, create the due runs. "
        f"Median of {TICK_REPEAT} ticks after a warm-up, each with the due runs reset; at the "
        "largest size also with nothing due.",
        "",
        "| PostgreSQL | TaskQueue rows | due | tick median (ms) | worst (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for durability, sizes in results.ticks.items():
        for size, values in sizes.items():
            lines.append(
                f"| {durability} | {size:,} | {results.tick_due:,} | {median(values):.1f} "
                f"| {max(values):.1f} |"
            )
        idle = results.idle_ticks.get(durability)
        if idle and sizes:
            lines.append(
                f"| {durability} | {max(sizes):,} | 0 | {median(idle):.1f} | {max(idle):.1f} |"
            )
    return [*lines, ""]


def repetition_lines(results: Results) -> list[str]:
    """Every repetition of every drain."""
    lines = [
        "## Every repetition",
        "",
        "| system | rep | enqueue (/s) | drain (jobs/s) | p50 (ms) | p99 (ms) | RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, samples in results.drains.items():
        for rep, s in enumerate(samples, 1):
            lines.append(
                f"| {name} | {rep} | {s.enqueue_rate:,.0f} | {s.drain_rate:,.0f} "
                f"| {percentile(s.latencies, 0.5) * 1000:.1f} "
                f"| {percentile(s.latencies, 0.99) * 1000:.1f} "
                f"| {s.runner_rss_mb or float('nan'):.1f} |"
            )
    return lines


def capacity_section(results: Results) -> list[str]:
    """The capacity and dispatch sections of bench_capacity.py, with a blank line after."""
    if results.capacity is None or results.capacity_config is None:
        return []
    lines = bench_capacity.report_lines(results.capacity_config, results.capacity)
    # Its per-repetition tables join this file's "Every repetition" section.
    return lines[: lines.index("### Every repetition")]


def capacity_repetitions(results: Results) -> list[str]:
    """bench_capacity.py's per-repetition tables."""
    if results.capacity is None or results.capacity_config is None:
        return []
    lines = bench_capacity.report_lines(results.capacity_config, results.capacity)
    return ["", *lines[lines.index("### Every repetition") + 2 :]]
