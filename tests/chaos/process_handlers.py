"""Handlers for the chaos tests, importable by runner child processes (``tests.chaos....``).

Each writes a line to a *ledger* file when it starts and when it ends, with the run id, the
task id, its PID and a ``CLOCK_MONOTONIC`` time (system-wide on Linux, so comparable across
processes). :mod:`tests.chaos.support` reads the ledger to prove that no task ever had two
runs executing at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path
from typing import Any

from celery_taskq import RunContext, TaskError, TaskHandler


def write_ledger(path: str, event: str, run: RunContext) -> None:
    """Append one ledger line in a single ``write`` on an ``O_APPEND`` descriptor."""
    line = f"{event} {run.task_queue_id} {run.id} {os.getpid()} {time.monotonic_ns()}\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


def starts_of_task(path: str, task_id: int) -> int:
    """How many runs of ``task_id`` the ledger shows started."""
    prefix = f"start {task_id} "
    with open(path) as ledger:
        return sum(1 for line in ledger if line.startswith(prefix))


class Ledgered(TaskHandler):
    """Records start and end in ``data["ledger"]``, sleeps ``data["seconds"]`` (default 0.02).

    Fails with ``E_PLANNED`` while fewer than ``data["fail_first"]`` earlier runs of the task
    have started (counted from the ledger), then succeeds.
    """

    def handle_task_run(self, run: RunContext) -> Any:
        ledger = str(run.data["ledger"])
        write_ledger(ledger, "start", run)
        time.sleep(float(run.data.get("seconds", 0.02)))
        attempt = starts_of_task(ledger, run.task_queue_id)
        write_ledger(ledger, "end", run)
        if attempt <= int(run.data.get("fail_first", 0)):
            raise TaskError(f"attempt {attempt} fails as planned", code="E_PLANNED")
        return {"attempt": attempt}


class WaitForRelease(TaskHandler):
    """Records its start in ``data["ledger"]``, then waits (at most 120 s) for the file
    ``data["release"]`` to exist before it records its end and succeeds."""

    def handle_task_run(self, run: RunContext) -> Any:
        ledger = str(run.data["ledger"])
        write_ledger(ledger, "start", run)
        release = Path(run.data["release"])
        deadline = time.monotonic() + 120
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        write_ledger(ledger, "end", run)
        return {"released": release.exists()}


def _hold_the_gil(seconds: float) -> None:
    """Sleep in C *holding the GIL* (``ctypes.PyDLL`` never releases it): no other thread of
    the process, the heartbeat included, runs meanwhile."""
    ctypes.PyDLL(None).usleep(ctypes.c_uint(int(seconds * 1_000_000)))


class HoldGilFirst(TaskHandler):
    """On its first run, holds the GIL for ``data["seconds"]`` in one C call; later runs end
    at once. Records start and end in ``data["ledger"]``."""

    def handle_task_run(self, run: RunContext) -> Any:
        ledger = str(run.data["ledger"])
        write_ledger(ledger, "start", run)
        if starts_of_task(ledger, run.task_queue_id) == 1:
            _hold_the_gil(float(run.data["seconds"]))
        write_ledger(ledger, "end", run)
        return {"held": True}


class LimitedHoldGil(TaskHandler):
    """Holds the GIL for ``data["seconds"]`` in one C call, under a 1 s time limit."""

    time_limit = 1.0

    def handle_task_run(self, run: RunContext) -> Any:
        ledger = str(run.data["ledger"])
        write_ledger(ledger, "start", run)
        _hold_the_gil(float(run.data["seconds"]))
        write_ledger(ledger, "end", run)
        return None


class LimitedSleep(TaskHandler):
    """Sleeps ``data["seconds"]`` under a 1 s time limit, recording start and end."""

    time_limit = 1.0

    def handle_task_run(self, run: RunContext) -> Any:
        ledger = str(run.data["ledger"])
        write_ledger(ledger, "start", run)
        time.sleep(float(run.data["seconds"]))
        write_ledger(ledger, "end", run)
        return None


class SlowFirst(TaskHandler):
    """Sleeps ``data["seconds"]`` on its first run and ends at once on later ones, recording
    start and end in ``data["ledger"]``."""

    def handle_task_run(self, run: RunContext) -> Any:
        ledger = str(run.data["ledger"])
        write_ledger(ledger, "start", run)
        if starts_of_task(ledger, run.task_queue_id) == 1:
            time.sleep(float(run.data["seconds"]))
        write_ledger(ledger, "end", run)
        return None


class KillsItsProcess(TaskHandler):
    """A poison task: records its start in ``data["ledger"]``, then SIGKILLs its own process,
    every time it runs."""

    def handle_task_run(self, run: RunContext) -> Any:
        write_ledger(str(run.data["ledger"]), "start", run)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # never reached: the signal ends the process
        return None
