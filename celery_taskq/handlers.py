"""Task handlers: the :class:`TaskHandler` base, :class:`TaskError`, and loading by dotted path.

A handler is named in ``TaskQueue.TaskHandlerClass`` as ``"package.module.ClassName"`` (or
``"package.module:ClassName"``). Loading it is checked step by step, so that a missing module, a
missing class and a class that is not a handler each give their own clear error, and an
optional allow-list of module prefixes confines what may be enqueued or run at all.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from celery_taskq.exceptions import (
    HandlerClassNotFoundError,
    HandlerError,
    HandlerModuleNotFoundError,
    HandlerNotAllowedError,
    NotATaskHandlerError,
)

if TYPE_CHECKING:
    from celery_taskq.context import RunContext


class TaskError(Exception):
    """A known failure raised by a handler: recorded as the run's ErrorCode and ErrorMessage."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


CANCELLED_CODE = "cancelled"
"""``ErrorCode`` of a run that stopped because its task was cancelled."""


class TaskCancelledError(TaskError):
    """Raised inside a handler (by ``run.set_progress`` or ``run.raise_if_cancelled``) once the
    task was cancelled; the run ends ``error`` with code ``cancelled``."""

    def __init__(self, message: str = "the task was cancelled") -> None:
        super().__init__(message, code=CANCELLED_CODE)


class TaskHandler:
    """Base class of every task handler (the seed's ``ITaskHandler``).

    Subclasses implement :meth:`handle_task_run`; its return value is stored as JSON in the
    run's ``Results``. Whatever the handler prints is captured into ``StandardOutput`` and
    ``ErrorOutput``.

    ``retry_backoff_base`` / ``retry_backoff_max`` (seconds), when set on a subclass, override
    the configured retry backoff for its tasks.
    """

    retry_backoff_base: float | None = None
    retry_backoff_max: float | None = None

    def validate(self, data: Any) -> None:
        """Refuse ``data`` before it is enqueued by raising an exception; accepts all by default."""

    def handle_task_run(self, run: RunContext) -> Any:
        """Do the work of one run. Raise :class:`TaskError` for a known failure."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement handle_task_run")


def split_handler_path(path: str) -> tuple[str, str]:
    """Split ``"pkg.mod.Class"`` or ``"pkg.mod:Class"`` into module and class names."""
    if not isinstance(path, str) or not path.strip():
        raise HandlerError("the task handler must be a dotted path such as 'myapp.tasks.Send'")
    path = path.strip()
    module_name, sep, class_name = path.rpartition(":") if ":" in path else path.rpartition(".")
    if not sep or not module_name or not class_name:
        raise HandlerError(
            f"task handler {path!r} is not a dotted path such as 'myapp.tasks.SendReport'"
        )
    return module_name, class_name


def check_allowed(path: str, allowed_prefixes: Iterable[str]) -> None:
    """Raise :class:`HandlerNotAllowedError` unless ``path``'s module is under an allowed prefix."""
    prefixes = tuple(allowed_prefixes)
    if not prefixes:
        return
    module_name, _ = split_handler_path(path)
    if not any(module_name == p or module_name.startswith(p.rstrip(".") + ".") for p in prefixes):
        raise HandlerNotAllowedError(
            f"task handler {path!r} is not allowed: its module must be under one of "
            + ", ".join(repr(p) for p in prefixes)
        )


def load_handler_class(path: str, allowed_prefixes: Iterable[str] = ()) -> type[TaskHandler]:
    """Import and return the handler class named by ``path``, checking each step."""
    check_allowed(path, allowed_prefixes)
    module_name, class_name = split_handler_path(path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise HandlerModuleNotFoundError(
                f"task handler {path!r}: no module named {module_name!r}"
            ) from exc
        raise HandlerModuleNotFoundError(
            f"task handler {path!r}: module {module_name!r} failed to import: {exc}"
        ) from exc
    except Exception as exc:
        raise HandlerModuleNotFoundError(
            f"task handler {path!r}: module {module_name!r} failed to import: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    try:
        handler_class = getattr(module, class_name)
    except AttributeError as exc:
        raise HandlerClassNotFoundError(
            f"task handler {path!r}: module {module_name!r} has no class {class_name!r}"
        ) from exc
    if not (isinstance(handler_class, type) and issubclass(handler_class, TaskHandler)):
        raise NotATaskHandlerError(
            f"task handler {path!r} is not a subclass of celery_taskq.TaskHandler"
        )
    return handler_class


def create_task_handler(path: str, allowed_prefixes: Iterable[str] = ()) -> TaskHandler:
    """Instantiate the handler named by ``path`` (the seed's ``createTaskHandler``)."""
    handler_class = load_handler_class(path, allowed_prefixes)
    try:
        return handler_class()
    except Exception as exc:
        raise HandlerError(
            f"task handler {path!r} could not be created: {type(exc).__name__}: {exc}"
        ) from exc
