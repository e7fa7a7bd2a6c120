"""Handlers that store hostile text in every field a run writes, for the output tests."""

from __future__ import annotations

import sys
from typing import Any

from celery_taskq import TaskError, TaskHandler
from celery_taskq.core.context import RunContext


class StoreHostileText(TaskHandler):
    """Writes ``data["text"]`` to stdout, stderr, the progress status, the error code and the
    error message (the run ends ``error``)."""

    def handle_task_run(self, run: RunContext) -> Any:
        text = str(run.data["text"])
        print(f"out:{text}", flush=True)
        print(f"err:{text}", file=sys.stderr, flush=True)
        run.set_progress(50, step=1, steps=2, status=text[:200])
        run.flush_progress()
        raise TaskError(f"msg:{text}", code=f"E{text[:40]}")
