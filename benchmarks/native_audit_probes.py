"""What benchmarks/bench_native_audit.py reads from the processes it runs: CPU time of a
worker's and of PostgreSQL's processes, and the audit writers' counters."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import psutil

from benchmarks.bench_drain import PostgresServer
from benchmarks.native_audit_report import WriterStats


def writer_stats(writer: object | None) -> WriterStats | None:
    """The counters of an audit writer (``None``: no writer, or one without counters)."""
    if writer is None or not hasattr(writer, "written"):
        return None
    return WriterStats(
        int(getattr(writer, "written", 0)),
        int(getattr(writer, "transactions", 0)),
        float(getattr(writer, "write_seconds", 0.0)),
        int(getattr(writer, "failures", 0)),
    )


def pool_writer_stats(directory: Path) -> WriterStats | None:
    """The counters the pool processes left in ``directory`` (benchmarks/native_app.py)."""
    total = None
    for path in directory.glob("writer-*.json"):
        found = json.loads(path.read_text())
        stats = WriterStats(
            int(found.get("written") or 0),
            int(found.get("transactions") or 0),
            float(found.get("write_seconds") or 0.0),
            int(found.get("failures") or 0),
        )
        total = stats if total is None else total.add(stats)
    return total


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    """User + system CPU seconds of each process still alive, by PID."""
    found = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            found[process.pid] = times.user + times.system
    return found


def worker_processes(worker: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """A worker's main process and its pool processes."""
    with contextlib.suppress(psutil.Error):
        main = psutil.Process(worker.pid)
        return [main, *main.children(recursive=True)]
    return []


def postgres_processes(postgres: PostgresServer | None) -> list[psutil.Process]:
    """The postmaster of ``postgres`` and its children (backends and helpers)."""
    if postgres is None:
        return []
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        pid_file = Path(postgres.executor.datadir) / "postmaster.pid"
        main = psutil.Process(int(pid_file.read_text().split()[0]))
        return [main, *main.children(recursive=True)]
    return []


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two readings (a process new in ``after`` from 0)."""
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())
