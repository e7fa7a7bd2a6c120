"""The steps of a multi-step task (``taskq.steps``) as the task page shows them: each step of
the task's data with the status its newest run recorded.

A run records its steps in ``Results`` when it ends, and in its checkpoint as each step ends
(see :mod:`celery_taskq.core.steps`). Whatever is stored is read: a step list or record that is
not the expected shape is passed over, never an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery_taskq.core.models import RunStatus
from celery_taskq.core.snapshots import RunSnapshot, TaskSnapshot
from celery_taskq.core.steps import STEPS_HANDLER

RUNNING_STEP = "running"
"""The status of the step an open run is working on."""

WAITING_STEP = "waiting"
"""The status of a step no run has reached yet."""


@dataclass(frozen=True)
class StepView:
    """One step: its place, label, handler, status, and the run that recorded it."""

    step: int
    title: str | None
    handler: str
    status: str
    """``success``, ``error`` or ``not_run`` as recorded; ``running`` or ``waiting`` if not."""
    run_id: int | None
    error_code: str | None = None
    error_message: str | None = None


def task_steps(task: TaskSnapshot) -> tuple[StepView, ...]:
    """The steps of ``task`` with their statuses; empty if it is not a multi-step task (or its
    data holds no readable step list)."""
    if task.task_handler_class != STEPS_HANDLER or not isinstance(task.task_data, Mapping):
        return ()
    listed = task.task_data.get("steps")
    if not isinstance(listed, list):
        return ()
    records = _records(task.runs)
    current = _current_step(task.runs)
    views = []
    for index, step in enumerate(listed, start=1):
        declared = step if isinstance(step, Mapping) else {}
        record = records.get(index)
        if record is not None:
            status = _text(record.get("status")) or WAITING_STEP
            run_id = record.get("run_id")
        else:
            status = RUNNING_STEP if index == current else WAITING_STEP
            run_id = None
        views.append(
            StepView(
                step=index,
                title=_text(declared.get("title")),
                handler=_text(declared.get("handler")) or "?",
                status=status,
                run_id=run_id if isinstance(run_id, int) and not isinstance(run_id, bool) else None,
                error_code=_text(record.get("error_code")) if record else None,
                error_message=_text(record.get("error_message")) if record else None,
            )
        )
    return tuple(views)


def _records(runs: Sequence[RunSnapshot]) -> dict[int, Mapping[str, Any]]:
    """Step number → its record in the newest run that recorded any step (its results, else
    its checkpoint): a retry resumes from its own checkpoint, so older runs are out of date."""
    for run in reversed(runs):
        for source in (run.results, run.checkpoint):
            listed = source.get("steps") if isinstance(source, Mapping) else None
            found: dict[int, Mapping[str, Any]] = {}
            for record in listed if isinstance(listed, list) else ():
                number = record.get("step") if isinstance(record, Mapping) else None
                if isinstance(number, int) and not isinstance(number, bool):
                    found.setdefault(number, record)
            if found:
                return found
    return {}


def _current_step(runs: Sequence[RunSnapshot]) -> int | None:
    """The step an open running run works on (its progress counts the steps done)."""
    newest = runs[-1] if runs else None
    if newest is None or newest.status is not RunStatus.RUNNING:
        return None
    return (newest.progress_step or 0) + 1


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
