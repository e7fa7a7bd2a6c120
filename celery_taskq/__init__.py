"""celery_taskq: an audited task queue for Celery users.

Three tables — ``TaskQueue``, ``TaskRuns`` and ``TaskRunners`` — are the source of truth of
what was queued, every attempt that ran, and which process ran it.
"""

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
