"""A handler: long work queued with ``enqueue()`` or ``celery-taskq enqueue`` (celery_taskq)."""

from __future__ import annotations

from typing import Any

from celery_taskq import RunContext, TaskHandler


class RebuildSearchIndex(TaskHandler):
    """Rebuilds the search index in batches, reporting progress."""

    def handle_task_run(self, run: RunContext) -> Any:
        """Index ``data["documents"]`` documents, ten at a time."""
        documents = int(run.data.get("documents", 100))
        for done in range(0, documents, 10):
            run.set_progress(100 * done // documents, status=f"{done} of {documents}")
        print(f"indexed {documents} documents")
        return {"indexed": documents}
