"""Task handlers for the benchmarks (importable by worker processes as ``benchmarks.handlers``)."""

from __future__ import annotations

from typing import Any

from celery_taskq import RunContext, TaskHandler


class Noop(TaskHandler):
    """Does nothing: what is measured is celery_taskq's own cost per run."""

    def handle_task_run(self, run: RunContext) -> Any:
        return None
