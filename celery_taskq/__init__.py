"""celery_taskq: an audited task queue for Celery users.

Three tables — ``TaskQueue``, ``TaskRuns`` and ``TaskRunners`` — are the source of truth of
what was queued, every attempt that ran, and which process ran it.

The public names are imported on first use (PEP 562), so a process that imports only part of
the package — a runner, a Celery pool process — does not pay for the rest:
``from celery_taskq import enqueue`` works as ever.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_taskq.api import (
        add_schedule,
        cancel,
        enqueue,
        enqueue_many,
        enqueue_steps,
        get_task,
        list_tasks,
        retry,
        watch,
    )
    from celery_taskq.core.context import RunContext
    from celery_taskq.core.exceptions import TaskqError
    from celery_taskq.core.handlers import Continue, TaskError, TaskHandler
    from celery_taskq.core.intake import TaskSpec
    from celery_taskq.core.registry import register
    from celery_taskq.core.steps import Step

__version__ = "0.1.0"

_HOMES = {
    "add_schedule": "celery_taskq.api",
    "cancel": "celery_taskq.api",
    "enqueue": "celery_taskq.api",
    "enqueue_many": "celery_taskq.api",
    "enqueue_steps": "celery_taskq.api",
    "get_task": "celery_taskq.api",
    "list_tasks": "celery_taskq.api",
    "retry": "celery_taskq.api",
    "watch": "celery_taskq.api",
    "RunContext": "celery_taskq.core.context",
    "TaskqError": "celery_taskq.core.exceptions",
    "Continue": "celery_taskq.core.handlers",
    "TaskError": "celery_taskq.core.handlers",
    "TaskHandler": "celery_taskq.core.handlers",
    "TaskSpec": "celery_taskq.core.intake",
    "register": "celery_taskq.core.registry",
    "Step": "celery_taskq.core.steps",
}
"""Each public name and the module it is defined in."""


def __getattr__(name: str) -> Any:
    """Import a public name from its home module on first use, then keep it here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'celery_taskq' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Continue",
    "RunContext",
    "Step",
    "TaskError",
    "TaskHandler",
    "TaskSpec",
    "TaskqError",
    "__version__",
    "add_schedule",
    "cancel",
    "enqueue",
    "enqueue_many",
    "enqueue_steps",
    "get_task",
    "list_tasks",
    "register",
    "retry",
    "watch",
]
