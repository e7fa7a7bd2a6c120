"""Task handlers for the benchmarks (importable by worker processes as ``benchmarks.handlers``)."""

from __future__ import annotations

import time
from typing import Any

from celery_taskq import RunContext, TaskHandler


class Noop(TaskHandler):
    """Does nothing: what is measured is celery_taskq's own cost per run."""

    def handle_task_run(self, run: RunContext) -> Any:
        return None


class Sleep(TaskHandler):
    """Sleeps ``data["seconds"]``: handler work that holds its runner's process a while."""

    def handle_task_run(self, run: RunContext) -> Any:
        time.sleep(float(run.data.get("seconds", 1.0)))
        return None
