"""What one run of benchmarks/run_all.py measured, and the names its figures go under."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks import bench_capacity, bench_prune
from benchmarks.bench_drain import Sample
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
    "postgresql-batched": "celery_taskq handler runs + Redis, fast runner mode (batched claims, "
    "group commit)",
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
