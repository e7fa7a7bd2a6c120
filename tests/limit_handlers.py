"""Handlers of the limits tests: each run writes its start and end to a ledger file."""

from __future__ import annotations

import os
import time
from typing import Any

from celery_taskq import RunContext, TaskHandler


def write_ledger(path: str, line: str) -> None:
    """Append one line in one write (``O_APPEND``: lines of several processes never mix)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


class Ledger(TaskHandler):
    """Writes ``start`` with the wall-clock time, sleeps ``seconds``, writes ``end``."""

    def handle_task_run(self, run: RunContext) -> Any:
        data = run.data
        label = f"{type(self).__name__} {data['queue']} {data['n']} {os.getpid()}"
        write_ledger(data["ledger"], f"start {time.time_ns()} {label}\n")
        time.sleep(data["seconds"])
        write_ledger(data["ledger"], f"end {time.time_ns()} {label}\n")
        return None


class LedgerExport(Ledger):
    """The same, as a handler of its own (the one the tests limit by handler)."""
