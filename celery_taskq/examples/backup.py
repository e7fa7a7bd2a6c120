"""Steps of a sample multi-step task: a backup that dumps tables, then compresses the dump.

Enqueue it with :func:`celery_taskq.enqueue_steps` or ``celery-taskq enqueue taskq.steps``
(see the README). ``DumpTable`` fails on a table named in ``settings["broken"]``, to show how a
step fault is recorded, with and without ``interrupt_on_step_fault``.
"""

from __future__ import annotations

import time
from typing import Any

from celery_taskq import RunContext, TaskError, TaskHandler


class DumpTable(TaskHandler):
    """Dumps ``settings["table"]``: ``settings["rows"]`` rows, reporting each."""

    def validate(self, data: Any) -> None:
        """A step needs the table's name; ``rows`` is a small positive count."""
        if not isinstance(data, dict) or not str(data.get("table", "")).strip():
            raise ValueError('the step needs a "table"')
        rows = data.get("rows", 3)
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= 10_000:
            raise ValueError('"rows" must be a whole number from 1 to 10000')

    def handle_task_run(self, run: RunContext) -> Any:
        """Write the rows (here: print them) and return how many."""
        table, rows = run.data["table"], run.data.get("rows", 3)
        if table == run.data.get("broken"):
            raise TaskError(f"table {table!r} is locked", code="E_LOCKED")
        for row in range(1, rows + 1):
            print(f"dump {table}: row {row}/{rows}")
            run.set_progress(100 * row / rows, status=f"dumping {table}")
            time.sleep(0.05)
        return {"table": table, "rows": rows}


class Compress(TaskHandler):
    """Compresses the dump at ``settings["level"]``."""

    def validate(self, data: Any) -> None:
        """The level is 1 to 9, as gzip's."""
        level = data.get("level", 6) if isinstance(data, dict) else None
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
            raise ValueError('"level" must be a whole number from 1 to 9')

    def handle_task_run(self, run: RunContext) -> Any:
        """Pretend to compress; return the level used."""
        print(f"compressing the dump at level {run.data.get('level', 6)}")
        return {"level": run.data.get("level", 6)}
