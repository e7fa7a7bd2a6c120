"""Audited native Celery tasks for the benchmarks: plain_app's tasks with celery_taskq installed.

The same no-op and start-recording tasks as :mod:`benchmarks.plain_app`, on the same Redis
broker, in an app with ``install(app, audit_celery_tasks=True)``: every publish writes a
``TaskQueue`` row and every execution a ``TaskRuns`` row (``TASKQ_DATABASE_URL``). The worker
runs with plain_app's Celery settings (Celery's defaults, which install() keeps), and with
``BENCH_NATIVE_FLOWER=1`` sends task events as it does while Flower watches it
(:data:`benchmarks.plain_app.FLOWER_ATTACHED`). With ``BENCH_PROFILE_DIR`` every
pool process writes a cProfile of its life there (``pool-<pid>.prof``) when it shuts down; with
``BENCH_STATS_DIR`` it writes its audit writer's counters (``writer-<pid>.json``: operations,
transactions, CPU seconds spent writing).
"""

from __future__ import annotations

import cProfile
import json
import os
from pathlib import Path
from typing import Any

from celery import Celery, signals

from benchmarks.plain_app import FLOWER_ATTACHED, count_run, store_start
from celery_taskq.celery import install

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench_native", broker=REDIS_URL)
app.conf.task_ignore_result = True
if os.environ.get("BENCH_NATIVE_FLOWER"):
    app.conf.update(FLOWER_ATTACHED)
_auditor = install(app, audit_celery_tasks=True).auditor
assert _auditor is not None  # noqa: S101 - install() always sets it
_audits = _auditor.should_audit
NATIVE_TASKS = frozenset({"bench.native_noop", "bench.native_record_start"})
# Celery's signals are process-wide and audit_celery_tasks=True audits every task name (and
# Celery shares tasks between apps): in the benchmark's own process plain_app publishes too, and
# its `.delay()` must stay unaudited.
_auditor.should_audit = lambda name: name in NATIVE_TASKS and _audits(name)


noop = app.task(name="bench.native_noop")(count_run)
record_start = app.task(name="bench.native_record_start")(store_start)

_PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR", "")
_STATS_DIR = os.environ.get("BENCH_STATS_DIR", "")
_profiler = cProfile.Profile()
_writer_profiler = cProfile.Profile()


def _profile_the_writing_thread() -> None:
    # cProfile follows one thread: the audit's writes run in the writer thread, so its
    # _write is wrapped (benchmark only) to profile each batch where it is written.
    from celery_taskq.celery import audit_writer

    write = audit_writer.AuditWriter._write

    def profiled(writer: audit_writer.AuditWriter, batch: Any) -> Any:
        _writer_profiler.enable()
        try:
            return write(writer, batch)
        finally:
            _writer_profiler.disable()

    audit_writer.AuditWriter._write = profiled  # type: ignore[method-assign,assignment]


if _PROFILE_DIR:
    _profile_the_writing_thread()


def _start_profile(**_: Any) -> None:
    if _PROFILE_DIR:
        _profiler.enable()


def _write_profile(**_: Any) -> None:
    if _PROFILE_DIR:
        _profiler.disable()
        _profiler.dump_stats(Path(_PROFILE_DIR) / f"pool-{os.getpid()}.prof")
        _writer_profiler.dump_stats(Path(_PROFILE_DIR) / f"writer-{os.getpid()}.prof")
    writer = getattr(_auditor, "writer", None)
    if _STATS_DIR and writer is not None:
        writer.flush(30)  # normally done already by the audit's own shutdown receiver
        stats = {
            name: getattr(writer, name, None)
            for name in ("written", "transactions", "write_seconds", "failures")
        }
        (Path(_STATS_DIR) / f"writer-{os.getpid()}.json").write_text(json.dumps(stats))


signals.worker_process_init.connect(_start_profile, weak=False)
signals.worker_process_shutdown.connect(_write_profile, weak=False)
