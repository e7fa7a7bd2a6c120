"""Where a runner process's memory goes: resident memory after each import stage.

Usage::

    python benchmarks/bench_memory.py [--repeat 3] [--output memory.md]

Two kinds of process hold handler runs, one per concurrent run: a standalone runner
(``celery-taskq runner``, on PostgreSQL with a Redis broker, as ``run_all.py`` starts it) and a
Celery pool process (``celery-taskq worker``). For each, a fresh interpreter imports what that
process imports, stage by stage, and reads its own resident memory (psutil) after each stage.
The table gives the median over the repetitions: the RSS after a stage and what the stage
added. Stages earlier in a list are paid by the later ones too (``asyncio`` is imported by
psycopg and redis alike), so an increment is what that stage adds on top of the ones above.

Import-only: no server is started and no run is made; ``run_all.py`` measures the processes
after a drain (a runner grows by about a megabyte while it works: statement caches, buffers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

Stage = tuple[str, str, tuple[str, ...]]
"""A stage: its name, what it is for, the modules it imports."""

RUNNER_STAGES: tuple[Stage, ...] = (
    ("asyncio, ssl", "the async halves of psycopg and redis import them", ("asyncio", "ssl")),
    ("SQLAlchemy Core", "engine, SQL expression language", ("sqlalchemy",)),
    ("SQLAlchemy ORM", "the declarative models (core/models.py)", ("sqlalchemy.orm",)),
    (
        "SQLAlchemy dialects",
        "PostgreSQL (JSONB in the models), SQLite (sqlite_where= on the indexes)",
        ("sqlalchemy.dialects.postgresql", "sqlalchemy.dialects.sqlite"),
    ),
    ("psycopg", "the PostgreSQL driver (binary build)", ("psycopg",)),
    ("redis", "idle runners wake on the Redis work channel", ("redis",)),
    ("click", "the command line", ("click",)),
    (
        "celery_taskq runner",
        "the CLI, the runner command, the runner loop and the core it uses",
        ("celery_taskq.cli", "celery_taskq.cli.runners", "celery_taskq.core.runner.loop"),
    ),
)
"""What ``celery-taskq runner`` imports, in order."""

POOL_STAGES: tuple[Stage, ...] = (
    (
        "Celery worker",
        "what a plain Celery pool process holds (Celery, kombu's Redis transport, plugins)",
        ("celery.bin.celery", "celery.worker", "celery.app.trace", "kombu.transport.redis"),
    ),
    ("SQLAlchemy Core", "engine, SQL expression language", ("sqlalchemy",)),
    ("SQLAlchemy ORM", "the declarative models (core/models.py)", ("sqlalchemy.orm",)),
    (
        "SQLAlchemy dialects",
        "PostgreSQL (JSONB in the models), SQLite (sqlite_where= on the indexes)",
        ("sqlalchemy.dialects.postgresql", "sqlalchemy.dialects.sqlite"),
    ),
    ("psycopg", "the PostgreSQL driver (binary build)", ("psycopg",)),
    (
        "celery_taskq Celery layer",
        "the worker command, install(), the event and runner tasks, the audit, the runner loop",
        (
            "celery_taskq.cli",
            "celery_taskq.cli.runners",
            "celery_taskq.celery",
            "celery_taskq.celery.tasks",
            "celery_taskq.celery.audit_signals",
            "celery_taskq.core.runner.loop",
        ),
    ),
)
"""What a Celery pool process forked from ``celery-taskq worker`` imports, in order."""

PROBE = """
import importlib, json, sys
import psutil
process = psutil.Process()
sizes = [process.memory_info().rss]
for group in json.loads(sys.argv[1]):
    for module in group:
        importlib.import_module(module)
    sizes.append(process.memory_info().rss)
print(json.dumps(sizes))
"""


def probe(stages: tuple[Stage, ...]) -> list[float]:
    """MiB of a fresh interpreter at start and after each stage."""
    groups = json.dumps([list(modules) for _, _, modules in stages])
    done = subprocess.run(  # noqa: S603 - our own interpreter and program
        [sys.executable, "-c", PROBE, groups],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return [size / 2**20 for size in json.loads(done.stdout)]


def table(title: str, stages: tuple[Stage, ...], repeat: int) -> str:
    """A Markdown table of one process's stages: medians over ``repeat`` fresh interpreters."""
    samples = [probe(stages) for _ in range(repeat)]
    sizes = [statistics.median(column) for column in zip(*samples, strict=True)]
    lines = [
        f"### {title}",
        "",
        "| stage | what for | RSS after (MB) | added (MB) |",
        "| --- | --- | ---: | ---: |",
        f"| interpreter | Python with site-packages | {sizes[0]:.1f} | |",
    ]
    for index, (name, purpose, _) in enumerate(stages, start=1):
        added = sizes[index] - sizes[index - 1]
        lines.append(f"| {name} | {purpose} | {sizes[index]:.1f} | {added:+.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write) both tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh interpreters per process")
    parser.add_argument("--output", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    text = "\n\n".join(
        [
            table("Standalone runner (PostgreSQL, Redis broker)", RUNNER_STAGES, args.repeat),
            table("Celery pool process", POOL_STAGES, args.repeat),
        ]
    )
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
